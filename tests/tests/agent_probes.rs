//! The operator listeners and the agent's host probes against real HAProxy and nginx containers:
//! `/readyz` follows HAProxy's container, the agent's and the leader's `/metrics` (both parsed
//! strictly) count binds and a reload exactly, and
//! `bind --wait --verify` returns once every LB host served the FQDN from the bound shard, and
//! fails naming the host and both shards when a node of another shard answers. Without Docker
//! these fail when `CI` is set and otherwise do nothing. Needs `cargo build --bins`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::http_get_path;
use lbfleet_tests::docker_lab::wait_servers;
use lbfleet_tests::docker_lab::AgentOptions;
use lbfleet_tests::docker_lab::Fleet;
use lbfleet_tests::docker_lab::READY;
use lbfleet_tests::openmetrics;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::agent_binary;
use lbfleet_tests::process::ClusterOptions;

const SHARD: &str = "web";
const BACKEND: &str = "shard-web";
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// GET `path` from the agent's operator listener: status and body.
async fn ops_get(ops: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let answer = http_get_path(ops, "agent", path, HTTP_TIMEOUT).await?;
    Ok((answer.status, answer.body))
}

/// The agent's samples by `name{label="value",...}` (labels in name order), from an exposition
/// the strict parser accepted.
async fn scrape(ops: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let (status, body) = ops_get(ops, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
    let exposition = openmetrics::parse(&body).with_context(|| format!("exposition:\n{body}"))?;
    let series = |sample: &openmetrics::Sample| {
        let labels: Vec<String> = sample.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        match labels.is_empty() {
            true => sample.name.clone(),
            false => format!("{}{{{}}}", sample.name, labels.join(",")),
        }
    };
    Ok(exposition.samples().map(|sample| (series(sample), sample.value)).collect())
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

const RUNTIME_ADD_OK: &str = "lbfleet_agent_runtime_operations_total{op=\"add\",result=\"ok\"}";
const TOPOLOGY_RELOADS: &str = "lbfleet_agent_reloads_total{reason=\"topology\",result=\"ok\"}";
const TOPOLOGY_RELOAD_TIMES: &str = "lbfleet_agent_reload_duration_seconds_count{reason=\"topology\",result=\"ok\"}";
const CONFIG_CHANGES: &str = "lbfleet_agent_config_changes_total";
const RUNTIME_APPLIES: &str = "lbfleet_agent_apply_duration_seconds_count{stage=\"runtime\"}";
const FILE_WRITES: &str = "lbfleet_agent_apply_duration_seconds_count{stage=\"file\"}";
const BIND_PROBES_OK: &str = "lbfleet_agent_fqdn_probes_total{result=\"ok\",trigger=\"bind\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_binds_and_a_reload_and_readyz_follows_haproxy() -> anyhow::Result<()> {
    if !docker_available() {
        return Ok(());
    }
    let options = AgentOptions { metrics: true, ..AgentOptions::default() };
    let coordinators = ClusterOptions { metrics: true, ..ClusterOptions::default() };
    let mut fleet = Fleet::start("agent-metrics", coordinators, &agent_binary(), SHARD, &[("lb-a", options)]).await?;
    let client = fleet.client().await?;
    // Both daemons' expositions: the leader's (it takes the writes and serves the agents) and the agent's.
    let leader = fleet.coordinators.leader_index(&client).await?;
    let coordinator_ops = fleet.coordinators.metrics_addr(leader).await?;
    fleet.add_nodes(&client, SHARD, &["node-0"]).await?;
    let ops = fleet.host("lb-a").agent.ops_address().await?;
    assert_eq!(ops_get(ops, "/healthz").await?, (200, "ok\n".to_owned()));
    wait_for("the agent to be ready", READY, || async { (ops_get(ops, "/readyz").await.ok()?.0 == 200).then_some(()) })
        .await?;
    let lb = fleet.host("lb-a").lb.clone();
    wait_servers(&lb, BACKEND, "node-0 UP", |s| s.iter().any(|s| s.status.starts_with("UP"))).await?;

    let before = scrape(ops).await?;
    let coordinator_before = scrape(coordinator_ops).await?;
    let fqdns = ["m1.metrics.test", "m2.metrics.test", "m3.metrics.test"];
    for fqdn in fqdns {
        fleet.bind(&client, fqdn, SHARD).await?;
    }
    // A node added is a config change: one reload, for the topology.
    fleet.add_nodes(&client, SHARD, &["node-1"]).await?;
    let after = wait_for("the bind probes and node-1 in the metrics", READY, || async {
        let after = scrape(ops).await.ok()?;
        let probed = value(&after, BIND_PROBES_OK) - value(&before, BIND_PROBES_OK) >= 3.0;
        let up = "lbfleet_agent_server_up{backend=\"shard-web\",server=\"node-1\"}";
        (probed && value(&after, up) == 1.0).then_some(after)
    })
    .await
    .with_context(|| fleet.agent_logs())?;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(moved(RUNTIME_ADD_OK), 3.0, "one `add map` per bind");
    assert_eq!(moved(TOPOLOGY_RELOADS), 1.0);
    assert_eq!(moved(TOPOLOGY_RELOAD_TIMES), 1.0);
    assert_eq!(moved(CONFIG_CHANGES), 1.0);
    assert_eq!(moved(RUNTIME_APPLIES), 4.0, "three binds and the node's topology");
    assert!((1.0..=3.0).contains(&moved(FILE_WRITES)), "map file writes: {}", moved(FILE_WRITES));
    assert_eq!(moved(BIND_PROBES_OK), 3.0);
    assert_eq!(value(&after, "lbfleet_agent_map_entries"), 3.0);
    assert_eq!(value(&after, "lbfleet_agent_coordinator_connected"), 1.0);
    assert_eq!(value(&after, "lbfleet_agent_host_probe_ok{check=\"frontends\"}"), 1.0);
    assert_eq!(value(&after, "lbfleet_agent_host_probe_ok{check=\"container\"}"), 1.0);
    assert!(!after.keys().any(|series| series.contains("metrics.test")), "an FQDN in a label");

    let coordinator_after = scrape(coordinator_ops).await?;
    let written = |series: &str| value(&coordinator_after, series) - value(&coordinator_before, series);
    assert_eq!(written("lbfleet_write_duration_seconds_count{kind=\"bind\",result=\"ok\"}"), 3.0);
    assert_eq!(written("lbfleet_write_duration_seconds_count{kind=\"add_node\",result=\"ok\"}"), 1.0);
    let version = client.status().await?.applied_index as f64;
    let acked = format!("lbfleet_agent_acked_version{{cluster={:?},host=\"lb-a\"}}", fleet.cluster);
    assert_eq!(value(&coordinator_after, &acked), version, "the agent acknowledged every write");
    assert_eq!(value(&coordinator_after, "lbfleet_agents_connected"), 1.0);
    assert!(!coordinator_after.keys().any(|series| series.contains("metrics.test")), "an FQDN in a label");

    // HAProxy stopped: not ready, saying why. The agent starts it again on its own; `docker
    // start` covers the case where it has not yet.
    let container = lb.container.clone();
    let stop = tokio::process::Command::new("docker").args(["stop", "-t", "2", &container]).output();
    let stopping = tokio::spawn(stop);
    let why = wait_for("/readyz to turn 503 with HAProxy stopped", READY, || async {
        let (status, body) = ops_get(ops, "/readyz").await.ok()?;
        (status == 503).then_some(body)
    })
    .await?;
    assert!(why.contains("HAProxy"), "{why}");
    let stopped = stopping.await??;
    anyhow::ensure!(stopped.status.success(), "docker stop: {}", String::from_utf8_lossy(&stopped.stderr));
    lbfleet_tests::docker_lab::docker(&["start", &container])?;
    wait_for("/readyz to be 200 again", READY, || async {
        (ops_get(ops, "/readyz").await.ok()?.0 == 200).then_some(())
    })
    .await
    .with_context(|| fleet.agent_logs())?;
    fleet.host_mut("lb-a").agent.kill();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_verify_reports_each_hosts_probe_and_fails_on_a_wrong_shard() -> anyhow::Result<()> {
    if !docker_available() {
        return Ok(());
    }
    let hosts = [("lb-a", AgentOptions::default()), ("lb-b", AgentOptions::default())];
    let mut fleet = Fleet::start("agent-verify", ClusterOptions::default(), &agent_binary(), SHARD, &hosts).await?;
    let client = fleet.client().await?;
    fleet.add_nodes(&client, SHARD, &["node-0"]).await?;
    // A shard whose only node says it belongs to another one.
    client.write(Kind::CreateShard(pb::CreateShard { name: "wrong".into(), cluster: fleet.cluster.clone() })).await?;
    let liar = fleet.lab.start_node("liar", "other")?;
    let add = pb::AddNode {
        name: "liar".into(),
        shard: "wrong".into(),
        host: "lb-a".into(),
        address: format!("{liar}:80"),
        container: liar.clone(),
    };
    let version = client.write(Kind::AddNode(add)).await?.version;
    fleet.wait_applied(&client, version).await?;
    for host in &fleet.hosts {
        for backend in [BACKEND, "shard-wrong"] {
            wait_servers(&host.lb, backend, "every server UP", |s| {
                !s.is_empty() && s.iter().all(|s| s.status.starts_with("UP"))
            })
            .await?;
        }
    }

    let ran = fleet.cli(&["bind", "ok.verify.test", SHARD, "--verify"]).await?;
    anyhow::ensure!(ran.ok, "bind --verify failed:\n{}\n{}\n{}", ran.stdout, ran.stderr, fleet.agent_logs());
    for host in ["lb-a", "lb-b"] {
        let line = format!("{host}: served by node-0 (shard web, HTTP 200)");
        assert!(ran.stdout.contains(&line), "{line:?} missing in:\n{}", ran.stdout);
    }
    assert!(ran.stdout.contains("served from shard web on all 2 LB hosts"), "{}", ran.stdout);
    // Bound already: nothing changes and no probe comes by itself, so the hosts are asked for one.
    let ran = fleet.cli(&["bind", "ok.verify.test", SHARD, "--verify"]).await?;
    anyhow::ensure!(ran.ok, "bind --verify of an unchanged binding failed:\n{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("served from shard web on all 2 LB hosts"), "{}", ran.stdout);

    let ran = fleet.cli(&["bind", "liar.verify.test", "wrong", "--wait", "--verify"]).await?;
    assert!(!ran.ok, "bind --verify passed with a node of another shard:\n{}", ran.stdout);
    for host in ["lb-a", "lb-b"] {
        let said = format!("{host} served it from shard other (node liar), expected shard wrong");
        assert!(ran.stderr.contains(&said), "{said:?} missing in:\n{}", ran.stderr);
    }
    let status = wait_for("status to show the failed probe", READY, || async {
        let ran = fleet.cli(&["status"]).await.ok()?;
        let failed = "failed: liar.verify.test FAILED: served by shard other (node liar), expected wrong";
        ["lb-a", "lb-b"].iter().all(|h| ran.stdout.contains(&format!("{h}: {failed}"))).then_some(ran.stdout)
    })
    .await?;
    assert!(status.contains("lb-a: container ok, admin socket ok, frontends ok"), "{status}");
    for host in &mut fleet.hosts {
        host.agent.kill();
    }
    Ok(())
}
