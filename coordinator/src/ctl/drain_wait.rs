//! Waiting for a drain: polls a node's LB hosts until each holds the server out of rotation
//! with no sessions left, the node is made ready again, or the time runs out; and how the
//! outcome reads.

use std::time::Duration;
use std::time::Instant;

use lbfleet_proto::pb;
use tonic::Code;

use super::client::Client;
use super::client::ClientError;

/// How often the LB hosts are asked again while a drain is awaited.
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// How long the agents get to answer one poll; a slower one counts as not answering this time.
pub(super) const AGENTS_WITHIN: Duration = Duration::from_secs(2);
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
