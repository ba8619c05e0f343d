//! `lbfleet node drain --wait`, `node maint` and `node ready` through the real CLI against real
//! HAProxy and nginx containers on two LB hosts: a slow request in flight on the drained node
//! finishes with its whole body, new requests for its FQDNs go to the other nodes meanwhile, and
//! `--wait` returns once its sessions are gone, not before. Without Docker these fail when `CI`
//! is set and otherwise do nothing. Needs `cargo build --bins` first.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use lbfleet_proto::pb;
use lbfleet_tests::compose_fleet::run;
use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::http_get_path;
use lbfleet_tests::docker_lab::node_serving;
use lbfleet_tests::docker_lab::wait_servers;
use lbfleet_tests::docker_lab::AgentOptions;
use lbfleet_tests::docker_lab::Fleet;
use lbfleet_tests::docker_lab::ServerStat;
use lbfleet_tests::process::agent_binary;
use lbfleet_tests::process::ClusterOptions;

const SHARD: &str = "web";
const BACKEND: &str = "shard-web";
const NODES: &[&str] = &["node-0", "node-1", "node-2"];
/// `/slow` at 40 KB/s: its 512 KiB take about 13 s, long enough to drain while it runs.
const SLOW_PATH: &str = "/slow?rate=40k";
/// The size of `/slow`'s body (the node image's `slow.bin`).
const SLOW_BYTES: usize = 512 * 1024;
/// How much earlier than the test sees the slow request's last byte HAProxy may count its session
/// gone: the test's own wake-up, not a drain that returns early (that would be seconds early).
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// `/slow`'s body as the node image makes it: "slow.NNNNN" padded with dots to 63, a newline.
fn slow_body() -> String {
    (0..SLOW_BYTES / 64).map(|i| format!("{:.<63}\n", format!("slow.{i:05}"))).collect()
}

fn status_of<'a>(servers: &'a [ServerStat], node: &str) -> &'a str {
    servers.iter().find(|s| s.server == node).map_or("", |s| s.status.as_str())
}

/// The replicated admin state of `node`.
async fn admin_of(fleet: &Fleet, client: &lbfleet_coordinator::ctl::client::Client, node: &str) -> anyhow::Result<i32> {
    let view = client.cluster(&fleet.cluster, None).await?;
    let found = view.nodes.iter().find(|n| n.name == node);
    Ok(found.ok_or_else(|| anyhow::anyhow!("no node {node} in {view:?}"))?.admin)
}

/// Waits until `node` has `status` (a prefix: `DRAIN`, `MAINT`, `UP`) on every LB host of the fleet.
async fn on_every_host(fleet: &Fleet, node: &str, status: &'static str) -> anyhow::Result<()> {
    for host in &fleet.hosts {
        let what = format!("{node} {status}");
        wait_servers(&host.lb, BACKEND, &what, |servers| status_of(servers, node).starts_with(status)).await?;
    }
    Ok(())
}

/// Every FQDN of `fqdns` is served, through every LB host, by a node other than `node`.
async fn served_elsewhere(fleet: &Fleet, fqdns: &[String], node: &str) -> anyhow::Result<()> {
    for host in &fleet.hosts {
        for fqdn in fqdns {
            let serving = node_serving(&host.lb, fqdn, SHARD).await?;
            assert_ne!(serving, node, "{fqdn} still goes to {node} through {}", host.id);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_request_in_flight_and_sends_new_ones_elsewhere_then_maint_and_ready() -> anyhow::Result<()>
{
    if !docker_available() {
        return Ok(());
    }
    let hosts = [("lb-a", AgentOptions::default()), ("lb-b", AgentOptions::default())];
    let mut fleet = Fleet::start("drain", ClusterOptions::default(), &agent_binary(), SHARD, &hosts).await?;
    let client = fleet.client().await?;
    fleet.add_nodes(&client, SHARD, NODES).await?;
    let fqdns: Vec<String> = (0..30).map(|i| format!("shop-{i:02}.example.com")).collect();
    fleet.bind_all(&client, &fqdns, SHARD).await?;
    for host in &fleet.hosts {
        wait_servers(&host.lb, BACKEND, "three nodes UP", |s| NODES.iter().all(|n| status_of(s, n) == "UP")).await?;
    }
    let lb_a = &fleet.host("lb-a").lb;
    let mut placed = BTreeMap::new();
    for fqdn in &fqdns {
        placed.insert(fqdn.clone(), node_serving(lb_a, fqdn, SHARD).await?);
    }
    let drained = placed[&fqdns[0]].clone();
    let its_fqdns: Vec<String> = fqdns.iter().filter(|f| placed[*f] == drained).cloned().collect();

    // A slow request to the node, through lb-a; in flight once HAProxy counts its session.
    let (addr, target) = (lb_a.http()?, its_fqdns[0].clone());
    let slow_started = Instant::now();
    let slow = tokio::spawn(async move {
        let answer = http_get_path(addr, &target, SLOW_PATH, Duration::from_secs(90)).await;
        (answer, Instant::now())
    });
    wait_servers(lb_a, BACKEND, "the slow request in flight", |servers| {
        servers.iter().any(|s| s.server == drained && s.sessions >= 1)
    })
    .await?;

    let drain_started = Instant::now();
    let drain_command = fleet.cli_command(&["--timeout", "90", "node", "drain", &drained, "--wait"]);
    let drain = tokio::spawn(async move {
        let ran = run(drain_command, Duration::from_secs(120)).await;
        (ran, Instant::now())
    });
    on_every_host(&fleet, &drained, "DRAIN").await?;
    served_elsewhere(&fleet, &its_fqdns, &drained).await?;
    assert_eq!(admin_of(&fleet, &client, &drained).await?, pb::AdminState::AdminDrain as i32);
    let checked = slow_started.elapsed();
    assert!(
        !drain.is_finished(),
        "`node drain --wait` returned while the slow request was in flight (slow request done: {}, {checked:?} in)",
        slow.is_finished()
    );

    let (answer, slow_done) = slow.await?;
    let answer = answer?;
    assert_eq!(answer.status, 200, "{:?}", answer.headers);
    assert_eq!(answer.header("x-served-by"), Some(drained.as_str()));
    assert_eq!(answer.body.len(), SLOW_BYTES, "the slow request's body was cut");
    assert!(answer.body == slow_body(), "the slow request's body is not /slow's content");
    let (ran, drain_done) = drain.await?;
    let ran = ran?;
    println!(
        "drain: slow request {:?} long; `node drain --wait` started {:?} into it, returned {:?} after it ended \
         (checks done {checked:?} in): {}",
        slow_done - slow_started,
        drain_started - slow_started,
        drain_done.saturating_duration_since(slow_done),
        ran.stdout.trim()
    );
    assert!(ran.ok, "node drain --wait failed: {}{}", ran.stdout, ran.stderr);
    assert!(
        drain_done + CLOSE_GRACE >= slow_done,
        "`node drain --wait` returned {:?} before the slow request ended",
        slow_done - drain_done
    );
    served_elsewhere(&fleet, &its_fqdns, &drained).await?;

    // maint: out of service on every host; ready: back, with its own FQDNs again.
    let maint = fleet.cli(&["node", "maint", &drained]).await?;
    assert!(maint.ok, "node maint failed: {}{}", maint.stdout, maint.stderr);
    on_every_host(&fleet, &drained, "MAINT").await?;
    assert_eq!(admin_of(&fleet, &client, &drained).await?, pb::AdminState::AdminMaint as i32);
    served_elsewhere(&fleet, &its_fqdns, &drained).await?;
    let ready = fleet.cli(&["node", "ready", &drained]).await?;
    assert!(ready.ok, "node ready failed: {}{}", ready.stdout, ready.stderr);
    on_every_host(&fleet, &drained, "UP").await?;
    assert_eq!(admin_of(&fleet, &client, &drained).await?, pb::AdminState::AdminReady as i32);
    for host in &fleet.hosts {
        for fqdn in &fqdns {
            let serving = node_serving(&host.lb, fqdn, SHARD).await?;
            assert_eq!(serving, placed[fqdn], "{fqdn} through {} after `node ready`", host.id);
        }
    }
    Ok(())
}
