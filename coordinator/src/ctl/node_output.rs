//! How the CLI prints nodes: a cluster's topology with each node's server id and admin state,
//! and the end of a wait for a drain. Aligned text for people, JSON for scripts.

use lbfleet_proto::admin_word;
use lbfleet_proto::pb;
use serde::Serialize;

use super::drain_wait::DrainEnd;
use super::drain_wait::DrainWait;
use super::output::print_json;

/// `node drain --wait --json` (and the wait before `node remove`).
#[derive(Serialize)]
struct DrainJson<'a> {
    node: &'a str,
    desired: &'static str,
    backend: &'a str,
    drained: bool,
    /// `drained`, `timed_out` or `made_ready`.
    end: &'static str,
    elapsed_ms: f64,
    hosts: &'a [pb::HostSessions],
}

/// `node drain|maint --wait --json` and `node remove --json`: the writes made, then the wait.
#[derive(Serialize)]
struct NodeStepsJson<'a> {
    writes: &'a [pb::WriteReply],
    drain: Option<DrainJson<'a>>,
}

/// What a node command that waits did, as one JSON document.
pub fn node_steps(writes: &[pb::WriteReply], drain: Option<&DrainWait>) {
    print_json(&NodeStepsJson { writes, drain: drain.map(DrainJson::new) });
}

impl<'a> DrainJson<'a> {
    fn new(wait: &'a DrainWait) -> DrainJson<'a> {
        DrainJson {
            node: &wait.node,
            desired: admin_word(wait.last.desired),
            backend: &wait.last.backend,
            drained: wait.end == DrainEnd::Drained,
            end: match wait.end {
                DrainEnd::Drained => "drained",
                DrainEnd::TimedOut => "timed_out",
                DrainEnd::MadeReady => "made_ready",
            },
            elapsed_ms: wait.elapsed.as_secs_f64() * 1000.0,
            hosts: &wait.last.hosts,
        }
    }
}

/// The end of a wait for a drain: one line when it drained; a wait that did not is reported by
/// the caller's error, which names the hosts.
pub fn node_drain(wait: &DrainWait) {
    if wait.end == DrainEnd::Drained {
        println!("{}", drained_line(wait));
    }
}

/// "web-1-node-0 drained on all 2 LB hosts after 3.2 s".
pub fn drained_line(wait: &DrainWait) -> String {
    let hosts = wait.last.hosts.len();
    if hosts == 0 {
        return format!("{} drained: its cluster has no LB hosts", wait.node);
    }
    let what = match admin_word(wait.last.desired) {
        "maint" => "in maint with no sessions",
        _ => "drained",
    };
    format!("{} {what} on all {hosts} LB hosts after {:.1} s", wait.node, wait.elapsed.as_secs_f64())
}

/// `cluster show --json`: the view with admin states spelled out.
#[derive(Serialize)]
struct ClusterShowJson<'a> {
    version: u64,
    name: &'a str,
    haproxy_container: &'a str,
    map_path: &'a str,
    hosts: &'a [pb::HostView],
    shards: Vec<ShardJson<'a>>,
    nodes: Vec<NodeJson<'a>>,
    bindings: usize,
}

#[derive(Serialize)]
struct ShardJson<'a> {
    name: &'a str,
    lb_backend: &'a str,
    bindings: usize,
}

#[derive(Serialize)]
struct NodeJson<'a> {
    name: &'a str,
    shard: &'a str,
    host: &'a str,
    address: &'a str,
    container: &'a str,
    server_id: u32,
    admin: &'static str,
}

impl<'a> ClusterShowJson<'a> {
    fn new(view: &'a pb::ClusterView) -> ClusterShowJson<'a> {
        ClusterShowJson {
            version: view.version,
            name: &view.name,
            haproxy_container: &view.haproxy_container,
            map_path: &view.map_path,
            hosts: &view.hosts,
            shards: view
                .shards
                .iter()
                .map(|s| ShardJson { name: &s.name, lb_backend: &s.lb_backend, bindings: bound(view, &s.name) })
                .collect(),
            nodes: view
                .nodes
                .iter()
                .map(|n| NodeJson {
                    name: &n.name,
                    shard: &n.shard,
                    host: &n.host,
                    address: &n.address,
                    container: &n.container,
                    server_id: n.server_id,
                    admin: admin_word(n.admin),
                })
                .collect(),
            bindings: view.bindings.len(),
        }
    }
}

/// How many FQDNs of the view are bound to `shard`.
fn bound(view: &pb::ClusterView, shard: &str) -> usize {
    view.bindings.iter().filter(|b| b.shard == shard).count()
}

/// `cluster show`: hosts, shards with their binding counts, nodes with server id and admin state.
pub fn cluster_show(json: bool, view: &pb::ClusterView) {
    if json {
        return print_json(&ClusterShowJson::new(view));
    }
    println!(
        "cluster {} at version {} (haproxy container {}, map {}, {} bindings)",
        view.name,
        view.version,
        view.haproxy_container,
        view.map_path,
        view.bindings.len()
    );
    println!();
    println!("{:<16} {:<24} CONTAINER", "HOST", "ADDRESS");
    for host in &view.hosts {
        println!("{:<16} {:<24} {}", host.id, host.address, host.haproxy_container);
    }
    println!();
    println!("{:<16} {:<20} {:>8}", "SHARD", "BACKEND", "BINDINGS");
    for shard in &view.shards {
        println!("{:<16} {:<20} {:>8}", shard.name, shard.lb_backend, bound(view, &shard.name));
    }
    println!();
    println!("{:<20} {:<16} {:<16} {:<24} {:>4} {:<6} CONTAINER", "NODE", "SHARD", "HOST", "ADDRESS", "ID", "ADMIN");
    for node in &view.nodes {
        println!(
            "{:<20} {:<16} {:<16} {:<24} {:>4} {:<6} {}",
            node.name,
            node.shard,
            node.host,
            node.address,
            node.server_id,
            admin_word(node.admin),
            if node.container.is_empty() { "-" } else { &node.container }
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn wait(desired: pb::AdminState, hosts: usize) -> DrainWait {
        let host = |i: usize| pb::HostSessions {
            host: format!("lb-{i}"),
            answered: true,
            found: true,
            admin: admin_word(desired.into()).into(),
            ..Default::default()
        };
        DrainWait {
            node: "web-1-node-0".into(),
            end: DrainEnd::Drained,
            elapsed: Duration::from_millis(3_240),
            last: pb::NodeSessionsReply {
                desired: desired.into(),
                backend: "shard-web-1".into(),
                hosts: (0..hosts).map(host).collect(),
            },
        }
    }

    #[test]
    fn a_drain_ends_in_one_line() {
        assert_eq!(
            drained_line(&wait(pb::AdminState::AdminDrain, 2)),
            "web-1-node-0 drained on all 2 LB hosts after 3.2 s"
        );
        assert_eq!(
            drained_line(&wait(pb::AdminState::AdminMaint, 1)),
            "web-1-node-0 in maint with no sessions on all 1 LB hosts after 3.2 s"
        );
        assert_eq!(
            drained_line(&wait(pb::AdminState::AdminDrain, 0)),
            "web-1-node-0 drained: its cluster has no LB hosts"
        );
    }

    #[test]
    fn a_wait_is_one_json_document_with_its_writes() {
        let write = pb::WriteReply {
            version: 7,
            message: "set node web-1-node-0 to drain (was ready)".into(),
            ..Default::default()
        };
        let mut waited = wait(pb::AdminState::AdminDrain, 1);
        waited.end = DrainEnd::TimedOut;
        let value =
            serde_json::to_value(NodeStepsJson { writes: &[write], drain: Some(DrainJson::new(&waited)) }).unwrap();
        assert_eq!(value["writes"][0]["version"], 7);
        let drain = &value["drain"];
        assert_eq!((drain["node"].as_str(), drain["desired"].as_str()), (Some("web-1-node-0"), Some("drain")));
        assert_eq!((drain["drained"].as_bool(), drain["end"].as_str()), (Some(false), Some("timed_out")));
        assert_eq!(drain["elapsed_ms"], 3240.0);
        assert_eq!(drain["hosts"][0]["host"], "lb-0");
    }

    #[test]
    fn admin_states_read_as_words_in_json() {
        let view = pb::ClusterView {
            name: "eu".into(),
            shards: vec![pb::ShardView { name: "web".into(), lb_backend: "shard-web".into() }],
            nodes: vec![pb::NodeView {
                name: "n0".into(),
                shard: "web".into(),
                admin: pb::AdminState::AdminMaint.into(),
                server_id: 3,
                ..Default::default()
            }],
            bindings: vec![pb::BindEntry { fqdn: "a.com".into(), shard: "web".into() }],
            ..Default::default()
        };
        let value = serde_json::to_value(ClusterShowJson::new(&view)).unwrap();
        assert_eq!(value["nodes"][0]["admin"], "maint");
        assert_eq!(value["nodes"][0]["server_id"], 3);
        assert_eq!(value["shards"][0]["bindings"], 1);
    }
}
