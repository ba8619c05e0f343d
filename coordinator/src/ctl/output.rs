//! How the CLI prints results: aligned text for people, JSON for scripts.

use std::path::Path;

use lbfleet_proto::pb;
use serde_json::json;
use serde_json::Value;

use super::import::ImportReport;

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// A committed write: the operator's line and the version that carries it.
pub fn write_reply(json: bool, reply: &pb::WriteReply) {
    if json {
        print_json(
            &json!({"version": reply.version, "message": reply.message, "batch": reply.batch.as_ref().map(batch_json)}),
        );
    } else {
        println!("{} (version {})", reply.message, reply.version);
    }
}

fn batch_json(batch: &pb::BatchSummary) -> Value {
    json!({
        "added": batch.added,
        "moved": batch.moved,
        "unchanged": batch.unchanged,
        "skipped": batch.skipped.iter().map(|s| json!({"fqdn": s.fqdn, "reason": s.reason})).collect::<Vec<_>>(),
    })
}

/// `cluster list`.
pub fn cluster_list(json: bool, list: &pb::ClusterList) {
    if json {
        let clusters: Vec<Value> = list
            .clusters
            .iter()
            .map(|c| json!({"name": c.name, "hosts": c.hosts, "shards": c.shards, "nodes": c.nodes, "bindings": c.bindings}))
            .collect();
        return print_json(&json!({"version": list.version, "clusters": clusters}));
    }
    println!(
        "{:<24} {:>6} {:>6} {:>6} {:>10}",
        "CLUSTER", "HOSTS", "SHARDS", "NODES", "BINDINGS"
    );
    for c in &list.clusters {
        println!(
            "{:<24} {:>6} {:>6} {:>6} {:>10}",
            c.name, c.hosts, c.shards, c.nodes, c.bindings
        );
    }
}

/// `lb show`: the desired map of a cluster, with its topology.
pub fn lb_show(json: bool, view: &pb::ClusterView) {
    if json {
        let backend = |shard: &str| format!("shard-{shard}");
        return print_json(&json!({
            "version": view.version,
            "cluster": view.name,
            "haproxy_container": view.haproxy_container,
            "map_path": view.map_path,
            "hosts": view.hosts.iter().map(|h| json!({"id": h.id, "address": h.address, "haproxy_container": h.haproxy_container})).collect::<Vec<_>>(),
            "shards": view.shards.iter().map(|s| json!({"name": s.name, "lb_backend": s.lb_backend})).collect::<Vec<_>>(),
            "nodes": view.nodes.iter().map(|n| json!({"name": n.name, "shard": n.shard, "host": n.host, "address": n.address, "container": n.container})).collect::<Vec<_>>(),
            "desired_map": view.bindings.iter().map(|b| json!({"fqdn": b.fqdn, "backend": backend(&b.shard)})).collect::<Vec<_>>(),
        }));
    }
    println!(
        "cluster {} at version {} (map {})",
        view.name, view.version, view.map_path
    );
    for host in &view.hosts {
        println!("  host {:<20} container {}", host.id, host.haproxy_container);
    }
    for shard in &view.shards {
        let nodes: Vec<&str> = view
            .nodes
            .iter()
            .filter(|n| n.shard == shard.name)
            .map(|n| n.name.as_str())
            .collect();
        println!(
            "  shard {:<19} backend {:<20} nodes {}",
            shard.name,
            shard.lb_backend,
            nodes.join(", ")
        );
    }
    println!("desired map ({} entries):", view.bindings.len());
    for binding in &view.bindings {
        println!("  {} shard-{}", binding.fqdn, binding.shard);
    }
}

/// `status`: this node's Raft view, and each member's own.
pub fn status(json: bool, status: &pb::StatusReply, members: &[(u64, Result<pb::StatusReply, String>)]) {
    if json {
        let nodes: Vec<Value> = members
            .iter()
            .map(|(id, view)| match view {
                Ok(s) => json!({"id": id, "reachable": true, "state": s.state, "term": s.term,
                    "last_log_index": s.last_log_index, "committed_index": s.committed_index, "applied_index": s.applied_index}),
                Err(error) => json!({"id": id, "reachable": false, "error": error}),
            })
            .collect();
        return print_json(&json!({
            "leader": status.has_leader.then_some(status.current_leader),
            "leader_address": status.leader_address,
            "term": status.term,
            "nodes": nodes,
        }));
    }
    match status.has_leader {
        true => println!(
            "leader: node {} at {} (term {})",
            status.current_leader, status.leader_address, status.term
        ),
        false => println!("leader: none (term {})", status.term),
    }
    println!(
        "{:<6} {:<22} {:<10} {:>6} {:>10} {:>10} {:>10}",
        "NODE", "ADDRESS", "STATE", "TERM", "LAST LOG", "COMMITTED", "APPLIED"
    );
    for member in &status.members {
        let view = members.iter().find(|(id, _)| *id == member.id).map(|(_, v)| v);
        match view {
            Some(Ok(s)) => println!(
                "{:<6} {:<22} {:<10} {:>6} {:>10} {:>10} {:>10}",
                member.id, member.address, s.state, s.term, s.last_log_index, s.committed_index, s.applied_index
            ),
            Some(Err(error)) => println!("{:<6} {:<22} unreachable: {error}", member.id, member.address),
            None => println!("{:<6} {:<22} (not asked)", member.id, member.address),
        }
    }
}

/// `members`: the Raft membership as the answering node sees it.
pub fn members(json: bool, status: &pb::StatusReply) {
    if json {
        let members: Vec<Value> = status
            .members
            .iter()
            .map(|m| {
                json!({"id": m.id, "address": m.address, "voter": m.voter,
                "leader": status.has_leader && m.id == status.current_leader,
                "matched_index": m.has_matched.then_some(m.matched_index)})
            })
            .collect();
        return print_json(&json!({"members": members}));
    }
    println!("{:<6} {:<22} {:<8} {:>8}", "ID", "ADDRESS", "ROLE", "MATCHED");
    for m in &status.members {
        let role = match (m.voter, status.has_leader && m.id == status.current_leader) {
            (_, true) => "leader",
            (true, false) => "voter",
            (false, false) => "learner",
        };
        let matched = if m.has_matched {
            m.matched_index.to_string()
        } else {
            "-".to_string()
        };
        println!("{:<6} {:<22} {:<8} {:>8}", m.id, m.address, role, matched);
    }
}

/// `import`: what was added, moved, unchanged and skipped, with the reasons.
pub fn import_report(json: bool, file: &Path, report: &ImportReport) {
    if json {
        let skipped: Vec<Value> = report
            .skipped
            .iter()
            .map(|s| json!({"line": s.line, "entry": s.entry, "reason": s.reason}))
            .collect();
        return print_json(&json!({
            "file": file.display().to_string(), "version": report.version, "batches": report.batches,
            "added": report.added, "moved": report.moved, "unchanged": report.unchanged, "skipped": skipped,
        }));
    }
    println!(
        "imported {}: {} added, {} moved, {} unchanged, {} skipped, in {} batches (version {})",
        file.display(),
        report.added,
        report.moved,
        report.unchanged,
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
