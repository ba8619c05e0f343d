//! `node drain|maint|ready` and `node remove`: set a node's admin state, then (with --wait, and
//! before a removal) wait until its LB hosts hold it drained (`drain_wait`).

use std::time::Duration;

use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;

use super::client::Client;
use super::drain_wait::not_drained;
use super::drain_wait::wait_drained;
use super::drain_wait::DrainEnd;
use super::drain_wait::DrainWait;
use super::drain_wait::AGENTS_WITHIN;
use super::node_output;
use super::output;

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
