//! How the CLI prints results: aligned text for people, JSON for scripts.

use std::path::Path;

use lbfleet_proto::pb;
use serde_json::json;
use serde_json::Value;

use super::import::ImportReport;

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
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
    println!("{:<24} {:>6} {:>6} {:>6} {:>10}", "CLUSTER", "HOSTS", "SHARDS", "NODES", "BINDINGS");
    for c in &list.clusters {
        println!("{:<24} {:>6} {:>6} {:>6} {:>10}", c.name, c.hosts, c.shards, c.nodes, c.bindings);
    }
}

/// `lb show`: the desired map of a cluster next to what each LB host's HAProxy holds.
pub fn lb_show(json: bool, reply: &pb::LbStateReply) {
    let Some(view) = reply.desired.as_ref() else {
        return;
    };
    if json {
        let hosts: Vec<Value> = reply
            .hosts
            .iter()
            .map(|h| {
                json!({
                    "host": h.host,
                    "agent": h.agent.as_ref().map(agent_json),
                    "has_map": h.has_map,
                    "actual_entries": h.actual_entries,
                    "differences": h.differences.iter().map(|d| json!({
                        "fqdn": d.fqdn, "desired": d.desired_backend, "actual": d.actual_backend,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let backend = |shard: &str| format!("shard-{shard}");
        return print_json(&json!({
            "version": view.version,
            "cluster": view.name,
            "haproxy_container": view.haproxy_container,
            "map_path": view.map_path,
            "shards": view.shards.iter().map(|s| json!({"name": s.name, "lb_backend": s.lb_backend})).collect::<Vec<_>>(),
            "nodes": view.nodes.iter().map(|n| json!({"name": n.name, "shard": n.shard, "host": n.host, "address": n.address, "container": n.container})).collect::<Vec<_>>(),
            "desired_map": view.bindings.iter().map(|b| json!({"fqdn": b.fqdn, "backend": backend(&b.shard)})).collect::<Vec<_>>(),
            "hosts": hosts,
        }));
    }
    println!("cluster {} at version {} (map {})", view.name, view.version, view.map_path);
    for shard in &view.shards {
        let nodes: Vec<String> = view
            .nodes
            .iter()
            .filter(|n| n.shard == shard.name)
            .map(|n| format!("{} ({})", n.name, n.address))
            .collect();
        println!("  shard {:<16} backend {:<20} nodes {}", shard.name, shard.lb_backend, nodes.join(", "));
    }
    println!();
    println!("{:<16} {:<13} {:>8} {:>6} {:>9} {:>6}  CONTAINER", "HOST", "AGENT", "VERSION", "LAG", "ENTRIES", "DIFFS");
    for host in &reply.hosts {
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
    println!();
    println!("desired map ({} entries):", view.bindings.len());
    for binding in &view.bindings {
        let marks: Vec<String> = reply
            .hosts
            .iter()
            .filter_map(|h| {
                let d = h.differences.iter().find(|d| d.fqdn == binding.fqdn)?;
                Some(match d.actual_backend.as_str() {
                    "" => format!("MISSING on {}", h.host),
                    actual => format!("{} holds {actual}", h.host),
                })
            })
            .collect();
        let mark = if marks.is_empty() { String::new() } else { format!("   <-- {}", marks.join("; ")) };
        println!("  {} shard-{}{mark}", binding.fqdn, binding.shard);
    }
    for host in &reply.hosts {
        for extra in host.differences.iter().filter(|d| d.desired_backend.is_empty()) {
            println!("  EXTRA on {}: {} {}", host.host, extra.fqdn, extra.actual_backend);
        }
        if !host.has_map {
            println!("  ({}: no map received; is its agent connected?)", host.host);
        }
    }
}

/// A `bind --wait` / `unbind --wait` result.
pub fn write_and_wait(
    json: bool,
    reply: &pb::WriteReply,
    progress: &pb::WaitAppliedReply,
    elapsed: std::time::Duration,
) {
    if json {
        let hosts: Vec<Value> = progress
            .hosts
            .iter()
            .map(|h| {
                json!({"host": h.host, "connected": h.connected, "acked_version": h.acked_version,
                "nacked_version": h.nacked_version, "nack_error": h.nack_error})
            })
            .collect();
        return print_json(&json!({
            "version": reply.version, "message": reply.message, "cluster": reply.cluster,
            "live": progress.done, "elapsed_ms": elapsed.as_secs_f64() * 1000.0, "hosts": hosts,
        }));
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

fn agent_json(agent: &pb::AgentStatus) -> Value {
    let report = agent.report.as_ref().map(|r| {
        json!({
            "applied_version": r.applied_version,
            "map_entries": r.map_entries,
            "map_digest": format!("{:016x}", r.map_digest),
            "runtime_path": r.runtime_path,
            "docker_reachable": r.docker_reachable,
            "container": r.container.as_ref().map(|c| json!({"name": c.name, "found": c.found, "running": c.running, "started_at": c.started_at})),
            "servers": r.servers.iter().map(|s| json!({"backend": s.backend, "server": s.server, "status": s.status, "check": s.check})).collect::<Vec<_>>(),
            "last_drift": r.last_drift.as_ref().map(|d| json!({"missing": d.missing, "wrong": d.wrong, "extra": d.extra,
                "duplicates": d.duplicates, "found_at_unix_ms": d.found_at_unix_ms, "examples": d.examples, "repaired": d.repaired})),
            "drift_repairs": r.drift_repairs,
            "error": r.error,
        })
    });
    json!({
        "host": agent.host, "cluster": agent.cluster, "connected": agent.connected,
        "acked_version": agent.acked_version, "lag": agent.lag,
        "nacked_version": agent.nacked_version, "nack_error": agent.nack_error,
        "last_seen_ms_ago": agent.last_seen_ms_ago, "served_by": agent.served_by, "report": report,
    })
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
            "agents": status.agents.iter().map(agent_json).collect::<Vec<_>>(),
        }));
    }
    match status.has_leader {
        true => println!("leader: node {} at {} (term {})", status.current_leader, status.leader_address, status.term),
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
    agents(&status.agents);
}

/// One line per agent: connection, version and lag, drift, backend health.
fn agents(agents: &[pb::AgentStatus]) {
    println!();
    if agents.is_empty() {
        println!("agents: none connected to the leader yet");
        return;
    }
    println!(
        "{:<16} {:<12} {:<13} {:>8} {:>5} {:>9} {:<14} DRIFT / ERRORS",
        "AGENT", "CLUSTER", "STATE", "VERSION", "LAG", "ENTRIES", "HEALTH"
    );
    for agent in agents {
        let state = if agent.connected { "connected" } else { "disconnected" };
        let report = agent.report.as_ref();
        let entries = report.map(|r| r.map_entries.to_string()).unwrap_or_else(|| "-".into());
        let health = report
            .map(|r| {
                let up = r.servers.iter().filter(|s| s.status.starts_with("UP")).count();
                format!("{up}/{} up", r.servers.len())
            })
            .unwrap_or_else(|| "-".into());
        let mut notes = Vec::new();
        if let Some(drift) = report.and_then(|r| r.last_drift.as_ref()) {
            notes.push(format!(
                "last drift: {} missing, {} wrong, {} extra, {} duplicate{}",
                drift.missing,
                drift.wrong,
                drift.extra,
                drift.duplicates,
                if drift.repaired { " (repaired)" } else { "" }
            ));
        }
        if let Some(r) = report {
            if !r.docker_reachable {
                notes.push("docker unreachable".into());
            }
            if r.container.as_ref().is_some_and(|c| !c.running) {
                notes.push("haproxy container not running".into());
            }
            if !r.error.is_empty() {
                notes.push(format!("error: {}", r.error));
            }
        }
        if !agent.nack_error.is_empty() {
            notes.push(format!("rejected version {}: {}", agent.nacked_version, agent.nack_error));
        }
        println!(
            "{:<16} {:<12} {:<13} {:>8} {:>5} {:>9} {:<14} {}",
            agent.host,
            agent.cluster,
            state,
            agent.acked_version,
            agent.lag,
            entries,
            health,
            notes.join("; ")
        );
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
        let matched = if m.has_matched { m.matched_index.to_string() } else { "-".to_string() };
        println!("{:<6} {:<22} {:<8} {:>8}", m.id, m.address, role, matched);
    }
}

/// `import`: what was added, moved, unchanged and skipped, with the reasons.
pub fn import_report(json: bool, file: &Path, report: &ImportReport) {
    if json {
        let skipped: Vec<Value> =
            report.skipped.iter().map(|s| json!({"line": s.line, "entry": s.entry, "reason": s.reason})).collect();
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
