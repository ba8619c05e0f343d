//! The coordinator's operators' listener on real processes: writes move the metrics by exactly
//! what was written, the exposition parses, and `/healthz` and `/readyz` follow the group.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_tests::docker_lab::http_get_path;
use lbfleet_tests::docker_lab::HttpAnswer;
use lbfleet_tests::openmetrics;
use lbfleet_tests::openmetrics::Exposition;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::lbfleet_binary;
use lbfleet_tests::process::ClusterOptions;
use lbfleet_tests::process::ProcessCluster;

/// Bound on one HTTP request to the listener (`/readyz` itself waits at most about 2 s).
const REQUEST: Duration = Duration::from_secs(10);
/// How long the group gets to settle after a change of membership or leader.
const SETTLE: Duration = Duration::from_secs(30);
/// Binds written between the two scrapes.
const BINDS: u64 = 7;
/// Binds written at once, to be folded into fewer log entries.
const CONCURRENT: u64 = 40;
/// `--snapshot-every` of the nodes: fewer entries than the test writes.
const SNAPSHOT_EVERY: u64 = 4;

async fn get(address: SocketAddr, path: &str) -> anyhow::Result<HttpAnswer> {
    http_get_path(address, "localhost", path, REQUEST).await
}

async fn scrape(address: SocketAddr) -> anyhow::Result<Exposition> {
    let answer = get(address, "/metrics").await?;
    anyhow::ensure!(answer.status == 200, "/metrics answered {}: {}", answer.status, answer.body);
    let content_type = answer.header("content-type").unwrap_or_default();
    anyhow::ensure!(content_type.starts_with("application/openmetrics-text"), "content type {content_type:?}");
    Ok(openmetrics::parse(&answer.body)?)
}

/// The count of writes of `kind` that ended with `result`, 0 before the first.
fn writes(exposition: &Exposition, kind: &str, result: &str) -> f64 {
    exposition.value("lbfleet_write_duration_seconds_count", &[("kind", kind), ("result", result)]).unwrap_or(0.0)
}

fn gauge(exposition: &Exposition, name: &str) -> f64 {
    exposition.value(name, &[]).unwrap_or_else(|| panic!("no {name} in the exposition"))
}

/// Waits until `/readyz` of `address` answers `status`; returns its body.
async fn readyz(address: SocketAddr, status: u16) -> anyhow::Result<String> {
    wait_for(&format!("/readyz of {address} to answer {status}"), SETTLE, || async {
        let answer = get(address, "/readyz").await.ok()?;
        (answer.status == status).then_some(answer.body)
    })
    .await
}

async fn write(client: &lbfleet_coordinator::ctl::client::Client, kind: Kind) -> anyhow::Result<u64> {
    Ok(client.write(kind).await?.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_move_the_leaders_metrics_and_readiness_follows_the_group() -> anyhow::Result<()> {
    // Snapshots every few entries, so that the writes below make every node build some.
    let options = ClusterOptions { metrics: true, snapshot_every: Some(SNAPSHOT_EVERY), ..ClusterOptions::default() };
    let mut cluster = ProcessCluster::start_with(3, options)?;
    let client = cluster.client().await?;
    let leader = cluster.leader_index(&client).await?;
    let mut addresses = Vec::new();
    for index in 0..cluster.size() {
        addresses.push(cluster.metrics_addr(index).await?);
    }
    for &address in &addresses {
        let health = get(address, "/healthz").await?;
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
        let ready = readyz(address, 200).await?;
        assert!(ready.starts_with("ready: leader "), "{ready}");
    }

    write(&client, Kind::CreateCluster(pb::CreateCluster { name: "web".into(), haproxy_container: String::new() }))
        .await?;
    write(&client, Kind::CreateShard(pb::CreateShard { name: "s1".into(), cluster: "web".into() })).await?;
    let before = scrape(addresses[leader]).await?;
    let entries_before = gauge_or_zero(&before, "lbfleet_group_commit_entry_commands_count");
    let mut version = 0;
    for i in 0..BINDS {
        let bind = pb::Bind { fqdn: format!("site-{i}.example.com"), shard: "s1".into(), cluster: String::new() };
        version = write(&client, Kind::Bind(bind)).await?;
    }
    let unknown = pb::Bind { fqdn: "lost.example.com".into(), shard: "nowhere".into(), cluster: String::new() };
    assert!(client.write(Kind::Bind(unknown)).await.is_err(), "a bind to an unknown shard is refused");
    let after = scrape(addresses[leader]).await?;

    assert_eq!(writes(&after, "bind", "ok") - writes(&before, "bind", "ok"), BINDS as f64);
    assert_eq!(writes(&after, "bind", "refused") - writes(&before, "bind", "refused"), 1.0);
    assert_eq!(writes(&after, "create_shard", "ok"), 1.0);
    // One client writing one command at a time: every write is a log entry of its own.
    let entries = gauge_or_zero(&after, "lbfleet_group_commit_entry_commands_count") - entries_before;
    assert_eq!(entries, BINDS as f64 + 1.0);

    // Concurrent writers share log entries; every command is counted in exactly one.
    let binds = (0..CONCURRENT).map(|i| {
        let bind = pb::Bind { fqdn: format!("shop-{i}.example.com"), shard: "s1".into(), cluster: String::new() };
        client.write(Kind::Bind(bind))
    });
    for result in futures::future::join_all(binds).await {
        result?;
    }
    let folded = scrape(addresses[leader]).await?;
    assert_eq!(writes(&folded, "bind", "ok") - writes(&after, "bind", "ok"), CONCURRENT as f64);
    let commands = gauge(&folded, "lbfleet_group_commit_entry_commands_sum")
        - gauge(&after, "lbfleet_group_commit_entry_commands_sum");
    assert_eq!(commands, CONCURRENT as f64);
    let entries = gauge(&folded, "lbfleet_group_commit_entry_commands_count")
        - gauge(&after, "lbfleet_group_commit_entry_commands_count");
    assert!((1.0..=CONCURRENT as f64).contains(&entries), "{entries} entries for {CONCURRENT} concurrent binds");

    assert_eq!(gauge(&after, "lbfleet_raft_is_leader"), 1.0);
    assert_eq!(gauge(&after, "lbfleet_raft_leader_id"), cluster.node_id(leader) as f64);
    assert!(gauge(&after, "lbfleet_raft_applied_index") >= version as f64);
    assert!(gauge(&after, "lbfleet_raft_commit_index") >= version as f64);
    assert_eq!(gauge(&after, "lbfleet_agents_connected"), 0.0);
    assert!(after.family("lbfleet_raft_snapshots_built").is_some_and(|f| f.kind == "counter"));
    let names: Vec<&str> = after.samples().flat_map(|s| s.labels.values()).map(String::as_str).collect();
    assert!(!names.iter().any(|v| v.contains("example.com")), "an FQDN in a label: {names:?}");

    for (index, &address) in addresses.iter().enumerate() {
        let exposition = scrape(address).await?;
        assert_eq!(gauge(&exposition, "lbfleet_raft_leader_id"), cluster.node_id(leader) as f64);
        assert_eq!(gauge(&exposition, "lbfleet_raft_is_leader"), f64::from(u8::from(index == leader)));
        assert_eq!(gauge(&exposition, "lbfleet_raft_term"), gauge(&after, "lbfleet_raft_term"));
        if index != leader {
            // Followers take no writes of their own: the leader measures forwarded ones.
            assert_eq!(writes(&exposition, "bind", "ok"), 0.0);
            let page = get(address, "/").await?;
            let leader_address = cluster.endpoint(leader);
            let pointer =
                format!("the agents stream to the leader, node {} at {leader_address}", cluster.node_id(leader));
            assert!(
                page.status == 200 && page.body.contains(&pointer),
                "a follower's page names the leader:\n{}",
                page.body
            );
        }
        // Every node builds its own snapshots, in the background.
        wait_for("a snapshot built", SETTLE, || async {
            let exposition = scrape(address).await.ok()?;
            let built = exposition.value("lbfleet_raft_snapshots_built_total", &[])?;
            let index = exposition.value("lbfleet_raft_snapshot_index", &[])?;
            (built >= 1.0 && index >= SNAPSHOT_EVERY as f64).then_some(())
        })
        .await?;
    }

    // A lone follower: its peers are gone, no leader is known, it is not ready but alive.
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    for index in (0..3).filter(|&i| i != follower) {
        cluster.kill(index);
    }
    let why = readyz(addresses[follower], 503).await?;
    assert_eq!(why, "not ready: no leader known\n");
    assert_eq!(get(addresses[follower], "/healthz").await?.status, 200);

    // Back together, every node is ready again, on its new listener.
    for index in (0..3).filter(|&i| i != follower) {
        cluster.restart(index)?;
        addresses[index] = cluster.metrics_addr(index).await?;
    }
    for &address in &addresses {
        readyz(address, 200).await?;
    }

    // A lone leader still believes it leads; no majority confirms it, so it is not ready.
    let client = cluster.client().await?;
    let leader = cluster.leader_index(&client).await?;
    for index in (0..3).filter(|&i| i != leader) {
        cluster.kill(index);
    }
    let why = readyz(addresses[leader], 503).await?;
    assert_eq!(why, "not ready: this node leads but no majority of the voters confirms it\n");
    Ok(())
}

fn gauge_or_zero(exposition: &Exposition, name: &str) -> f64 {
    exposition.value(name, &[]).unwrap_or(0.0)
}

#[test]
fn a_bad_metrics_address_is_refused_at_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(lbfleet_binary())
        .args(["coordinator", "run", "--node-id", "1", "--listen", "127.0.0.1:0", "--metrics-listen", "localhost:x"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-dir")
        .arg(dir.path().join("tls"))
        .output()
        .expect("run lbfleet");
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim(), "error: invalid metrics_listen \"localhost:x\": expected IP:PORT, e.g. 127.0.0.1:7480");
}
