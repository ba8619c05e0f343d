//! Reloads under load against real HAProxy and nginx containers: wrk keeps 32 keep-alive
//! connections busy while five node changes each reload HAProxy; not one request may fail
//! (socket errors included), every binding added through the runtime API stays in HAProxy's
//! map, a node in maint stays MAINT and a stopped node stays DOWN in every new worker. Without
//! Docker or wrk these fail when `CI` is set and otherwise do nothing. Needs `cargo build --bins`.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::node_serving;
use lbfleet_tests::docker_lab::wait_servers;
use lbfleet_tests::docker_lab::wrk_available;
use lbfleet_tests::docker_lab::AgentOptions;
use lbfleet_tests::docker_lab::Fleet;
use lbfleet_tests::docker_lab::HaproxyBox;
use lbfleet_tests::docker_lab::NodeAddress;
use lbfleet_tests::docker_lab::ServerStat;
use lbfleet_tests::docker_lab::READY;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::agent_binary;
use lbfleet_tests::process::ClusterOptions;
use lbfleet_tests::wrk::host_rotation_script;
use lbfleet_tests::wrk::WrkLoad;
use lbfleet_tests::wrk::WrkRun;

const SHARD: &str = "web";
const BACKEND: &str = "shard-web";
const NODES: &[&str] = &["node-0", "node-1", "node-2", "node-3"];
const MAINT: &str = "node-1";
const STOPPED: &str = "node-2";
/// The shard whose nodes come and go; each change is a reload of the whole HAProxy.
const CHURN_SHARD: &str = "churn";
/// wrk's bound: it is stopped earlier, once the reloads are done.
const WRK_LIMIT: Duration = Duration::from_secs(120);
/// A request without an answer this long counts as failed (wrk's `--timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Load before the first change.
const LOAD_BEFORE: Duration = Duration::from_secs(2);
/// Load after the last reload: longer than REQUEST_TIMEOUT, so a request stuck in a reload is
/// counted as a timeout before wrk stops (wrk does not count what is in flight when it stops).
const LOAD_AFTER: Duration = Duration::from_secs(8);
/// How long a new worker may take to show the maint state (the agent may reassert it).
const MAINT_SETTLES: Duration = Duration::from_secs(5);

fn status_of<'a>(servers: &'a [ServerStat], node: &str) -> &'a str {
    servers.iter().find(|s| s.backend == BACKEND && s.server == node).map_or("", |s| s.status.as_str())
}

/// One config change: a churn node added or removed.
enum Change {
    Add(&'static str),
    Remove(&'static str),
}

/// Waits for the worker that replaces `old_worker` to answer the admin socket; returns its PID.
async fn new_worker(lb: &HaproxyBox, old_worker: u32) -> anyhow::Result<u32> {
    wait_for("a reload (a new HAProxy worker)", READY, || async {
        let worker = lb.worker_pid().await.ok()?;
        (worker != old_worker && lb.answering_pid().await.ok()? == worker).then_some(worker)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_reloads_under_keep_alive_load_fail_no_request_and_keep_bindings_and_states() -> anyhow::Result<()> {
    if !docker_available() || !wrk_available() {
        return Ok(());
    }
    let mut fleet = Fleet::start(
        "reloads",
        ClusterOptions::default(),
        &agent_binary(),
        SHARD,
        &[("lb-a", AgentOptions::default())],
    )
    .await?;
    let client = fleet.client().await?;
    // By address: a stopped container's name would stop resolving and HAProxy would put its
    // server in MAINT (resolution) after a while, hiding whether DOWN survived the reloads.
    fleet.add_nodes_with(&client, SHARD, NODES, NodeAddress::Ip).await?;
    let churn = ["churn-0", "churn-1", "churn-2"];
    let create = pb::CreateShard { name: CHURN_SHARD.into(), cluster: fleet.cluster.clone() };
    client.write(Kind::CreateShard(create)).await?;
    // Every container is started before one is stopped: a new one could take the stopped one's address.
    let mut churn_containers = BTreeMap::new();
    for node in churn {
        churn_containers.insert(node, fleet.lab.start_node(node, CHURN_SHARD)?);
    }

    // Bindings made while the config is live go through the runtime API (and the map file).
    let mut fqdns: Vec<String> = (0..60).map(|i| format!("app-{i:02}.example.com")).collect();
    fleet.bind_all(&client, &fqdns, SHARD).await?;
    let lb = &fleet.host("lb-a").lb;
    wait_servers(lb, BACKEND, "four nodes UP", |s| NODES.iter().all(|n| status_of(s, n) == "UP")).await?;
    let mut by_node: BTreeMap<String, String> = BTreeMap::new();
    for fqdn in &fqdns {
        let node = node_serving(lb, fqdn, SHARD).await?;
        by_node.entry(node).or_insert_with(|| fqdn.clone());
    }
    let missing: Vec<&&str> = NODES.iter().filter(|n| !by_node.contains_key(**n)).collect();
    assert!(missing.is_empty(), "no FQDN of 60 is served by {missing:?}: {by_node:?}");

    let maint = fleet.cli(&["node", "maint", MAINT]).await?;
    assert!(maint.ok, "node maint failed: {}{}", maint.stdout, maint.stderr);
    fleet.lab.stop(&format!("{}-{STOPPED}", fleet.lab.prefix))?;
    wait_servers(lb, BACKEND, "node-1 MAINT and node-2 DOWN", |s| {
        status_of(s, MAINT) == "MAINT" && status_of(s, STOPPED) == "DOWN"
    })
    .await?;

    // wrk asks for one FQDN of each node in turn: those of the maint and the stopped node are
    // served by the others, unless a reload forgets their state.
    let script = fleet.lab.dir().join("rotate.lua");
    std::fs::write(&script, host_rotation_script(&by_node.values().cloned().collect::<Vec<_>>()))?;
    // Bounded by WRK_LIMIT; stopped once the reloads are done and LOAD_AFTER has passed.
    let load = WrkLoad { threads: 2, connections: 32, duration: WRK_LIMIT, timeout: REQUEST_TIMEOUT };
    let wrk_started = Instant::now();
    let mut wrk = WrkRun::start(lb.http()?, &load, &script)?;
    // Every connection open and busy first, so the reloads meet keep-alive connections in use.
    tokio::time::sleep(LOAD_BEFORE).await;

    let changes = [
        Change::Add("churn-0"),
        Change::Add("churn-1"),
        Change::Remove("churn-0"),
        Change::Add("churn-2"),
        Change::Remove("churn-1"),
    ];
    let mut worker = lb.worker_pid().await?;
    let mut reload_times = Vec::new();
    for (index, change) in changes.iter().enumerate() {
        let began = Instant::now();
        let command = match change {
            Change::Add(node) => Kind::AddNode(pb::AddNode {
                name: node.to_string(),
                shard: CHURN_SHARD.into(),
                host: "lb-a".into(),
                address: format!("{}:80", churn_containers[node]),
                container: churn_containers[node].clone(),
            }),
            Change::Remove(node) => Kind::RemoveNode(pb::RemoveNode { name: node.to_string() }),
        };
        client.write(command).await?;
        worker = new_worker(lb, worker).await?;
        reload_times.push(began.elapsed());
        // The new worker's first view: the stopped node DOWN from the start (never UP, not even
        // until its checks fail), the maint node MAINT at once or within MAINT_SETTLES.
        let first = lb.servers().await?;
        assert!(
            status_of(&first, STOPPED).starts_with("DOWN"),
            "reload {} (worker {worker}): the stopped {STOPPED} is {:?}, not DOWN",
            index + 1,
            status_of(&first, STOPPED)
        );
        let settled = wait_for(&format!("{MAINT} MAINT after reload {}", index + 1), MAINT_SETTLES, || async {
            let servers = lb.servers().await.ok()?;
            (status_of(&servers, MAINT) == "MAINT").then_some(())
        })
        .await;
        settled.with_context(|| format!("the new worker {worker} lost {MAINT}'s maint state"))?;
        // And one more binding through the runtime API between reloads.
        let fqdn = format!("between-{index}.example.com");
        fleet.bind(&client, &fqdn, SHARD).await?;
        fqdns.push(fqdn);
    }
    let reloads_done = wrk_started.elapsed();
    tokio::time::sleep(LOAD_AFTER).await;
    assert!(!wrk.has_ended(), "the five reloads took {reloads_done:?}, longer than wrk's limit of {WRK_LIMIT:?}");
    let (report, output) = wrk.finish().await?;
    println!("wrk during five reloads (each {reload_times:?} from change to new worker):\n{output}");
    println!(
        "wrk totals: {} requests, {} req/s; socket errors: connect {}, read {}, write {}, timeout {}; non-2xx/3xx {}",
        report.requests,
        report.requests_per_sec,
        report.connect_errors,
        report.read_errors,
        report.write_errors,
        report.timeouts,
        report.non_2xx_3xx
    );
    assert!(report.requests > 0, "wrk completed no request:\n{output}");
    assert_eq!(report.failures(), 0, "requests failed across the reloads: {report:?}");

    // After the reloads: every binding in the map, and the states as they were, also as reported.
    let map = lb.map().await?;
    let lost: Vec<&String> = fqdns.iter().filter(|f| map.get(*f).map(String::as_str) != Some(BACKEND)).collect();
    assert!(lost.is_empty(), "{} bindings lost by the reloads: {lost:?}", lost.len());
    let servers = lb.servers().await?;
    assert_eq!(status_of(&servers, MAINT), "MAINT", "{servers:?}");
    assert!(status_of(&servers, STOPPED).starts_with("DOWN"), "{servers:?}");
    let reported = wait_for("lb-a to report the maint and the stopped node", READY, || async {
        let agent = client.status().await.ok()?.agents.into_iter().find(|a| a.host == "lb-a")?;
        let report = agent.report?;
        let of = |node: &str| report.servers.iter().find(|s| s.server == node).map(|s| s.status.clone());
        (of(MAINT)? == "MAINT" && of(STOPPED)?.starts_with("DOWN")).then_some(report)
    })
    .await?;
    println!(
        "agent lb-a: {} reloads for {} config changes; last reload: {:?}",
        reported.reloads,
        reported.config_changes,
        reported.has_last_reload.then_some(&reported.last_reload)
    );
    let last = reported.last_reload.as_ref().filter(|_| reported.has_last_reload);
    let last = last.ok_or_else(|| anyhow::anyhow!("lb-a reports no last reload after five: {reported:?}"))?;
    assert!(last.error.is_empty() && !last.reason.is_empty(), "lb-a's last reload: {last:?}");
    Ok(())
}
