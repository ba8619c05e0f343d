//! How the CLI prints results: aligned text for people, JSON for scripts.

use std::collections::HashMap;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use lbfleet_proto::names;
use lbfleet_proto::pb;
use serde::Serialize;

use super::import::ImportPlan;
use super::import::ImportReport;
use super::snapshot::SnapshotReport;
use crate::snapshot_file::SnapshotHeader;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) {
    // Only maps with non-string keys fail to serialize, and nothing printed here has one.
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("cannot print the reply as JSON: {error}"),
    }
}

/// A committed write: the operator's line and the version that carries it.
pub fn write_reply(json: bool, reply: &pb::WriteReply) {
    if json {
        print_json(reply);
    } else {
        println!("{} (version {})", reply.message, reply.version);
    }
}

/// `cluster list`.
pub fn cluster_list(json: bool, list: &pb::ClusterList) {
    if json {
        return print_json(list);
    }
    println!("{:<24} {:>6} {:>6} {:>6} {:>10}", "CLUSTER", "HOSTS", "SHARDS", "NODES", "BINDINGS");
    for c in &list.clusters {
        println!("{:<24} {:>6} {:>6} {:>6} {:>10}", c.name, c.hosts, c.shards, c.nodes, c.bindings);
    }
}

/// `lb show --json`: printed once the whole desired map arrived.
pub fn lb_show_json(view: &pb::ClusterView, hosts: &[pb::HostLbState]) {
    print_json(&LbShowJson::new(view, hosts));
}

/// `lb show`, first lines: the cluster and its shards.
pub fn lb_show_topology(view: &pb::ClusterView) {
    println!("cluster {} at version {} (map {})", view.name, view.version, view.map_path);
    for shard in &view.shards {
        let nodes: Vec<String> = view
            .nodes
            .iter()
            .filter(|n| n.shard == shard.name)
            .map(|n| match lbfleet_proto::admin_word(n.admin) {
                "ready" => format!("{} ({})", n.name, n.address),
                admin => format!("{} ({}, {admin})", n.name, n.address),
            })
            .collect();
        println!("  shard {:<16} backend {:<20} nodes {}", shard.name, shard.lb_backend, nodes.join(", "));
    }
}

/// `lb show`: one line per LB host (its agent, version, map size, differences, container).
pub fn lb_show_hosts(hosts: &[pb::HostLbState]) {
    println!();
    println!("{:<16} {:<13} {:>8} {:>6} {:>9} {:>6}  CONTAINER", "HOST", "AGENT", "VERSION", "LAG", "ENTRIES", "DIFFS");
    for host in hosts {
        let agent = host.agent.as_ref();
        let state = match agent {
            Some(a) if a.connected => "connected",
            Some(_) => "disconnected",
            None => "never seen",
        };
        let entries = if host.has_map { host.actual_entries.to_string() } else { "?".to_string() };
        let diffs = if host.has_map { host.differences.len().to_string() } else { "?".to_string() };
        let container = agent.and_then(|a| a.report.as_ref()).and_then(|r| r.container.as_ref());
        let container = match container {
            Some(c) if c.running => format!("{} running", c.name),
            Some(c) if c.found => format!("{} stopped", c.name),
            Some(c) => format!("{} not found", c.name),
            None => "-".to_string(),
        };
        println!(
            "{:<16} {:<13} {:>8} {:>6} {:>9} {:>6}  {}",
            host.host,
            state,
            agent.map(|a| a.acked_version).unwrap_or(0),
            agent.map(|a| a.lag).unwrap_or(0),
            entries,
            diffs,
            container
        );
    }
}

/// `lb show`: the heading of the desired map, read at `version`; `compared_at` is the
/// version the hosts were compared with, named when it differs.
pub fn lb_show_map_heading(total: u64, version: u64, compared_at: u64) {
    println!();
    match version == compared_at {
        true => println!("desired map ({total} entries):"),
        false => println!("desired map ({total} entries, version {version}; hosts compared at version {compared_at}):"),
    }
}

/// Per FQDN, what the LB hosts hold instead of its desired backend.
pub fn lb_show_marks(hosts: &[pb::HostLbState]) -> HashMap<&str, Vec<String>> {
    let mut marks: HashMap<&str, Vec<String>> = HashMap::new();
    for host in hosts {
        let mut marked = HashSet::new();
        for d in host.differences.iter().filter(|d| !d.desired_backend.is_empty()) {
            // One mark per host and FQDN, as a key held twice is reported once.
            if !marked.insert(d.fqdn.as_str()) {
                continue;
            }
            marks.entry(d.fqdn.as_str()).or_default().push(match d.actual_backend.as_str() {
                "" => format!("MISSING on {}", host.host),
                actual => format!("{} holds {actual}", host.host),
            });
        }
    }
    marks
}

/// `lb show`: the lines of some bindings of the desired map, marked where a host differs.
pub fn lb_show_bindings(
    out: &mut impl Write,
    bindings: &[pb::BindEntry],
    marks: &HashMap<&str, Vec<String>>,
) -> std::io::Result<()> {
    for binding in bindings {
        let backend = names::lb_backend(&binding.shard);
        match marks.get(binding.fqdn.as_str()) {
            Some(marks) => writeln!(out, "  {} {backend}   <-- {}", binding.fqdn, marks.join("; "))?,
            None => writeln!(out, "  {} {backend}", binding.fqdn)?,
        }
    }
    Ok(())
}

/// `lb show`, last lines: what hosts hold beyond the desired map, and hosts without a map.
pub fn lb_show_extras(hosts: &[pb::HostLbState]) {
    for host in hosts {
        for extra in host.differences.iter().filter(|d| d.desired_backend.is_empty()) {
            println!("  EXTRA on {}: {} {}", host.host, extra.fqdn, extra.actual_backend);
        }
        if !host.has_map {
            println!("  ({}: no map received; is its agent connected?)", host.host);
        }
    }
}

/// `lb show --json`: the cluster's view with the map HAProxy should hold spelled out as backends.
#[derive(Serialize)]
struct LbShowJson<'a> {
    version: u64,
    cluster: &'a str,
    haproxy_container: &'a str,
    map_path: &'a str,
    shards: &'a [pb::ShardView],
    nodes: &'a [pb::NodeView],
    desired_map: Vec<pb::MapEntry>,
    hosts: &'a [pb::HostLbState],
}

impl<'a> LbShowJson<'a> {
    fn new(view: &'a pb::ClusterView, hosts: &'a [pb::HostLbState]) -> LbShowJson<'a> {
        let desired_map = view
            .bindings
            .iter()
            .map(|binding| pb::MapEntry { fqdn: binding.fqdn.clone(), backend: names::lb_backend(&binding.shard) })
            .collect();
        LbShowJson {
            version: view.version,
            cluster: &view.name,
            haproxy_container: &view.haproxy_container,
            map_path: &view.map_path,
            shards: &view.shards,
            nodes: &view.nodes,
            desired_map,
            hosts,
        }
    }
}

/// `bind --wait --json`: the write, then whether and when every LB host applied it.
#[derive(Serialize)]
struct WriteAndWaitJson<'a> {
    version: u64,
    message: &'a str,
    cluster: &'a str,
    live: bool,
    elapsed_ms: f64,
    hosts: &'a [pb::HostProgress],
}

/// A `bind --wait` / `unbind --wait` result.
pub fn write_and_wait(
    json: bool,
    reply: &pb::WriteReply,
    progress: &pb::WaitAppliedReply,
    elapsed: std::time::Duration,
) {
    if json {
        return print_json(&WriteAndWaitJson {
            version: reply.version,
            message: &reply.message,
            cluster: &reply.cluster,
            live: progress.done,
            elapsed_ms: elapsed.as_secs_f64() * 1000.0,
            hosts: &progress.hosts,
        });
    }
    println!("{} (version {})", reply.message, reply.version);
    if progress.done {
        println!(
            "live on all {} LB hosts of cluster {} after {:.1} ms",
            progress.hosts.len(),
            reply.cluster,
            elapsed.as_secs_f64() * 1000.0
        );
    }
}

/// The hosts that have not applied `version`, and why.
pub fn laggards(progress: &pb::WaitAppliedReply, version: u64) -> String {
    let lagging: Vec<String> = progress
        .hosts
        .iter()
        .filter(|h| !h.connected || h.acked_version < version)
        .map(|h| match (h.connected, h.nack_error.is_empty()) {
            (false, _) => format!("{} (agent not connected)", h.host),
            (true, false) => format!("{} (rejected version {}: {})", h.host, h.nacked_version, h.nack_error),
            (true, true) => format!("{} (at version {})", h.host, h.acked_version),
        })
        .collect();
    format!("lagging hosts: {}", lagging.join(", "))
}

/// `members --json`.
#[derive(Serialize)]
struct MembersJson<'a> {
    members: Vec<MemberJson<'a>>,
}

/// A member with its role resolved, and its matched index only where the leader knows it.
#[derive(Serialize)]
struct MemberJson<'a> {
    id: u64,
    address: &'a str,
    voter: bool,
    leader: bool,
    matched_index: Option<u64>,
}

/// `import --json`: the report, and which file it is about.
#[derive(Serialize)]
struct ImportJson<'a> {
    file: String,
    #[serde(flatten)]
    report: &'a ImportReport,
}

/// `members`: the Raft membership as the answering node sees it.
pub fn members(json: bool, status: &pb::StatusReply) {
    if json {
        let members = status
            .members
            .iter()
            .map(|m| MemberJson {
                id: m.id,
                address: &m.address,
                voter: m.voter,
                leader: status.has_leader && m.id == status.current_leader,
                matched_index: m.has_matched.then_some(m.matched_index),
            })
            .collect();
        return print_json(&MembersJson { members });
    }
    println!("{:<6} {:<22} {:<8} {:>8}", "ID", "ADDRESS", "ROLE", "MATCHED");
    for m in &status.members {
        let role = match (m.voter, status.has_leader && m.id == status.current_leader) {
            (_, true) => "leader",
            (true, false) => "voter",
            (false, false) => "learner",
        };
        let matched = if m.has_matched { m.matched_index.to_string() } else { "-".to_string() };
        println!("{:<6} {:<22} {:<8} {:>8}", m.id, m.address, role, matched);
    }
}

/// `import`: what was added, moved, unchanged and skipped, with the reasons.
pub fn import_report(json: bool, file: &Path, report: &ImportReport) {
    if json {
        return print_json(&ImportJson { file: file.display().to_string(), report });
    }
    println!(
        "imported {}: {} added, {} moved, {} unchanged, {} removed, {} skipped, in {} batches (version {})",
        file.display(),
        report.added,
        report.moved,
        report.unchanged,
        report.removed,
        report.skipped.len(),
        report.batches,
        report.version
    );
    const SHOWN: usize = 20;
    for skipped in report.skipped.iter().take(SHOWN) {
        match skipped.line {
            Some(line) => println!("  skipped line {line}: {}: {}", skipped.entry, skipped.reason),
            None => println!("  skipped {}: {}", skipped.entry, skipped.reason),
        }
    }
    if report.skipped.len() > SHOWN {
        println!("  ... and {} more (use --json for all)", report.skipped.len() - SHOWN);
    }
}

/// `import --dry-run`: what would change, counts first and a few examples of each.
pub fn import_plan(json: bool, file: &Path, plan: &ImportPlan) {
    if json {
        return print_json(plan);
    }
    println!(
        "importing {} would add {}, move {}, remove {}, leave {} unchanged and skip {} lines; nothing was changed",
        file.display(),
        plan.added.len(),
        plan.moved.len(),
        plan.removed.len(),
        plan.unchanged,
        plan.skipped.len()
    );
    const EXAMPLES: usize = 5;
    for (fqdn, shard) in plan.added.iter().take(EXAMPLES) {
        println!("  add    {fqdn} -> {shard}");
    }
    for (fqdn, from, to) in plan.moved.iter().take(EXAMPLES) {
        println!("  move   {fqdn}: {from} -> {to}");
    }
    for fqdn in plan.removed.iter().take(EXAMPLES) {
        println!("  remove {fqdn}");
    }
    for skipped in plan.skipped.iter().take(EXAMPLES) {
        println!("  skip   line {}: {}: {}", skipped.line.unwrap_or_default(), skipped.entry, skipped.reason);
    }
}

/// `snapshot save|verify --json`: the file, its size, and its header as written.
#[derive(Serialize)]
struct SnapshotJson<'a> {
    file: String,
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    elapsed_ms: Option<f64>,
    #[serde(flatten)]
    header: &'a SnapshotHeader,
}

/// `snapshot save` and `snapshot verify`: which state the file holds, and how much of it.
pub fn snapshot(json: bool, verb: &str, report: &SnapshotReport) {
    if json {
        return print_json(&SnapshotJson {
            file: report.file.display().to_string(),
            bytes: report.bytes,
            elapsed_ms: report.elapsed.map(|e| e.as_secs_f64() * 1000.0),
            header: &report.header,
        });
    }
    let took = report.elapsed.map(|e| format!(" in {:.2} s", e.as_secs_f64())).unwrap_or_default();
    println!("{verb} {}: {}{took}", report.file.display(), size(report.bytes));
    snapshot_header(&report.header);
}

/// What a snapshot file says about the state it holds.
fn snapshot_header(header: &SnapshotHeader) {
    let c = &header.counts;
    println!(
        "  version {} (term {}), taken {} by node {} (lbfleet {})",
        header.version,
        header.term,
        header.created_utc(),
        header.node_id,
        header.lbfleet_version
    );
    println!(
        "  {} clusters, {} hosts, {} shards, {} nodes, {} bindings, {} revocations",
        c.clusters, c.hosts, c.shards, c.nodes, c.bindings, c.revocations
    );
    let members: Vec<String> = header
        .members
        .iter()
        .map(|m| format!("{}={}{}", m.id, m.address, if m.voter { "" } else { " (learner)" }))
        .collect();
    println!("  members then: {}", members.join(", "));
}

/// `coordinator restore --json`.
#[derive(Serialize)]
struct RestoredJson<'a> {
    file: String,
    data_dir: String,
    node_id: u64,
    address: &'a str,
    version: u64,
    snapshot: &'a SnapshotHeader,
}

/// `coordinator restore`: the snapshot restored, the new group's version of it, and what to do next.
pub fn snapshot_restored(
    json: bool,
    file: &Path,
    header: &SnapshotHeader,
    data_dir: &Path,
    (node_id, address): (u64, &str),
    version: u64,
) {
    if json {
        return print_json(&RestoredJson {
            file: file.display().to_string(),
            data_dir: data_dir.display().to_string(),
            node_id,
            address,
            version,
            snapshot: header,
        });
    }
    println!("restored {} into {}", file.display(), data_dir.display());
    snapshot_header(header);
    println!("  is version {version} of a new group whose only member is node {node_id} at {address}");
    println!(
        "next: start node {node_id} with `lbfleet coordinator run` on {} (--bootstrap is ignored), then add \
         each other node, started with an empty data dir and without --bootstrap, with `lbfleet members add ID=ADDR`",
        data_dir.display()
    );
}

/// A byte count for people.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} bytes"),
        _ => format!("{value:.1} {} ({bytes} bytes)", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn agent() -> pb::AgentStatus {
        pb::AgentStatus {
            host: "lb-a".into(),
            cluster: "eu".into(),
            connected: true,
            acked_version: 7,
            report: Some(pb::AgentReport {
                applied_version: 7,
                map_digest: 0xab,
                map_entries: 1,
                ..Default::default()
            }),
            has_report: true,
            ..Default::default()
        }
    }

    #[test]
    fn agents_keep_protobuf_names_and_hex_digests() {
        let value = serde_json::to_value(agent()).unwrap();
        assert_eq!(value["host"], "lb-a");
        assert_eq!(value["acked_version"], 7);
        assert_eq!(value["report"]["map_digest"], "00000000000000ab");
        assert_eq!(value["report"]["container"], serde_json::Value::Null);
    }

    #[test]
    fn lb_show_spells_out_the_desired_backends() {
        let view = pb::ClusterView {
            version: 3,
            name: "eu".into(),
            map_path: "/etc/haproxy/maps/fqdn-to-shard.map".into(),
            shards: vec![pb::ShardView { name: "web".into(), lb_backend: "shard-web".into() }],
            bindings: vec![pb::BindEntry { fqdn: "example.com".into(), shard: "web".into() }],
            ..Default::default()
        };
        let hosts = vec![pb::HostLbState {
            host: "lb-a".into(),
            agent: Some(agent()),
            has_map: true,
            differences: vec![pb::MapDifference {
                fqdn: "example.com".into(),
                desired_backend: "shard-web".into(),
                actual_backend: String::new(),
            }],
            actual_entries: 0,
        }];
        let value = serde_json::to_value(LbShowJson::new(&view, &hosts)).unwrap();
        assert_eq!(value["cluster"], "eu");
        assert_eq!(value["version"], 3);
        assert_eq!(value["desired_map"], json!([{"fqdn": "example.com", "backend": "shard-web"}]));
        assert_eq!(value["shards"], json!([{"name": "web", "lb_backend": "shard-web"}]));
        let difference = &value["hosts"][0]["differences"][0];
        assert_eq!(*difference, json!({"fqdn": "example.com", "desired_backend": "shard-web", "actual_backend": ""}));
        assert_eq!(value["hosts"][0]["agent"]["report"]["map_digest"], "00000000000000ab");
    }

    #[test]
    fn lb_show_marks_each_binding_a_host_holds_otherwise() {
        let difference = |fqdn: &str, desired: &str, actual: &str| pb::MapDifference {
            fqdn: fqdn.into(),
            desired_backend: desired.into(),
            actual_backend: actual.into(),
        };
        let hosts = vec![
            pb::HostLbState {
                host: "lb-a".into(),
                differences: vec![difference("a.com", "shard-web", ""), difference("z.com", "", "shard-x")],
                ..Default::default()
            },
            pb::HostLbState {
                host: "lb-b".into(),
                differences: vec![difference("a.com", "shard-web", "shard-old")],
                ..Default::default()
            },
        ];
        let bindings = ["a.com", "b.com"].map(|f| pb::BindEntry { fqdn: f.into(), shard: "web".into() });
        let mut out = Vec::new();
        lb_show_bindings(&mut out, &bindings, &lb_show_marks(&hosts)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "  a.com shard-web   <-- MISSING on lb-a; lb-b holds shard-old\n  b.com shard-web\n"
        );
    }

    #[test]
    fn snapshot_reports_flatten_their_header() {
        let header = SnapshotHeader {
            lbfleet_version: "0.1.0".into(),
            created_unix_ms: 5,
            node_id: 1,
            version: 9,
            term: 2,
            members: vec![crate::snapshot_file::SnapshotMember { id: 1, address: "a:1".into(), voter: true }],
            counts: crate::snapshot_file::Counts { bindings: 3, ..Default::default() },
        };
        let json = SnapshotJson { file: "s.lbfs".into(), bytes: 100, elapsed_ms: None, header: &header };
        let value = serde_json::to_value(json).unwrap();
        assert_eq!(value["file"], "s.lbfs");
        assert_eq!(value["version"], 9);
        assert_eq!(value["counts"]["bindings"], 3);
        assert_eq!(value["members"], json!([{"id": 1, "address": "a:1", "voter": true}]));
        assert!(value.get("elapsed_ms").is_none());
        assert_eq!(size(100), "100 bytes");
        assert_eq!(size(3 * 1024 * 1024 / 2), "1.5 MiB (1572864 bytes)");
    }

    #[test]
    fn import_reports_name_their_file() {
        let report = ImportReport { added: 2, batches: 1, version: 5, ..Default::default() };
        let value = serde_json::to_value(ImportJson { file: "map.txt".into(), report: &report }).unwrap();
        assert_eq!(
            value,
            json!({"file": "map.txt", "added": 2, "moved": 0, "unchanged": 0, "removed": 0, "batches": 1, "version": 5, "skipped": []})
        );
    }
}
