//! How `lbfleet status` prints: the leader, each member's own Raft view, the agents with their
//! last reload, and the servers some HAProxy holds out of rotation. Aligned text or JSON.

use lbfleet_proto::pb;
use serde::Serialize;

use super::client::ClientError;
use super::output::print_json;
use crate::state::revocations::unix_time;
use crate::when::age;
use crate::when::unix_now_ms;

/// `status --json`: the answering node's view of the leader, each member's own Raft view, and the agents.
#[derive(Serialize)]
struct StatusJson<'a> {
    leader: Option<u64>,
    leader_address: &'a str,
    term: u64,
    nodes: Vec<NodeJson<'a>>,
    agents: &'a [pb::AgentStatus],
    revocations: &'a [pb::Revocation],
}

/// One member as it answered for itself, or why it did not.
#[derive(Serialize)]
struct NodeJson<'a> {
    id: u64,
    reachable: bool,
    #[serde(flatten)]
    view: NodeView<'a>,
}

/// The Raft figures of a member that answered, or the error of one that did not.
#[derive(Serialize)]
#[serde(untagged)]
enum NodeView<'a> {
    Reachable { state: &'a str, term: u64, last_log_index: u64, committed_index: u64, applied_index: u64 },
    Unreachable { error: String },
}

/// `status`: this node's Raft view, and each member's own.
pub fn status(json: bool, status: &pb::StatusReply, members: &[(u64, Result<pb::StatusReply, ClientError>)]) {
    if json {
        let nodes = members
            .iter()
            .map(|(id, view)| match view {
                Ok(s) => NodeJson {
                    id: *id,
                    reachable: true,
                    view: NodeView::Reachable {
                        state: &s.state,
                        term: s.term,
                        last_log_index: s.last_log_index,
                        committed_index: s.committed_index,
                        applied_index: s.applied_index,
                    },
                },
                Err(error) => {
                    NodeJson { id: *id, reachable: false, view: NodeView::Unreachable { error: error.to_string() } }
                }
            })
            .collect();
        return print_json(&StatusJson {
            leader: status.has_leader.then_some(status.current_leader),
            leader_address: &status.leader_address,
            term: status.term,
            nodes,
            agents: &status.agents,
            revocations: &status.revocations,
        });
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
    reloads(&status.agents, unix_now_ms());
    probes(&status.agents, unix_now_ms());
    servers_not_ready(&status.agents);
    revocations(&status.revocations);
}

/// Servers listed under "servers not ready" before the rest are only counted.
const SERVERS_SHOWN: usize = 20;

/// Each agent's last reload and the one it holds back, if any: a line or two per agent.
fn reloads(agents: &[pb::AgentStatus], now_ms: i64) {
    let lines: Vec<String> = agents
        .iter()
        .filter_map(|agent| Some((agent, agent.report.as_ref()?)))
        .flat_map(|(agent, report)| reload_lines(&agent.host, report, now_ms))
        .collect();
    if lines.is_empty() {
        return;
    }
    println!();
    println!("reloads:");
    for line in lines {
        println!("  {line}");
    }
}

/// "1 change", "3 changes".
fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "lb-a: last reload 12 s ago, ok, hitless, 85 ms, 3 changes (reason); 4 reloads for 9 config changes",
/// and the pending reload's reason when one waits.
fn reload_lines(host: &str, report: &pb::AgentReport, now_ms: i64) -> Vec<String> {
    let mut lines = Vec::new();
    let totals = format!(
        "{} for {}",
        counted(report.reloads, "reload", "reloads"),
        counted(report.config_changes, "config change", "config changes")
    );
    match report.last_reload.as_ref().filter(|_| report.has_last_reload) {
        Some(last) => {
            let result = if last.error.is_empty() { "ok".to_string() } else { format!("FAILED: {}", last.error) };
            let changes = counted(last.changes, "change", "changes");
            lines.push(format!(
                "{host}: last reload {} ago, {result}, {}, {} ms, {changes} ({}); {totals}",
                age(now_ms.saturating_sub(last.at_unix_ms)),
                if last.mode.is_empty() { "hitless" } else { &last.mode },
                last.duration_ms,
                if last.reason.is_empty() { "no reason given" } else { &last.reason },
            ));
        }
        None if report.config_changes > 0 => lines.push(format!("{host}: no reload yet; {totals}")),
        None => {}
    }
    if !report.reload_pending.is_empty() {
        lines.push(format!("{host}: reload pending: {}", report.reload_pending));
    }
    lines
}

/// Failed FQDN probes listed per host before the rest are only counted.
const FAILED_PROBES_SHOWN: usize = 5;

/// Each agent's host checks and end-to-end probes.
fn probes(agents: &[pb::AgentStatus], now_ms: i64) {
    let lines: Vec<String> = agents
        .iter()
        .filter_map(|agent| Some((agent, agent.report.as_ref()?.probes.as_ref()?)))
        .flat_map(|(agent, probes)| probe_lines(&agent.host, probes, now_ms))
        .collect();
    if lines.is_empty() {
        return;
    }
    println!();
    println!("probes:");
    for line in lines {
        println!("  {line}");
    }
}

/// "lb-a: container ok, admin socket ok, frontends ok; 12 FQDN probes, 1 failed", the last FQDN
/// probe, then the FQDNs whose latest probe failed.
fn probe_lines(host: &str, probes: &pb::HostProbes, now_ms: i64) -> Vec<String> {
    let check = |name: &str, result: &Option<pb::ProbeResult>| match result {
        Some(r) if r.ok => format!("{name} ok"),
        Some(r) => format!("{name} FAILED: {}", r.error),
        None => format!("{name} not checked yet"),
    };
    let mut lines = vec![format!(
        "{host}: {}, {}, {}; {}, {} failed",
        check("container", &probes.container),
        check("admin socket", &probes.admin_socket),
        check("frontends", &probes.frontends),
        counted(probes.fqdn_probes, "FQDN probe", "FQDN probes"),
        probes.fqdn_probes_failed
    )];
    let describe = |p: &pb::FqdnProbe| {
        let result = match p.ok {
            true => format!("served by {} (shard {})", p.served_by, p.served_shard),
            false => format!("FAILED: {}", p.error),
        };
        format!(
            "{} {result}, {} ago, version {}, {}",
            p.fqdn,
            age(now_ms.saturating_sub(p.at_unix_ms)),
            p.version,
            p.trigger
        )
    };
    if let Some(last) = probes.fqdns.iter().max_by_key(|p| p.at_unix_ms) {
        lines.push(format!("{host}: last FQDN probe: {}", describe(last)));
    }
    let failed: Vec<&pb::FqdnProbe> = probes.fqdns.iter().filter(|p| !p.ok).collect();
    for probe in failed.iter().take(FAILED_PROBES_SHOWN) {
        lines.push(format!("{host}: failed: {}", describe(probe)));
    }
    if failed.len() > FAILED_PROBES_SHOWN {
        lines.push(format!("{host}: ... and {} more failed (use --json for all)", failed.len() - FAILED_PROBES_SHOWN));
    }
    lines
}

/// Servers some HAProxy holds drained, in maintenance or not UP, with their sessions; nothing
/// when every server is ready and UP, so the usual status stays short.
fn servers_not_ready(agents: &[pb::AgentStatus]) {
    let rows: Vec<(&str, &pb::ServerHealth)> = agents
        .iter()
        .filter_map(|agent| Some((agent.host.as_str(), agent.report.as_ref()?)))
        .flat_map(|(host, report)| report.servers.iter().map(move |server| (host, server)))
        .filter(|(_, server)| !server_ready(server))
        .collect();
    if rows.is_empty() {
        return;
    }
    println!();
    println!("servers not ready (drained, in maintenance or not UP):");
    println!("{:<16} {:<20} {:<20} {:<6} {:<10} {:>8}", "HOST", "BACKEND", "SERVER", "ADMIN", "STATUS", "SESSIONS");
    for (host, server) in rows.iter().take(SERVERS_SHOWN) {
        println!(
            "{:<16} {:<20} {:<20} {:<6} {:<10} {:>8}",
            host,
            server.backend,
            server.server,
            if server.admin.is_empty() { "-" } else { &server.admin },
            server.status,
            server.sessions
        );
    }
    if rows.len() > SERVERS_SHOWN {
        println!("... and {} more servers not ready (use --json for all)", rows.len() - SERVERS_SHOWN);
    }
}

/// Ready and UP (an agent that does not report admin states counts as ready).
fn server_ready(server: &pb::ServerHealth) -> bool {
    let admin_ready = server.admin.is_empty() || server.admin.eq_ignore_ascii_case("ready");
    admin_ready && server.status.starts_with("UP")
}

/// The revoked hosts and serials, if any.
fn revocations(revocations: &[pb::Revocation]) {
    if revocations.is_empty() {
        return;
    }
    println!();
    for revocation in revocations {
        let what = match revocation.host.is_empty() {
            false => format!("host {}", revocation.host),
            true => format!("certificate serial {}", revocation.serial),
        };
        println!("revoked: {what} since {}", unix_time(revocation.revoked_at));
    }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reloads_read_as_one_line_with_the_pending_one_after() {
        let report = pb::AgentReport {
            has_last_reload: true,
            last_reload: Some(pb::ReloadReport {
                at_unix_ms: 1_000_000,
                reason: "server web-1-node-2 added to shard-web-1".into(),
                duration_ms: 85,
                mode: "hitless".into(),
                changes: 3,
                ..Default::default()
            }),
            reloads: 4,
            config_changes: 9,
            reload_pending: "backend shard-web-3 added".into(),
            ..Default::default()
        };
        assert_eq!(
            reload_lines("lb-a", &report, 1_012_500),
            [
                "lb-a: last reload 12 s ago, ok, hitless, 85 ms, 3 changes (server web-1-node-2 added to shard-web-1); \
                 4 reloads for 9 config changes",
                "lb-a: reload pending: backend shard-web-3 added",
            ]
        );
        let failed = pb::AgentReport {
            has_last_reload: true,
            last_reload: Some(pb::ReloadReport {
                at_unix_ms: 0,
                error: "haproxy -c failed".into(),
                mode: "restart".into(),
                changes: 1,
                ..Default::default()
            }),
            reloads: 1,
            config_changes: 1,
            ..Default::default()
        };
        assert_eq!(
            reload_lines("lb-b", &failed, 3 * 3_600_000),
            ["lb-b: last reload 3 h ago, FAILED: haproxy -c failed, restart, 0 ms, 1 change (no reason given); \
              1 reload for 1 config change"]
        );
        assert!(reload_lines("lb-c", &pb::AgentReport::default(), 0).is_empty(), "an agent that never reloaded");
    }

    #[test]
    fn probes_show_the_checks_the_last_probe_and_the_failures() {
        let probe = |fqdn: &str, ok: bool, at: i64| pb::FqdnProbe {
            fqdn: fqdn.into(),
            expected_shard: "web-1".into(),
            served_shard: if ok { "web-1".into() } else { "web-2".into() },
            served_by: "n0".into(),
            ok,
            error: if ok { String::new() } else { "served by shard web-2 (node n0), expected web-1".into() },
            at_unix_ms: at,
            version: 7,
            trigger: "bind".into(),
            ..Default::default()
        };
        let failed = pb::ProbeResult { ok: false, error: "HAProxy has no frontend".into(), at_unix_ms: 0 };
        let probes = pb::HostProbes {
            container: Some(pb::ProbeResult { ok: true, ..Default::default() }),
            admin_socket: Some(pb::ProbeResult { ok: true, ..Default::default() }),
            frontends: Some(failed),
            fqdns: vec![probe("bad.com", false, 1_000), probe("good.com", true, 2_000)],
            fqdn_probes: 2,
            fqdn_probes_failed: 1,
        };
        assert_eq!(
            probe_lines("lb-a", &probes, 5_000),
            [
                "lb-a: container ok, admin socket ok, frontends FAILED: HAProxy has no frontend; 2 FQDN probes, 1 failed",
                "lb-a: last FQDN probe: good.com served by n0 (shard web-1), 3 s ago, version 7, bind",
                "lb-a: failed: bad.com FAILED: served by shard web-2 (node n0), expected web-1, 4 s ago, version 7, bind",
            ]
        );
    }

    #[test]
    fn only_servers_out_of_rotation_or_not_up_are_listed() {
        let server = |admin: &str, status: &str| pb::ServerHealth {
            admin: admin.into(),
            status: status.into(),
            sessions: 4,
            ..Default::default()
        };
        assert!(server_ready(&server("ready", "UP")));
        assert!(server_ready(&server("", "UP 1/2")), "an agent without admin states");
        assert!(!server_ready(&server("drain", "DRAIN")));
        assert!(!server_ready(&server("maint", "MAINT")));
        assert!(!server_ready(&server("ready", "DOWN")));
        assert_eq!(
            (age(400), age(59_000), age(600_000), age(-5)),
            ("<1 s".into(), "59 s".into(), "10 min".into(), "<1 s".into())
        );
    }

    #[test]
    fn unreachable_members_carry_their_error_only() {
        let node = NodeJson { id: 2, reachable: false, view: NodeView::Unreachable { error: "refused".into() } };
        assert_eq!(serde_json::to_value(node).unwrap(), json!({"id": 2, "reachable": false, "error": "refused"}));
        let view =
            NodeView::Reachable { state: "Leader", term: 4, last_log_index: 9, committed_index: 9, applied_index: 8 };
        let node = NodeJson { id: 1, reachable: true, view };
        assert_eq!(
            serde_json::to_value(node).unwrap(),
            json!({"id": 1, "reachable": true, "state": "Leader", "term": 4, "last_log_index": 9,
                   "committed_index": 9, "applied_index": 8})
        );
    }
}
