//! A node's administrative state and its HAProxy server id: what lets an operator take a node
//! out of service gently, and keeps consistent hashing stable while nodes come and go.

pub use lbfleet_proto::AdminState;

use super::not_found;
use super::ObjectKind;
use super::Response;
use super::State;
use super::StateError;

impl State {
    /// The server id a new node of `shard` gets: one above the highest its current nodes hold.
    /// Ids are never changed afterwards, so the others keep their place on the hash ring.
    pub(super) fn next_server_id(&self, shard: &str) -> u32 {
        let highest = self.nodes.values().filter(|n| n.shard == shard).map(|n| n.server_id).max().unwrap_or(0);
        highest.saturating_add(1).max(1)
    }

    /// Sets a node's admin state; the agents of its cluster apply it without a reload.
    pub(super) fn set_node_state(&mut self, name: &str, state: AdminState) -> Result<Response, StateError> {
        let node = self.nodes.get_mut(name).ok_or_else(|| not_found(ObjectKind::Node, name))?;
        let previous = std::mem::replace(&mut node.admin, state);
        Ok(Response::NodeStateSet { name: name.to_string(), shard: node.shard.clone(), state, previous })
    }
}
