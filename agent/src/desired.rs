//! What this host's HAProxy should hold: the FQDN map and the backends, at a version.

use std::collections::BTreeMap;

pub use lbfleet_proto::AdminState;

/// HAProxy map contents: FQDN -> backend name (`shard-NAME`).
pub type MapEntries = BTreeMap<String, String>;

/// One backend server (an nginx node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// HAProxy server name (the node's name).
    pub name: String,
    /// `host:port` HAProxy connects to.
    pub address: String,
    /// HAProxy's server `id`, fixed for the node's life (0: let HAProxy number it by position).
    pub id: u32,
    /// The node's admin state; applied through the runtime API, never rendered into the config.
    pub admin: AdminState,
}

/// One shard's backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `shard-NAME`.
    pub name: String,
    /// The shard's nodes.
    pub servers: Vec<Server>,
}

/// Everything `haproxy.cfg` is rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Map file path inside the HAProxy container.
    pub map_path: String,
    /// Backends sorted by name.
    pub backends: Vec<Backend>,
}

/// The full desired state of this host at `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// The coordinator's version of this state.
    pub version: u64,
    /// The HAProxy container this agent drives.
    pub container: String,
    /// What `haproxy.cfg` is rendered from.
    pub topology: Topology,
    /// The FQDN map.
    pub map: MapEntries,
}

/// One change to the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapChange {
    /// Add or change a key.
    Upsert { fqdn: String, backend: String },
    /// Remove a key.
    Remove { fqdn: String },
}

impl DesiredState {
    /// Applies map changes in order, as a delta from the coordinator does.
    pub fn apply_changes(&mut self, changes: &[MapChange]) {
        for change in changes {
            match change {
                MapChange::Upsert { fqdn, backend } => {
                    self.map.insert(fqdn.clone(), backend.clone());
                }
                MapChange::Remove { fqdn } => {
                    self.map.remove(fqdn);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> MapEntries {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn changes_apply_in_order() {
        let mut state = DesiredState {
            version: 1,
            container: "lb".into(),
            topology: Topology { map_path: "/m".into(), backends: vec![] },
            map: map(&[("b.com", "shard-1"), ("z.com", "shard-3")]),
        };
        state.apply_changes(&[
            MapChange::Upsert { fqdn: "a.com".into(), backend: "shard-1".into() },
            MapChange::Upsert { fqdn: "b.com".into(), backend: "shard-2".into() },
            MapChange::Remove { fqdn: "z.com".into() },
            MapChange::Remove { fqdn: "never.com".into() },
        ]);
        assert_eq!(state.map, map(&[("a.com", "shard-1"), ("b.com", "shard-2")]));
    }
}
