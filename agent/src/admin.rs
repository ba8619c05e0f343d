//! Admin states (ready, drain, maint): what the runtime API must change so HAProxy holds the
//! replicated ones. Only states forced at run time count; maint set by a resolver or the
//! config is HAProxy's own.

use std::collections::HashMap;

use crate::desired::Topology;
use crate::haproxy::AdminChange;
use crate::haproxy::ServerStateLine;

/// The `set server ... state` changes that bring `held` to the admin states of `desired`;
/// servers HAProxy does not hold (yet, before a reload) are left for later.
pub fn admin_changes(desired: &Topology, held: &[ServerStateLine]) -> Vec<AdminChange> {
    let held: HashMap<(&str, &str), &ServerStateLine> =
        held.iter().map(|line| ((line.backend.as_str(), line.server.as_str()), line)).collect();
    let mut changes = Vec::new();
    for backend in &desired.backends {
        for server in &backend.servers {
            let Some(line) = held.get(&(backend.name.as_str(), server.name.as_str())) else {
                continue;
            };
            if line.forced_admin() != server.admin {
                changes.push(AdminChange {
                    backend: backend.name.clone(),
                    server: server.name.clone(),
                    state: server.admin,
                });
            }
        }
    }
    changes
}

/// Whether any server present in both topologies changed its admin state.
pub fn admin_states_differ(old: &Topology, new: &Topology) -> bool {
    let states: HashMap<(&str, &str), _> = old
        .backends
        .iter()
        .flat_map(|b| b.servers.iter().map(move |s| ((b.name.as_str(), s.name.as_str()), s.admin)))
        .collect();
    new.backends.iter().any(|b| {
        b.servers.iter().any(|s| states.get(&(b.name.as_str(), s.name.as_str())).is_some_and(|was| *was != s.admin))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::AdminState;
    use crate::desired::Backend;
    use crate::desired::Server;
    use crate::haproxy::parse_servers_state;

    fn topology(servers: &[(&str, AdminState)]) -> Topology {
        Topology {
            map_path: "/m".into(),
            backends: vec![Backend {
                name: "shard-a".into(),
                servers: servers
                    .iter()
                    .map(|(name, admin)| Server { name: (*name).into(), address: "a:80".into(), id: 1, admin: *admin })
                    .collect(),
            }],
        }
    }

    #[test]
    fn only_differences_of_held_servers_become_commands() {
        let dump = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_fqdn srv_port\n\
            3 shard-a 1 ready-ok 10.0.0.1 2 0 - 80\n\
            3 shard-a 2 to-drain 10.0.0.2 2 0 - 80\n\
            3 shard-a 3 to-ready 10.0.0.3 0 1 - 80\n\
            3 shard-a 4 resolver-maint - 0 32 n 80\n\
            3 shard-a 5 drain-to-maint 10.0.0.5 2 8 - 80\n";
        let held = parse_servers_state(dump).unwrap();
        use AdminState::*;
        let desired = topology(&[
            ("ready-ok", Ready),
            ("to-drain", Drain),
            ("to-ready", Ready),
            ("resolver-maint", Ready),
            ("drain-to-maint", Maint),
            ("not-loaded-yet", Maint),
        ]);
        let changes: Vec<(String, AdminState)> =
            admin_changes(&desired, &held).into_iter().map(|c| (c.server, c.state)).collect();
        assert_eq!(changes, [("to-drain".into(), Drain), ("to-ready".into(), Ready), ("drain-to-maint".into(), Maint)]);
    }

    #[test]
    fn admin_differences_ignore_added_and_removed_servers() {
        use AdminState::*;
        let old = topology(&[("a", Ready), ("b", Drain)]);
        assert!(!admin_states_differ(&old, &topology(&[("a", Ready), ("c", Maint)])));
        assert!(admin_states_differ(&old, &topology(&[("a", Maint), ("b", Drain)])));
    }
}
