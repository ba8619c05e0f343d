//! The fleet status page at `/`: this node's Raft view, the clusters, each LB host's agent, the
//! servers as every HAProxy reports them, and the recent changes. Read-only HTML that refreshes
//! itself; askama escapes every value. The figures come from `status_reply`, the same code path
//! as `lbfleet status`, and from the applied state.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use askama::Template;
use lbfleet_proto::pb;

use super::OpsSources;
use crate::api::admin::status_reply;
use crate::raft::state_machine::Applied;
use crate::state::State;
use crate::when::age;
use crate::when::unix_now_ms;

/// History records the page lists, newest first.
const HISTORY_ROWS: usize = 20;

/// Renders the page from the node's live state.
pub fn render(sources: &OpsSources) -> Result<String, askama::Error> {
    let status = status_reply(&sources.raft, &sources.committed, &sources.agents, &sources.shared);
    let page = {
        let applied = sources.shared.read();
        let history = crate::api::history::recent(&applied.state, HISTORY_ROWS);
        StatusPage::build(&status, &applied, &history, unix_now_ms())
    };
    page.render()
}

/// A value with how it should look: good, worth a look, bad, or only informative.
#[derive(Debug, Clone)]
struct Cell {
    text: String,
    class: &'static str,
}

impl Cell {
    fn ok(text: impl Into<String>) -> Cell {
        Cell { text: text.into(), class: "ok" }
    }
    fn warn(text: impl Into<String>) -> Cell {
        Cell { text: text.into(), class: "warn" }
    }
    fn bad(text: impl Into<String>) -> Cell {
        Cell { text: text.into(), class: "bad" }
    }
    fn muted(text: impl Into<String>) -> Cell {
        Cell { text: text.into(), class: "muted" }
    }
}

struct NodeSummary {
    id: u64,
    role: Cell,
    term: u64,
    leader: Cell,
    last_log: u64,
    committed: u64,
    applied: Cell,
}

struct MemberRow {
    id: u64,
    address: String,
    voter: &'static str,
    matched: String,
    notes: String,
}

struct ClusterRow {
    name: String,
    container: String,
    hosts: u64,
    shards: u64,
    nodes: u64,
    bindings: u64,
}

struct HostRow {
    host: String,
    cluster: String,
    agent: Cell,
    acked: String,
    lag: Cell,
    reload: Cell,
    drift: Cell,
    checks: Cell,
    probe: Cell,
    problem: Option<String>,
}

struct ServerTable {
    cluster: String,
    hosts: Vec<String>,
    rows: Vec<ServerRow>,
}

struct ServerRow {
    backend: String,
    server: String,
    cells: Vec<Cell>,
}

struct HistoryRow {
    at: String,
    by: String,
    action: String,
    cluster: String,
    what: String,
    detail: String,
}

/// Everything the template shows, as text and a look per value.
#[derive(Template)]
#[template(path = "status.html")]
pub struct StatusPage {
    generated: String,
    version: u64,
    node: NodeSummary,
    members: Vec<MemberRow>,
    /// Why this node shows no agents' live status, when it does not.
    agents_elsewhere: Option<String>,
    clusters: Vec<ClusterRow>,
    hosts: Vec<HostRow>,
    servers: Vec<ServerTable>,
    history: Vec<HistoryRow>,
}

impl StatusPage {
    /// The page of a node whose status is `status`, applied state `applied` and recent changes
    /// `history` (oldest first), at `now_ms`.
    pub fn build(
        status: &pb::StatusReply,
        applied: &Applied,
        history: &[pb::HistoryRecord],
        now_ms: i64,
    ) -> StatusPage {
        let state = &applied.state;
        let leads = status.has_leader && status.current_leader == status.node_id;
        // Agents stream to the leader: elsewhere the registry holds nothing, or a stale past.
        let agents_elsewhere = match (leads, status.has_leader) {
            (true, _) => None,
            (false, true) => Some(format!(
                "This node is a follower: the agents stream to the leader, node {} at {}. Their live status is on the \
                 leader's page.",
                status.current_leader, status.leader_address
            )),
            (false, false) => Some("No leader is known: the agents' live status is unknown.".to_owned()),
        };
        let agents: BTreeMap<&str, &pb::AgentStatus> =
            if leads { status.agents.iter().map(|a| (a.host.as_str(), a)).collect() } else { BTreeMap::new() };
        StatusPage {
            generated: crate::when::utc(now_ms),
            version: applied.version(),
            node: node_summary(status),
            members: members(status),
            clusters: state
                .clusters
                .values()
                .map(|cluster| {
                    let summary = crate::api::convert::cluster_summary(applied, cluster);
                    ClusterRow {
                        name: summary.name,
                        container: cluster.config.haproxy_container.clone(),
                        hosts: summary.hosts,
                        shards: summary.shards,
                        nodes: summary.nodes,
                        bindings: summary.bindings,
                    }
                })
                .collect(),
            hosts: host_rows(state, &agents, leads, now_ms),
            servers: if leads { server_tables(state, &agents) } else { Vec::new() },
            history: history.iter().rev().map(history_row).collect(),
            agents_elsewhere,
        }
    }
}

fn node_summary(status: &pb::StatusReply) -> NodeSummary {
    let role = match status.state.as_str() {
        "Leader" => Cell::ok("leader"),
        "Follower" => Cell::ok("follower"),
        "Learner" => Cell::warn("learner"),
        "Candidate" => Cell::bad("candidate (election under way)"),
        other => Cell::warn(other.to_lowercase()),
    };
    let leader = match status.has_leader {
        true => Cell::ok(format!("node {} at {}", status.current_leader, status.leader_address)),
        false => Cell::bad("none known"),
    };
    let applied = match status.applied_index >= status.committed_index {
        true => Cell::ok(status.applied_index.to_string()),
        false => {
            Cell::warn(format!("{} ({} behind)", status.applied_index, status.committed_index - status.applied_index))
        }
    };
    NodeSummary {
        id: status.node_id,
        role,
        term: status.term,
        leader,
        last_log: status.last_log_index,
        committed: status.committed_index,
        applied,
    }
}

fn members(status: &pb::StatusReply) -> Vec<MemberRow> {
    status
        .members
        .iter()
        .map(|member| {
            let mut notes = Vec::new();
            if member.id == status.node_id {
                notes.push("this node");
            }
            if status.has_leader && member.id == status.current_leader {
                notes.push("leader");
            }
            MemberRow {
                id: member.id,
                address: member.address.clone(),
                voter: if member.voter { "voter" } else { "learner" },
                matched: if member.has_matched { member.matched_index.to_string() } else { "-".into() },
                notes: notes.join(", "),
            }
        })
        .collect()
}

/// One row per LB host of the state, and per agent the registry knows that the state does not.
fn host_rows(state: &State, agents: &BTreeMap<&str, &pb::AgentStatus>, leads: bool, now_ms: i64) -> Vec<HostRow> {
    let mut hosts: BTreeMap<&str, &str> = state.hosts.values().map(|h| (h.id.as_str(), h.cluster.as_str())).collect();
    for agent in agents.values() {
        hosts.entry(agent.host.as_str()).or_insert(agent.cluster.as_str());
    }
    hosts
        .into_iter()
        .map(|(host, cluster)| {
            let unknown = || Cell::muted(if leads { "-" } else { "on the leader" });
            let Some(agent) = agents.get(host) else {
                return HostRow {
                    host: host.to_owned(),
                    cluster: cluster.to_owned(),
                    agent: if leads { Cell::bad("never connected") } else { unknown() },
                    acked: "-".into(),
                    lag: unknown(),
                    reload: unknown(),
                    drift: unknown(),
                    checks: unknown(),
                    probe: unknown(),
                    problem: None,
                };
            };
            let report = agent.report.as_ref().filter(|_| agent.has_report);
            let not_reported = || Cell::muted("no report yet");
            let mut problems = Vec::new();
            if agent.nacked_version > agent.acked_version {
                problems.push(format!("version {} refused: {}", agent.nacked_version, agent.nack_error));
            }
            if let Some(error) = report.map(|r| r.error.as_str()).filter(|e| !e.is_empty()) {
                problems.push(error.to_owned());
            }
            if !state.hosts.contains_key(host) {
                problems.push("not in the state any more".to_owned());
            }
            HostRow {
                host: host.to_owned(),
                cluster: cluster.to_owned(),
                agent: match agent.connected {
                    true => Cell::ok("connected"),
                    false => Cell::bad(format!("disconnected, last seen {} ago", age(agent.last_seen_ms_ago as i64))),
                },
                acked: agent.acked_version.to_string(),
                lag: match agent.lag {
                    0 => Cell::ok("0"),
                    lag if agent.nacked_version > agent.acked_version => Cell::bad(lag.to_string()),
                    lag => Cell::warn(lag.to_string()),
                },
                reload: report.map_or_else(not_reported, |r| reload_cell(r, now_ms)),
                drift: report.map_or_else(not_reported, |r| drift_cell(r, now_ms)),
                checks: report.map_or_else(not_reported, checks_cell),
                probe: report.map_or_else(not_reported, |r| probe_cell(r, now_ms)),
                problem: (!problems.is_empty()).then(|| problems.join("; ")),
            }
        })
        .collect()
}

fn reload_cell(report: &pb::AgentReport, now_ms: i64) -> Cell {
    let pending = match report.reload_pending.as_str() {
        "" => String::new(),
        reason => format!("; pending: {reason}"),
    };
    match report.last_reload.as_ref().filter(|_| report.has_last_reload) {
        Some(last) if last.error.is_empty() => {
            let mode = if last.mode.is_empty() { "hitless" } else { &last.mode };
            let text = format!(
                "{} ago, {mode}, {} ms ({}){pending}",
                age(now_ms.saturating_sub(last.at_unix_ms)),
                last.duration_ms,
                if last.reason.is_empty() { "no reason given" } else { &last.reason },
            );
            if pending.is_empty() {
                Cell::ok(text)
            } else {
                Cell::warn(text)
            }
        }
        Some(last) => {
            Cell::bad(format!("FAILED {} ago: {}{pending}", age(now_ms.saturating_sub(last.at_unix_ms)), last.error))
        }
        None if pending.is_empty() => Cell::muted("none yet"),
        None => Cell::warn(format!("none yet{pending}")),
    }
}

fn drift_cell(report: &pb::AgentReport, now_ms: i64) -> Cell {
    let repairs = report.drift_repairs;
    let found = report.last_drift.as_ref().filter(|d| d.missing + d.wrong + d.extra + d.duplicates > 0);
    let Some(drift) = found else {
        return Cell::ok(match repairs {
            0 => "none".to_owned(),
            n => format!("none now ({n} repaired since start)"),
        });
    };
    let counts =
        [("missing", drift.missing), ("wrong", drift.wrong), ("extra", drift.extra), ("duplicate", drift.duplicates)]
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(what, n)| format!("{n} {what}"))
            .collect::<Vec<_>>()
            .join(", ");
    let when = age(now_ms.saturating_sub(drift.found_at_unix_ms));
    match drift.repaired {
        true => Cell::warn(format!("{counts}, found {when} ago and repaired")),
        false => Cell::bad(format!("{counts}, found {when} ago, not repaired")),
    }
}

/// The agent's host-level checks: container, admin socket, frontends.
fn checks_cell(report: &pb::AgentReport) -> Cell {
    let Some(probes) = report.probes.as_ref().filter(|_| report.has_probes) else {
        return Cell::muted("not reported");
    };
    let checks =
        [("container", &probes.container), ("admin socket", &probes.admin_socket), ("frontends", &probes.frontends)];
    let failed: Vec<String> = checks
        .iter()
        .filter_map(|(what, result)| match result {
            Some(result) if result.ok => None,
            Some(result) if !result.error.is_empty() => Some(format!("{what}: {}", result.error)),
            Some(_) => Some(format!("{what}: failed")),
            None => Some(format!("{what}: not checked")),
        })
        .collect();
    match failed.is_empty() {
        true => Cell::ok("container, admin socket, frontends OK"),
        false => Cell::bad(failed.join("; ")),
    }
}

/// The latest end-to-end probe, and how many failed since the agent started.
fn probe_cell(report: &pb::AgentReport, now_ms: i64) -> Cell {
    let Some(probes) = report.probes.as_ref().filter(|_| report.has_probes) else {
        return Cell::muted("not reported");
    };
    let totals = match probes.fqdn_probes {
        0 => String::new(),
        n => format!(" ({} of {n} failed since start)", probes.fqdn_probes_failed),
    };
    let Some(last) = probes.fqdns.last() else {
        return Cell::muted(format!("none yet{totals}"));
    };
    let when = age(now_ms.saturating_sub(last.at_unix_ms));
    if last.ok {
        let by = if last.served_by.is_empty() { String::new() } else { format!(" by {}", last.served_by) };
        Cell::ok(format!("{}: shard {} served{by}, {when} ago{totals}", last.fqdn, last.served_shard))
    } else {
        let error = if last.error.is_empty() { "failed" } else { &last.error };
        Cell::bad(format!("{}: expected shard {}, {error}, {when} ago{totals}", last.fqdn, last.expected_shard))
    }
}

/// Per cluster, a row per server HAProxy should hold or holds, a column per LB host.
fn server_tables(state: &State, agents: &BTreeMap<&str, &pb::AgentStatus>) -> Vec<ServerTable> {
    state
        .clusters
        .keys()
        .map(|cluster| {
            let hosts: Vec<&str> =
                state.hosts.values().filter(|h| &h.cluster == cluster).map(|h| h.id.as_str()).collect();
            let reports: Vec<Option<&pb::AgentReport>> = hosts
                .iter()
                .map(|host| agents.get(host).and_then(|a| a.report.as_ref().filter(|_| a.has_report)))
                .collect();
            let mut servers: BTreeSet<(String, String)> = state
                .nodes
                .values()
                .filter_map(|node| {
                    let shard = state.shards.get(&node.shard).filter(|s| &s.cluster == cluster)?;
                    Some((shard.lb_backend.clone(), node.name.clone()))
                })
                .collect();
            for report in reports.iter().flatten() {
                servers.extend(report.servers.iter().map(|s| (s.backend.clone(), s.server.clone())));
            }
            let rows = servers
                .into_iter()
                .map(|(backend, server)| {
                    let cells = reports
                        .iter()
                        .map(|report| match report {
                            None => Cell::muted("no report"),
                            Some(report) => {
                                match report.servers.iter().find(|s| s.backend == backend && s.server == server) {
                                    Some(health) => server_cell(health),
                                    None => Cell::bad("not in HAProxy"),
                                }
                            }
                        })
                        .collect();
                    ServerRow { backend, server, cells }
                })
                .collect();
            ServerTable { cluster: cluster.clone(), hosts: hosts.into_iter().map(str::to_owned).collect(), rows }
        })
        .collect()
}

/// "UP · 3 sessions", with the admin state when it is not ready.
fn server_cell(health: &pb::ServerHealth) -> Cell {
    let admin = if health.admin.is_empty() { "ready" } else { health.admin.as_str() };
    let sessions = if health.sessions == 1 { "1 session".to_owned() } else { format!("{} sessions", health.sessions) };
    let mut text = format!("{} · {sessions}", health.status);
    if !admin.eq_ignore_ascii_case("ready") {
        text.push_str(&format!(" · {admin}"));
    }
    match (health.status.starts_with("UP"), admin.eq_ignore_ascii_case("ready")) {
        (true, true) => Cell::ok(text),
        // Drained or in maintenance on purpose: visible, not alarming.
        (_, false) => Cell::warn(text),
        (false, true) if health.status.starts_with("no check") => Cell::muted(text),
        (false, true) => Cell::bad(text),
    }
}

fn history_row(record: &pb::HistoryRecord) -> HistoryRow {
    let what = if record.fqdn.is_empty() {
        record.subject.clone()
    } else if !record.previous.is_empty() && !record.shard.is_empty() {
        format!("{} → {} (from {})", record.fqdn, record.shard, record.previous)
    } else if !record.shard.is_empty() {
        format!("{} → {}", record.fqdn, record.shard)
    } else {
        record.fqdn.clone()
    };
    HistoryRow {
        at: crate::when::utc(record.at_unix_ms),
        by: record.by.clone(),
        action: record.action.clone(),
        cluster: record.cluster.clone(),
        what,
        detail: record.detail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn applied() -> Applied {
        let mut state = State::default();
        let commands = [
            Command::CreateCluster { name: "web".into(), haproxy_container: None },
            Command::AddHost {
                id: "lb-a".into(),
                cluster: "web".into(),
                address: String::new(),
                haproxy_container: None,
            },
            Command::AddHost {
                id: "lb-b".into(),
                cluster: "web".into(),
                address: String::new(),
                haproxy_container: None,
            },
            Command::CreateShard { name: "s1".into(), cluster: "web".into() },
            Command::AddNode {
                name: "s1-n1".into(),
                shard: "s1".into(),
                host: "lb-a".into(),
                address: "10.0.0.9:80".into(),
                container: None,
            },
        ];
        for command in &commands {
            state.apply(command).expect("applies");
        }
        let mut applied = Applied { state, ..Applied::default() };
        applied.last_applied = Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 42));
        applied
    }

    fn status(leader: u64, agents: Vec<pb::AgentStatus>) -> pb::StatusReply {
        pb::StatusReply {
            node_id: 1,
            state: if leader == 1 { "Leader" } else { "Follower" }.into(),
            current_leader: leader,
            has_leader: true,
            term: 3,
            last_log_index: 42,
            committed_index: 42,
            applied_index: 42,
            members: vec![
                pb::Member { id: 1, address: "127.0.0.1:7400".into(), voter: true, ..Default::default() },
                pb::Member { id: 2, address: "127.0.0.1:7401".into(), voter: true, ..Default::default() },
            ],
            leader_address: if leader == 1 { "127.0.0.1:7400" } else { "127.0.0.1:7401" }.into(),
            agents,
            revocations: Vec::new(),
        }
    }

    fn agent(host: &str, acked: u64, report: Option<pb::AgentReport>) -> pb::AgentStatus {
        pb::AgentStatus {
            host: host.into(),
            cluster: "web".into(),
            connected: true,
            acked_version: acked,
            lag: 42 - acked,
            has_report: report.is_some(),
            report,
            served_by: 1,
            ..Default::default()
        }
    }

    fn report(status: &str, sessions: u64) -> pb::AgentReport {
        pb::AgentReport {
            applied_version: 42,
            servers: vec![pb::ServerHealth {
                backend: "shard-s1".into(),
                server: "s1-n1".into(),
                status: status.into(),
                sessions,
                admin: "ready".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_leader_shows_hosts_versions_and_server_health() {
        let agents = vec![agent("lb-a", 42, Some(report("UP", 3))), agent("lb-b", 40, Some(report("DOWN", 0)))];
        let page = StatusPage::build(&status(1, agents), &applied(), &[], 0).render().unwrap();
        for text in ["lb-a", "lb-b", "shard-s1", "s1-n1", "UP · 3 sessions", "DOWN · 0 sessions", ">42<", ">40<"] {
            assert!(page.contains(text), "{text:?} missing from the page:\n{page}");
        }
        assert!(page.contains(r#"<meta http-equiv="refresh" content="5">"#));
        assert!(!page.contains("<script"), "the page needs no JavaScript");
    }

    #[test]
    fn failed_probes_reloads_and_drift_are_marked_bad() {
        let now = 1_700_000_060_000;
        let failed = |error: &str| Some(pb::ProbeResult { ok: false, error: error.into(), at_unix_ms: now });
        let fine = Some(pb::ProbeResult { ok: true, error: String::new(), at_unix_ms: now });
        let mut report = report("UP", 0);
        report.has_probes = true;
        report.probes = Some(pb::HostProbes {
            container: fine.clone(),
            admin_socket: failed("connection refused"),
            frontends: fine,
            fqdns: vec![pb::FqdnProbe {
                fqdn: "www.example.com".into(),
                expected_shard: "s1".into(),
                served_shard: "s2".into(),
                ok: false,
                error: "served by shard s2".into(),
                at_unix_ms: now - 5_000,
                ..Default::default()
            }],
            fqdn_probes: 9,
            fqdn_probes_failed: 1,
        });
        report.has_last_reload = true;
        report.last_reload = Some(pb::ReloadReport {
            at_unix_ms: now - 120_000,
            error: "haproxy -c failed".into(),
            ..Default::default()
        });
        report.last_drift = Some(pb::DriftReport { missing: 3, found_at_unix_ms: now - 1_000, ..Default::default() });
        let page = StatusPage::build(&status(1, vec![agent("lb-a", 42, Some(report))]), &applied(), &[], now);
        let row = page.hosts.iter().find(|h| h.host == "lb-a").unwrap();
        assert_eq!((row.checks.class, row.checks.text.as_str()), ("bad", "admin socket: connection refused"));
        assert_eq!(row.probe.class, "bad");
        assert_eq!(
            row.probe.text,
            "www.example.com: expected shard s1, served by shard s2, 5 s ago (1 of 9 failed since start)"
        );
        assert_eq!((row.reload.class, row.reload.text.as_str()), ("bad", "FAILED 2 min ago: haproxy -c failed"));
        assert_eq!((row.drift.class, row.drift.text.as_str()), ("bad", "3 missing, found 1 s ago, not repaired"));
        let never = page.hosts.iter().find(|h| h.host == "lb-b").unwrap();
        assert_eq!((never.agent.class, never.agent.text.as_str()), ("bad", "never connected"));
    }

    #[test]
    fn a_follower_points_at_the_leader() {
        let page = StatusPage::build(&status(2, Vec::new()), &applied(), &[], 0).render().unwrap();
        assert!(page.contains("the agents stream to the leader, node 2 at 127.0.0.1:7401"), "{page}");
        assert!(page.contains("lb-a") && page.contains("on the leader"), "{page}");
    }

    #[test]
    fn hostile_strings_are_escaped() {
        let hostile = "<script>alert(1)</script>";
        let mut bad = report("UP", 1);
        bad.error = hostile.into();
        let history = [pb::HistoryRecord {
            version: 7,
            at_unix_ms: 1_700_000_000_000,
            by: "admin:<b>eve</b>".into(),
            action: "bind".into(),
            cluster: "web".into(),
            fqdn: "www.example.com".into(),
            shard: "s1".into(),
            ..Default::default()
        }];
        let page = StatusPage::build(&status(1, vec![agent("lb-a", 42, Some(bad))]), &applied(), &history, 0)
            .render()
            .unwrap();
        assert!(!page.contains(hostile) && !page.contains("<b>eve"), "{page}");
        assert!(page.contains("&#60;script&#62;") || page.contains("&lt;script&gt;"), "{page}");
        assert!(page.contains("2023-11-14T22:13:20Z") && page.contains("www.example.com → s1"), "{page}");
    }
}
