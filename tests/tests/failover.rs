//! Clients keep writing through a 3-node group when the leader is killed or frozen (SIGSTOP:
//! it keeps its sockets and answers nothing), wherever that node stands in `--endpoints`, and
//! `lbfleet status` answers within `--timeout`, naming the node that does not answer.

use std::time::Duration;
use std::time::Instant;

use lbfleet_coordinator::ctl::client::Client;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_tests::process::lbfleet_binary;
use lbfleet_tests::process::ProcessCluster;

/// The clients' `--timeout`: a call that hung on the failed node would take this long.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Well under TIMEOUT, well over Raft's election timeout (at most 0.8 s) plus the client's
/// own attempt deadline (2 s): generous for a busy machine, short of a hang.
const FAILOVER_BOUND: Duration = Duration::from_secs(7);

enum Fault {
    Kill,
    Freeze,
}

async fn setup() -> anyhow::Result<(ProcessCluster, usize)> {
    let cluster = ProcessCluster::start(3)?;
    let client = cluster.client().await?;
    client
        .write(Kind::CreateCluster(pb::CreateCluster { name: "c1".into(), haproxy_container: String::new() }))
        .await?;
    client.write(Kind::CreateShard(pb::CreateShard { name: "web-1".into(), cluster: "c1".into() })).await?;
    let index = cluster.leader_index(&client).await?;
    Ok((cluster, index))
}

fn bind(fqdn: &str) -> Kind {
    Kind::Bind(pb::Bind { fqdn: fqdn.into(), shard: "web-1".into(), cluster: String::new() })
}

/// `endpoints` with the one at `first` moved to the front.
fn with_first(endpoints: Vec<String>, first: usize) -> Vec<String> {
    let mut ordered = vec![endpoints[first].clone()];
    ordered.extend(endpoints.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, e)| e.clone()));
    ordered
}

/// Runs `lbfleet --json status` against `endpoints` and returns its nodes and how long it took.
fn status_nodes(cluster: &ProcessCluster, endpoints: &[String]) -> anyhow::Result<(serde_json::Value, Duration)> {
    let started = Instant::now();
    let output = std::process::Command::new(lbfleet_binary())
        .args(["--endpoints", &endpoints.join(","), "--timeout", "3", "--json", "status"])
        .arg("--tls-dir")
        .arg(&cluster.tls_dir)
        .output()?;
    let took = started.elapsed();
    anyhow::ensure!(output.status.success(), "status failed: {}", String::from_utf8_lossy(&output.stderr));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok((status["nodes"].clone(), took))
}

async fn writes_survive(fault: Fault) -> anyhow::Result<()> {
    let (mut cluster, leader) = setup().await?;
    let tls = cluster.tls();
    let failed_first = with_first(cluster.endpoints(), leader);
    // A client that already talks to the leader when it fails.
    let holding = Client::connect(&failed_first, &tls, None, TIMEOUT).await?;
    assert_eq!(holding.endpoint(), cluster.endpoint(leader));

    match fault {
        Fault::Kill => cluster.kill(leader),
        Fault::Freeze => cluster.freeze(leader),
    }

    let started = Instant::now();
    let reply = holding.write(bind("held.example.com")).await?;
    let took = started.elapsed();
    println!("write through the client that held the failed leader: {took:?} ({})", reply.message);
    assert!(took < FAILOVER_BOUND, "the write took {took:?}");

    // A new client with the failed node first in --endpoints.
    let started = Instant::now();
    let fresh = Client::connect(&failed_first, &tls, None, TIMEOUT).await?;
    let reply = fresh.write(bind("fresh.example.com")).await?;
    let took = started.elapsed();
    println!("connect + write of a new client, failed node first: {took:?} ({})", reply.message);
    assert!(took < FAILOVER_BOUND, "connect and write took {took:?}");
    assert_ne!(fresh.endpoint(), cluster.endpoint(leader));

    // Sent again, a bind is a bind.
    let again = fresh.write(bind("fresh.example.com")).await?;
    assert!(again.message.contains("already bound"), "{}", again.message);

    let (nodes, took) = status_nodes(&cluster, &failed_first)?;
    println!("lbfleet status: {took:?}");
    assert!(took < Duration::from_secs(3) + Duration::from_secs(3), "status took {took:?}");
    let failed_id = cluster.node_id(leader);
    let failed = nodes.as_array().and_then(|n| n.iter().find(|n| n["id"] == failed_id)).cloned().unwrap_or_default();
    assert_eq!(failed["reachable"], false, "status nodes: {nodes}");

    if let Fault::Freeze = fault {
        cluster.thaw(leader);
    }
    let view = cluster.client().await?.cluster("c1", None).await?;
    let bound: Vec<&str> = view.bindings.iter().map(|b| b.fqdn.as_str()).collect();
    assert_eq!(bound, ["fresh.example.com", "held.example.com"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_killed_leader() -> anyhow::Result<()> {
    writes_survive(Fault::Kill).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_frozen_leader() -> anyhow::Result<()> {
    writes_survive(Fault::Freeze).await
}
