//! `node drain|maint|ready` and `node remove`: set a node's admin state, then (with --wait, and
//! before a removal) poll its LB hosts until each holds the server out of rotation with no
//! sessions left, or the time runs out.

use std::time::Duration;
use std::time::Instant;

use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use tonic::Code;

use super::client::Client;
use super::client::ClientError;
use super::node_output;
use super::output;

/// How often the LB hosts are asked again while a drain is awaited.
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// How long the agents get to answer one poll; a slower one counts as not answering this time.
const AGENTS_WITHIN: Duration = Duration::from_secs(2);
/// The shortest time the agents are given, even when the wait is nearly over.
const AGENTS_AT_LEAST: Duration = Duration::from_millis(200);

/// How a wait for a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every LB host holds the server out of rotation with no sessions.
    Drained,
    /// The time ran out first.
    TimedOut,
    /// The node was made ready again while the wait went on.
    MadeReady,
}

/// The end of a wait and the last view of the LB hosts it was decided on.
#[derive(Debug, Clone)]
pub struct DrainWait {
    pub node: String,
    pub end: DrainEnd,
    pub elapsed: Duration,
    pub last: pb::NodeSessionsReply,
}

/// Whether a host holds the server out of rotation (drain or maint) with no sessions.
pub fn host_drained(host: &pb::HostSessions) -> bool {
    let out_of_rotation = ["drain", "maint"].iter().any(|state| host.admin.eq_ignore_ascii_case(state));
    host.answered && host.found && out_of_rotation && host.sessions == 0
}

/// What keeps each host that is not drained from being so, one phrase per host.
pub fn holdouts(reply: &pb::NodeSessionsReply, node: &str) -> Vec<String> {
    reply
        .hosts
        .iter()
        .filter(|host| !host_drained(host))
        .map(|host| match (host.answered, host.found) {
            (false, _) => format!("{} did not answer", host.host),
            (true, false) => format!("{} has no server {node} in {}", host.host, reply.backend),
            (true, true) if host.sessions > 0 => format!(
                "{} holds {} session{} ({}, {})",
                host.host,
                host.sessions,
                if host.sessions == 1 { "" } else { "s" },
                or(&host.admin, "admin state unknown"),
                or(&host.status, "status unknown")
            ),
            (true, true) => format!(
                "{} holds it in {} ({})",
                host.host,
                or(&host.admin, "an unknown admin state"),
                or(&host.status, "status unknown")
            ),
        })
        .collect()
}

/// `value`, or what to say when an agent left it empty.
fn or<'a>(value: &'a str, unknown: &'a str) -> &'a str {
    if value.is_empty() {
        unknown
    } else {
        value
    }
}

/// Polls the node's LB hosts every [`POLL_INTERVAL`] until all hold it drained, the node is made
/// ready again, or `timeout` passes. A poll that fails for want of a leader or of time is
/// repeated while time is left.
pub async fn wait_drained(client: &Client, node: &str, timeout: Duration) -> Result<DrainWait, ClientError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last = None;
    let mut failed = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.node_sessions(node, left.clamp(AGENTS_AT_LEAST, AGENTS_WITHIN)).await {
            Ok(reply) => {
                let end = if pb::AdminState::try_from(reply.desired) == Ok(pb::AdminState::AdminReady) {
                    Some(DrainEnd::MadeReady)
                } else if reply.hosts.iter().all(host_drained) {
                    Some(DrainEnd::Drained)
                } else {
                    None
                };
                if let Some(end) = end {
                    return Ok(DrainWait { node: node.to_string(), end, elapsed: started.elapsed(), last: reply });
                }
                last = Some(reply);
            }
            Err(ClientError::Status(status)) if passing(status.code()) => failed = Some(status),
            Err(error) => return Err(error),
        }
        if Instant::now() + POLL_INTERVAL >= deadline {
            // Without a single answer there is nothing to report but the last failure.
            let Some(last) = last else {
                return Err(failed.unwrap_or_else(|| tonic::Status::deadline_exceeded("no answer")).into());
            };
            let end = DrainEnd::TimedOut;
            return Ok(DrainWait { node: node.to_string(), end, elapsed: started.elapsed(), last });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Failures of one poll that the next may not have (a leader change, a slow node).
fn passing(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled)
}

/// The operator's line for a wait that did not end drained.
pub fn not_drained(wait: &DrainWait, timeout: Duration) -> String {
    match wait.end {
        DrainEnd::Drained => format!("{} drained", wait.node),
        DrainEnd::MadeReady => format!("{} was made ready again while waiting for it to drain", wait.node),
        DrainEnd::TimedOut => format!(
            "{} not drained after {:.1} s: {}",
            wait.node,
            timeout.as_secs_f64(),
            holdouts(&wait.last, &wait.node).join("; ")
        ),
    }
}

/// What a node command did, printed as it happens in text, and as one JSON document at the end.
struct Steps {
    json: bool,
    writes: Vec<pb::WriteReply>,
    drain: Option<DrainWait>,
}

impl Steps {
    fn new(json: bool) -> Steps {
        Steps { json, writes: Vec::new(), drain: None }
    }

    fn wrote(&mut self, reply: pb::WriteReply) {
        if !self.json {
            output::write_reply(false, &reply);
        }
        self.writes.push(reply);
    }

    fn waited(&mut self, wait: &DrainWait) {
        if !self.json {
            node_output::node_drain(wait);
        }
        self.drain = Some(wait.clone());
    }

    fn finish(self) {
        if self.json {
            node_output::node_steps(&self.writes, self.drain.as_ref());
        }
    }
}

/// `node drain|maint|ready NAME [--wait]`.
pub async fn set_state(
    client: &Client,
    node: String,
    state: pb::AdminState,
    wait: bool,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let kind = Kind::SetNodeState(pb::SetNodeState { name: node.clone(), state: state.into() });
    let reply = client.write(kind).await?;
    if !wait || state == pb::AdminState::AdminReady {
        output::write_reply(json, &reply);
        return Ok(());
    }
    let mut steps = Steps::new(json);
    steps.wrote(reply);
    let waited = wait_drained(client, &node, timeout).await?;
    steps.waited(&waited);
    steps.finish();
    if waited.end != DrainEnd::Drained {
        anyhow::bail!("{}; wait longer with --timeout SECONDS", not_drained(&waited, timeout));
    }
    Ok(())
}

/// `node remove NAME [--now]`: unless `now`, drains the node first (it stays drained when the
/// wait times out) and removes it only once no LB host holds a session on it.
pub async fn remove(
    client: &Client,
    node: String,
    now: bool,
    conditional: bool,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let remove = Kind::RemoveNode(pb::RemoveNode { name: node.clone() });
    if now {
        output::write_reply(json, &client.write(remove).await?);
        return Ok(());
    }
    let current = client.node_sessions(&node, AGENTS_WITHIN).await?;
    let mut steps = Steps::new(json);
    if pb::AdminState::try_from(current.desired) == Ok(pb::AdminState::AdminReady) {
        if conditional {
            anyhow::bail!(
                "--if-version makes one write conditional, and removing a ready node drains it first: \
                 drain it (`lbfleet node drain {node} --wait`) and remove it then, or use --now"
            );
        }
        let drain =
            Kind::SetNodeState(pb::SetNodeState { name: node.clone(), state: pb::AdminState::AdminDrain.into() });
        steps.wrote(client.write(drain).await?);
    }
    let waited = wait_drained(client, &node, timeout).await?;
    steps.waited(&waited);
    if waited.end != DrainEnd::Drained {
        steps.finish();
        let advice = match waited.end {
            DrainEnd::MadeReady => "drain it again, or remove it at once with --now",
            _ => "it stays out of rotation: wait longer with --timeout SECONDS, or remove it at once with --now",
        };
        anyhow::bail!("node {node} not removed: {}; {advice}", not_drained(&waited, timeout));
    }
    match client.write(remove).await {
        Ok(reply) => {
            steps.wrote(reply);
            steps.finish();
            Ok(())
        }
        Err(error) => {
            steps.finish();
            Err(error.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, answered: bool, found: bool, admin: &str, sessions: u64) -> pb::HostSessions {
        let status = if admin == "ready" { "UP" } else { "DRAIN" };
        pb::HostSessions { host: name.into(), answered, found, admin: admin.into(), status: status.into(), sessions }
    }

    #[test]
    fn drained_means_answered_found_out_of_rotation_and_idle() {
        assert!(host_drained(&host("a", true, true, "drain", 0)));
        assert!(host_drained(&host("a", true, true, "maint", 0)));
        assert!(!host_drained(&host("a", true, true, "drain", 1)));
        assert!(!host_drained(&host("a", true, true, "ready", 0)));
        assert!(!host_drained(&host("a", true, false, "", 0)));
        assert!(!host_drained(&host("a", false, false, "", 0)));
    }

    #[test]
    fn holdouts_say_what_each_host_lacks() {
        let reply = pb::NodeSessionsReply {
            desired: pb::AdminState::AdminDrain.into(),
            backend: "shard-web-1".into(),
            hosts: vec![
                host("lb-a", true, true, "drain", 0),
                host("lb-b", true, true, "drain", 3),
                host("lb-c", false, false, "", 0),
                host("lb-d", true, true, "ready", 0),
                host("lb-e", true, false, "", 0),
                host("lb-f", true, true, "maint", 1),
                pb::HostSessions { host: "lb-g".into(), answered: true, found: true, ..Default::default() },
            ],
        };
        assert_eq!(
            holdouts(&reply, "n0"),
            [
                "lb-b holds 3 sessions (drain, DRAIN)",
                "lb-c did not answer",
                "lb-d holds it in ready (UP)",
                "lb-e has no server n0 in shard-web-1",
                "lb-f holds 1 session (maint, DRAIN)",
                "lb-g holds it in an unknown admin state (status unknown)",
            ]
        );
    }
}
