//! The reason of a reload: what differs between the topology in service and the new one,
//! e.g. "server web-1-node-2 added to shard-web-1; server web-1-node-0 address a:80 -> b:80".
//! Admin states are left out: they never make a reload.

use std::collections::BTreeMap;

use crate::desired::Backend;
use crate::desired::Server;
use crate::desired::Topology;

/// Bound on a reason's length in characters; what does not fit is counted ("… and N more").
pub const REASON_LIMIT: usize = 400;

/// Every config-relevant difference from `old` to `new`, one phrase each, in a stable order.
pub fn topology_changes(old: &Topology, new: &Topology) -> Vec<String> {
    let mut changes = Vec::new();
    if old.map_path != new.map_path {
        changes.push(format!("map path {} -> {}", old.map_path, new.map_path));
    }
    let old_backends: BTreeMap<&str, &Backend> = old.backends.iter().map(|b| (b.name.as_str(), b)).collect();
    let new_backends: BTreeMap<&str, &Backend> = new.backends.iter().map(|b| (b.name.as_str(), b)).collect();
    for (name, backend) in &new_backends {
        match old_backends.get(name) {
            None => {
                changes.push(format!("backend {name} added"));
                for server in &backend.servers {
                    changes.push(format!("server {} added to {name}", server.name));
                }
            }
            Some(before) => server_changes(before, backend, &mut changes),
        }
    }
    for name in old_backends.keys().filter(|name| !new_backends.contains_key(*name)) {
        changes.push(format!("backend {name} removed"));
    }
    changes
}

fn server_changes(old: &Backend, new: &Backend, changes: &mut Vec<String>) {
    let backend = &new.name;
    let before: BTreeMap<&str, &Server> = old.servers.iter().map(|s| (s.name.as_str(), s)).collect();
    let after: BTreeMap<&str, &Server> = new.servers.iter().map(|s| (s.name.as_str(), s)).collect();
    for server in &new.servers {
        let name = &server.name;
        match before.get(name.as_str()) {
            None => changes.push(format!("server {name} added to {backend}")),
            Some(was) => {
                if was.address != server.address {
                    changes.push(format!("server {name} address {} -> {}", was.address, server.address));
                }
                if was.id != server.id {
                    changes.push(format!("server {name} id {} -> {}", was.id, server.id));
                }
            }
        }
    }
    for server in old.servers.iter().filter(|s| !after.contains_key(s.name.as_str())) {
        changes.push(format!("server {} removed from {backend}", server.name));
    }
    let same_set = before.len() == after.len() && before.keys().all(|name| after.contains_key(name));
    let order = |servers: &[Server]| servers.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    if same_set && order(&old.servers) != order(&new.servers) {
        changes.push(format!("servers of {backend} reordered"));
    }
}

/// `changes` joined with "; ", at most `limit` characters of them; the rest is counted
/// ("… and 12 more"). An empty list reads `fallback`.
pub fn describe(changes: &[String], limit: usize, fallback: &str) -> String {
    if changes.is_empty() {
        return fallback.to_owned();
    }
    let mut text = String::new();
    for (i, change) in changes.iter().enumerate() {
        let separator = if text.is_empty() { "" } else { "; " };
        let rest = changes.len() - i;
        // Room for this change, and for the count of those after it if any.
        let tail = if rest > 1 { format!("; … and {} more", rest - 1).chars().count() } else { 0 };
        let fits = text.chars().count() + separator.len() + change.chars().count() + tail <= limit;
        if !fits && !text.is_empty() {
            text.push_str(&format!("; … and {rest} more"));
            return text;
        }
        if !fits {
            // Not even the first fits: cut it.
            let cut: String = change.chars().take(limit.saturating_sub(tail + 1)).collect();
            text.push_str(&cut);
            text.push('…');
            if rest > 1 {
                text.push_str(&format!("; … and {} more", rest - 1));
            }
            return text;
        }
        text.push_str(separator);
        text.push_str(change);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::AdminState;

    fn server(name: &str, address: &str, id: u32) -> Server {
        Server { name: name.into(), address: address.into(), id, admin: AdminState::Ready }
    }

    fn backend(name: &str, servers: Vec<Server>) -> Backend {
        Backend { name: name.into(), servers }
    }

    fn topology(backends: Vec<Backend>) -> Topology {
        Topology { map_path: "/m".into(), backends }
    }

    #[test]
    fn names_every_kind_of_change() {
        let old = topology(vec![
            backend("shard-web-1", vec![server("n0", "a:80", 1), server("n1", "b:80", 2), server("n9", "z:80", 9)]),
            backend("shard-x", vec![server("x0", "x:80", 1)]),
        ]);
        let mut drained = server("n0", "a2:80", 1);
        drained.admin = AdminState::Drain;
        let new = topology(vec![
            backend("shard-new", vec![server("s0", "s:80", 1)]),
            backend("shard-web-1", vec![drained, server("n1", "b:80", 7), server("n2", "c:80", 3)]),
        ]);
        assert_eq!(
            topology_changes(&old, &new),
            [
                "backend shard-new added",
                "server s0 added to shard-new",
                "server n0 address a:80 -> a2:80",
                "server n1 id 2 -> 7",
                "server n2 added to shard-web-1",
                "server n9 removed from shard-web-1",
                "backend shard-x removed",
            ]
        );
    }

    #[test]
    fn admin_states_alone_change_nothing_and_order_is_named() {
        let old = topology(vec![backend("shard-a", vec![server("n0", "a:80", 1), server("n1", "b:80", 2)])]);
        let mut maint = old.clone();
        maint.backends[0].servers[0].admin = AdminState::Maint;
        assert!(topology_changes(&old, &maint).is_empty());
        let mut reordered = old.clone();
        reordered.backends[0].servers.reverse();
        assert_eq!(topology_changes(&old, &reordered), ["servers of shard-a reordered"]);
    }

    #[test]
    fn a_long_reason_is_bounded_and_counts_the_rest() {
        let changes: Vec<String> = (0..100).map(|i| format!("server web-node-{i:03} added to shard-web")).collect();
        let text = describe(&changes, 200, "-");
        assert!(text.chars().count() <= 200, "{} chars: {text}", text.chars().count());
        assert!(text.starts_with("server web-node-000 added to shard-web; server web-node-001"), "{text}");
        let shown = text.matches("added to").count();
        assert!(text.ends_with(&format!("; … and {} more", 100 - shown)), "{text}");
        assert_eq!(describe(&changes[..2], 200, "-"), format!("{}; {}", changes[0], changes[1]));
        assert_eq!(describe(&[], 200, "config rewritten"), "config rewritten");
        let one_long = vec!["x".repeat(50), "y".into()];
        let cut = describe(&one_long, 30, "-");
        assert!(cut.chars().count() <= 30 && cut.ends_with("; … and 1 more"), "{cut}");
    }
}
