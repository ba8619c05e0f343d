//! Reloads against real `lbfleet/haproxy:dev` and `lbfleet/node:dev` containers: what carries
//! over a reload (health, drain, maint), what must not (an old address), admin states without
//! a reload, and bursts of config changes coalesced into few reloads. Without Docker these fail
//! when `CI` is set and otherwise do nothing.

use std::time::Duration;

use lbfleet_agent::applier::Applier;
use lbfleet_agent::config::AgentConfig;
use lbfleet_agent::desired::AdminState;
use lbfleet_agent::desired::Backend;
use lbfleet_agent::desired::MapEntries;
use lbfleet_agent::desired::Server;
use lbfleet_agent::desired::Topology;
use lbfleet_agent::haproxy::AdminChange;
use lbfleet_agent::haproxy::Haproxy;
use lbfleet_agent::haproxy::ReloadMode;
use lbfleet_agent::haproxy::RuntimeMode;
use lbfleet_agent::haproxy::ServerStat;
use lbfleet_proto::pb;
use lbfleet_proto::pb::coordinator_message::Kind;
use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::http_get;
use lbfleet_tests::docker_lab::HaproxyBox;
use lbfleet_tests::docker_lab::Lab;
use lbfleet_tests::docker_lab::Mounts;
use lbfleet_tests::docker_lab::MAP_PATH;
use lbfleet_tests::docker_lab::READY;
use lbfleet_tests::poll::wait_for;

const SITE: &str = "site.example.com";

fn server(name: &str, address: &str, id: u32) -> Server {
    Server { name: name.into(), address: address.into(), id, admin: AdminState::Ready }
}

fn topology(backends: Vec<(&str, Vec<Server>)>) -> Topology {
    Topology {
        map_path: MAP_PATH.into(),
        backends: backends.into_iter().map(|(name, servers)| Backend { name: name.into(), servers }).collect(),
    }
}

fn stat<'a>(servers: &'a [ServerStat], name: &str) -> &'a ServerStat {
    servers.iter().find(|s| s.server == name).unwrap_or_else(|| panic!("no server {name} in {servers:?}"))
}

/// Health and forced admin states of the first shard's servers, as `(name, status, admin)`.
async fn states(haproxy: &Haproxy) -> Vec<(String, String, AdminState)> {
    let servers = haproxy.show_servers().await.expect("show servers");
    servers.into_iter().filter(|s| s.backend == "shard-a").map(|s| (s.server, s.status, s.admin)).collect()
}

/// Whether the first shard holds `up` UP, `down` DOWN, `maint` in maint and `drained` draining.
fn settled(states: &[(String, String, AdminState)]) -> bool {
    let find = |name: &str| states.iter().find(|(n, _, _)| n == name);
    matches!(find("up"), Some((_, status, AdminState::Ready)) if status == "UP")
        && matches!(find("down"), Some((_, status, AdminState::Ready)) if status.starts_with("DOWN"))
        && matches!(find("maint"), Some((_, status, AdminState::Maint)) if status.starts_with("MAINT"))
        && matches!(find("drained"), Some((_, status, AdminState::Drain)) if status.starts_with("DRAIN"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_drain_and_maint_carry_over_a_reload_and_a_restart() {
    if !docker_available() {
        return;
    }
    let mut lab = Lab::new("carry").expect("lab");
    let lb = lab.start_haproxy("lb", Mounts::ALL).expect("haproxy");
    let node = lab.start_node("n0", "a").expect("node");
    let node = lab.ip(&node).expect("node address");
    let haproxy = lb.driver(RuntimeMode::Socket, ReloadMode::Hitless).await.expect("HAProxy answers");
    // Nothing listens on :81: that server fails its checks.
    let shard_a = vec![
        server("up", &format!("{node}:80"), 1),
        server("down", &format!("{node}:81"), 2),
        server("maint", &format!("{node}:80"), 3),
        server("drained", &format!("{node}:80"), 4),
    ];
    let first = topology(vec![("shard-a", shard_a.clone())]);
    assert!(haproxy.apply_config(&first).await.expect("config applied"));
    let forced = [("maint", AdminState::Maint), ("drained", AdminState::Drain)].map(|(server, state)| AdminChange {
        backend: "shard-a".into(),
        server: server.into(),
        state,
    });
    let refused = haproxy.set_admin_states(&forced).await.expect("admin states set");
    assert!(refused.is_empty(), "{refused:?}");
    let before = wait_for("down DOWN, admin states held", READY, || async {
        let states = states(&haproxy).await;
        settled(&states).then_some(states)
    })
    .await
    .expect("settled");
    println!("before the reload: {before:?}");

    // A new worker starts with all servers UP unless it loads the saved state: read at once.
    let pid = haproxy.worker_pid().await.expect("pid");
    let second =
        topology(vec![("shard-a", shard_a.clone()), ("shard-b", vec![server("b0", &format!("{node}:80"), 1)])]);
    assert!(haproxy.apply_config(&second).await.expect("reloaded"));
    assert_ne!(haproxy.worker_pid().await.expect("pid"), pid, "a new worker");
    let after = states(&haproxy).await;
    assert!(settled(&after), "right after the reload: {after:?}");

    // The stop + start mode saves the state before the stop.
    let restarting = lb.driver(RuntimeMode::Socket, ReloadMode::Restart).await.expect("HAProxy answers");
    let third = topology(vec![("shard-a", shard_a), ("shard-c", vec![server("c0", &format!("{node}:80"), 1)])]);
    assert!(restarting.apply_config(&third).await.expect("restarted"));
    let after = states(&restarting).await;
    assert!(settled(&after), "right after the restart: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_address_is_used_after_the_reload_despite_the_state_file() {
    if !docker_available() {
        return;
    }
    let mut lab = Lab::new("readdress").expect("lab");
    let lb = lab.start_haproxy("lb", Mounts::ALL).expect("haproxy");
    let n0 = lab.start_node("n0", "a").expect("node");
    let n1 = lab.start_node("n1", "a").expect("node");
    let haproxy = lb.driver(RuntimeMode::Socket, ReloadMode::Hitless).await.expect("HAProxy answers");
    haproxy.write_map_file(&[(SITE.to_owned(), "shard-a".to_owned())].into()).await.expect("map file");
    // `s` moves from n0 to n1 by name; `t` (in a shard of its own, out of the traffic) moves by
    // IP from a port nothing listens on to a live one.
    let n1_ip = lab.ip(&n1).expect("node address");
    let on = |node: &str, t_port: u16| {
        let t = server("t", &format!("{n1_ip}:{t_port}"), 2);
        topology(vec![("shard-a", vec![server("s", &format!("{node}:80"), 1)]), ("shard-t", vec![t])])
    };
    assert!(haproxy.apply_config(&on(&n0, 81)).await.expect("config applied"));
    let http = lb.http().expect("published port");
    let served_by = || async {
        let answer = http_get(http, SITE).await.ok()?;
        (answer.status == 200).then(|| answer.header("x-served-by").map(str::to_owned)).flatten()
    };
    let first = wait_for("n0 serving", READY, served_by).await.expect("served");
    assert_eq!(first, "n0");
    wait_for("t DOWN", READY, || async {
        let servers = haproxy.show_servers().await.ok()?;
        stat(&servers, "t").status.starts_with("DOWN").then_some(())
    })
    .await
    .expect("t down");

    // `init-addr last` would take n0's address from the state file for the renamed server, and
    // a server readdressed by IP would keep the health of its old address.
    assert!(haproxy.apply_config(&on(&n1, 80)).await.expect("readdressed"));
    let state = haproxy.servers_state().await.expect("servers state");
    let servers = haproxy.show_servers().await.expect("servers");
    let s = state.iter().find(|line| line.server == "s").expect("server s");
    assert_eq!((s.fqdn.as_str(), s.addr.as_str()), (n1.as_str(), n1_ip.as_str()), "right after the reload: {state:?}");
    let t = stat(&servers, "t");
    assert!(t.status.starts_with("UP"), "a new address starts fresh: {t:?}");
    for _ in 0..10 {
        assert_eq!(served_by().await.as_deref(), Some("n1"), "right after the reload; state {s:?}");
    }
}

fn agent_config(lb: &HaproxyBox, reload_min_interval: Duration) -> AgentConfig {
    AgentConfig {
        host_id: "lb".into(),
        endpoints: vec!["127.0.0.1:1".into()],
        tls_dir: lb.config_dir.clone(),
        socket_dir: Some(lb.socket_dir.clone()),
        map_dir: Some(lb.map_dir.clone()),
        config_dir: Some(lb.config_dir.clone()),
        docker_socket: None,
        runtime: RuntimeMode::Socket,
        reload: ReloadMode::Hitless,
        container: None,
        reconcile_interval: Duration::from_secs(10),
        report_interval: Duration::from_secs(5),
        reload_min_interval,
        metrics_listen: None,
        probe_address: "127.0.0.1:80".into(),
        probe_interval: Duration::from_secs(300),
        probe_sample: 10,
    }
}

fn spec(name: &str, address: &str, id: u32, admin: pb::AdminState) -> pb::ServerSpec {
    pb::ServerSpec { name: name.into(), address: address.into(), id, admin: admin as i32 }
}

fn agent_topology(lb: &HaproxyBox, servers: Vec<pb::ServerSpec>) -> pb::AgentTopology {
    pb::AgentTopology {
        container: lb.container.clone(),
        map_path: MAP_PATH.into(),
        backends: vec![pb::BackendSpec { name: "shard-a".into(), servers }],
    }
}

fn full(version: u64, topology: pb::AgentTopology) -> Kind {
    let map = vec![pb::MapEntry { fqdn: SITE.into(), backend: "shard-a".into() }];
    Kind::Full(pb::FullState { version, topology: Some(topology), map })
}

fn delta(version: u64, topology: pb::AgentTopology) -> Kind {
    Kind::Delta(pb::Delta { from_version: version - 1, version, topology: Some(topology), ..Default::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_applies_without_a_reload() {
    if !docker_available() {
        return;
    }
    let mut lab = Lab::new("admin").expect("lab");
    let lb = lab.start_haproxy("lb", Mounts::ALL).expect("haproxy");
    let node = lab.start_node("n0", "a").expect("node");
    let node = lab.ip(&node).expect("node address");
    let haproxy = lb.driver(RuntimeMode::Socket, ReloadMode::Hitless).await.expect("HAProxy answers");
    let mut applier = Applier::new(agent_config(&lb, Duration::from_secs(1))).await;
    let address = format!("{node}:80");
    let with = |admin| agent_topology(&lb, vec![spec("n0", &address, 7, admin), spec("n1", &address, 8, admin)]);

    applier.apply(full(1, with(pb::AdminState::AdminReady))).await.expect("full state");
    assert_eq!(applier.live_version(), 0, "its config is not in service yet");
    let reload = applier.reload_if_due().await.expect("the first change reloads at once").expect("reloaded");
    assert_eq!(applier.live_version(), 1);
    println!("first reload: {reload:?}");
    let pid = haproxy.worker_pid().await.expect("pid");

    for (version, admin, word) in [
        (2, pb::AdminState::AdminDrain, "DRAIN"),
        (3, pb::AdminState::AdminMaint, "MAINT"),
        (4, pb::AdminState::AdminReady, "UP"),
    ] {
        applier.apply(delta(version, with(admin))).await.expect("delta");
        assert_eq!(applier.reload_due(), None, "an admin change needs no reload");
        assert_eq!(applier.live_version(), version);
        let servers = haproxy.show_servers().await.expect("servers");
        for name in ["n0", "n1"] {
            let server = stat(&servers, name);
            assert!(server.status.starts_with(word), "{word} expected: {server:?}");
        }
    }
    assert_eq!(haproxy.worker_pid().await.expect("pid"), pid, "no reload");
    let report = applier.report(0, false).await;
    assert_eq!((report.reloads, report.config_changes), (1, 1));
    let n0 = report.servers.iter().find(|s| s.server == "n0").expect("n0 reported");
    assert_eq!(n0.admin, "ready");

    // A state changed behind the agent's back is put back by reconcile.
    haproxy
        .set_admin_states(&[AdminChange { backend: "shard-a".into(), server: "n1".into(), state: AdminState::Maint }])
        .await
        .expect("set");
    applier.reconcile().await.expect("reconciled");
    assert_eq!(stat(&haproxy.show_servers().await.expect("servers"), "n1").admin, AdminState::Ready);
    assert_eq!(haproxy.worker_pid().await.expect("pid"), pid, "still no reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_topology_changes_costs_few_reloads() {
    if !docker_available() {
        return;
    }
    let mut lab = Lab::new("burst").expect("lab");
    let lb = lab.start_haproxy("lb", Mounts::ALL).expect("haproxy");
    let node = lab.start_node("n0", "a").expect("node");
    let node = lab.ip(&node).expect("node address");
    let haproxy = lb.driver(RuntimeMode::Socket, ReloadMode::Hitless).await.expect("HAProxy answers");
    let min_interval = Duration::from_secs(1);
    let mut applier = Applier::new(agent_config(&lb, min_interval)).await;
    let address = format!("{node}:80");
    let servers = |n: u32| -> Vec<pb::ServerSpec> {
        (0..n).map(|i| spec(&format!("n{i}"), &address, i + 1, pb::AdminState::AdminReady)).collect()
    };

    applier.apply(full(1, agent_topology(&lb, servers(1)))).await.expect("full state");
    applier.reload_if_due().await.expect("due").expect("reloaded");
    // Each change is one more node, 50 ms apart; the session runs a due reload after each.
    const CHANGES: u32 = 20;
    let started = tokio::time::Instant::now();
    for i in 1..=CHANGES {
        let version = u64::from(i) + 1;
        applier.apply(delta(version, agent_topology(&lb, servers(i + 1)))).await.expect("delta");
        if let Some(reloaded) = applier.reload_if_due().await {
            reloaded.expect("reloaded");
        }
        if i == 1 {
            // Right after the first reload: this change waits, and so does its ack.
            assert!(applier.reload_due().is_some(), "the second change waits for the interval");
            assert_eq!(applier.live_version(), 1, "a version whose config is not in service is not live");
        }
        assert!(applier.live_version() <= version);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pending = applier.report(0, false).await.reload_pending;
    if let Some(due) = applier.reload_due() {
        assert!(!pending.is_empty(), "a pending reload says why");
        tokio::time::sleep_until(due).await;
        applier.reload_if_due().await.expect("due").expect("reloaded");
    }
    let report = applier.report(0, false).await;
    let elapsed = started.elapsed();
    println!("{CHANGES} changes in {elapsed:?}: {} reloads after the first, {report:?}", report.reloads - 1);
    assert_eq!(report.config_changes, u64::from(CHANGES) + 1);
    // At most one reload per interval, plus the one at the start of the burst.
    let bound = elapsed.as_secs_f64() / min_interval.as_secs_f64() + 2.0;
    assert!((report.reloads - 1) as f64 <= bound, "{} reloads in {elapsed:?}", report.reloads - 1);
    assert!(report.reloads - 1 < u64::from(CHANGES) / 3, "{} reloads for {CHANGES} changes", report.reloads - 1);
    assert_eq!((report.applied_version, applier.live_version()), (u64::from(CHANGES) + 1, u64::from(CHANGES) + 1));
    assert!(report.reload_pending.is_empty());
    let last = report.last_reload.expect("last reload");
    assert!(last.error.is_empty() && last.changes >= 2, "{last:?}");
    // Every server added since the reload before, bounded: "… and N more".
    assert!(last.reason.starts_with("server n1 added to shard-a; server n2 added to shard-a"), "{last:?}");
    assert!(last.reason.ends_with(" more") && last.reason.chars().count() <= 400, "{last:?}");
    let held = haproxy.show_servers().await.expect("servers");
    assert_eq!(held.iter().filter(|s| s.backend == "shard-a").count(), CHANGES as usize + 1);
}

/// Which node serves each of `fqdns`, from `X-Served-By`.
async fn placement(http: std::net::SocketAddr, fqdns: &[String]) -> Vec<String> {
    let mut served = Vec::with_capacity(fqdns.len());
    for fqdn in fqdns {
        let answer = http_get(http, fqdn).await.expect("answer");
        assert_eq!(answer.status, 200, "{fqdn}: {answer:?}");
        served.push(answer.header("x-served-by").expect("X-Served-By").to_owned());
    }
    served
}

/// Removes n2 from a shard of four and returns the placement before and after.
async fn remove_one_of_four(
    haproxy: &Haproxy,
    http: std::net::SocketAddr,
    nodes: &[String],
    ids: [u32; 4],
) -> (Vec<String>, Vec<String>) {
    let fqdns: Vec<String> = (0..200).map(|i| format!("site-{i:03}.example.com")).collect();
    let shard = |skip: Option<usize>| {
        let servers = (0..4)
            .filter(|i| Some(*i) != skip)
            .map(|i| server(&format!("n{i}"), &format!("{}:80", nodes[i]), ids[i]))
            .collect();
        topology(vec![("shard-a", servers)])
    };
    haproxy.apply_config(&shard(None)).await.expect("four nodes");
    wait_for("four nodes UP", READY, || async {
        let servers = haproxy.show_servers().await.ok()?;
        (servers.iter().filter(|s| s.status == "UP").count() == 4).then_some(())
    })
    .await
    .expect("up");
    let before = placement(http, &fqdns).await;
    haproxy.apply_config(&shard(Some(2))).await.expect("n2 removed");
    let after = placement(http, &fqdns).await;
    (before, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_server_ids_move_only_the_removed_nodes_sites() {
    if !docker_available() {
        return;
    }
    let mut lab = Lab::new("hashing").expect("lab");
    let lb = lab.start_haproxy("lb", Mounts::ALL).expect("haproxy");
    let nodes: Vec<String> = (0..4).map(|i| lab.start_node(&format!("n{i}"), "a").expect("node")).collect();
    let haproxy = lb.driver(RuntimeMode::Socket, ReloadMode::Hitless).await.expect("HAProxy answers");
    let fqdns: MapEntries = (0..200).map(|i| (format!("site-{i:03}.example.com"), "shard-a".to_owned())).collect();
    haproxy.write_map_file(&fqdns).await.expect("map file");
    let http = lb.http().expect("published port");

    let (before, after) = remove_one_of_four(&haproxy, http, &nodes, [1, 2, 3, 4]).await;
    let moved: Vec<usize> = (0..before.len()).filter(|&i| before[i] != after[i]).collect();
    let on_removed = before.iter().filter(|n| *n == "n2").count();
    let spread: Vec<usize> = (0..4).map(|i| before.iter().filter(|n| **n == format!("n{i}")).count()).collect();
    println!("stable ids: sites per node {spread:?}");
    println!("stable ids: {} of 200 on n2, {} moved", on_removed, moved.len());
    assert!(moved.iter().all(|&i| before[i] == "n2"), "only n2's sites move: {moved:?}");
    assert_eq!(moved.len(), on_removed, "every site of n2 moves");
    assert!(moved.len() <= 200 / 4 + 10, "at most 1/4 + 5%: {}", moved.len());

    // Without ids HAProxy numbers servers by position: n3 takes n2's number and its sites move too.
    let (before, after) = remove_one_of_four(&haproxy, http, &nodes, [0; 4]).await;
    let collateral = (0..before.len()).filter(|&i| before[i] != after[i] && before[i] != "n2").count();
    println!("positional ids: {collateral} sites of other nodes moved");
    assert!(collateral > 0, "positional ids were expected to move other nodes' sites");
}
