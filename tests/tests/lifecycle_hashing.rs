//! Where FQDNs land when the nodes of a shard change, measured through real HAProxy and nginx
//! containers: a removed node moves only its own FQDNs (consistent hashing on stable server
//! ids), and a stopped node shows DOWN while the others serve its FQDNs. Without Docker these
//! fail when `CI` is set and otherwise do nothing. Needs `cargo build --bins` first.

use std::collections::BTreeMap;

use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::node_serving;
use lbfleet_tests::docker_lab::wait_servers;
use lbfleet_tests::docker_lab::AgentOptions;
use lbfleet_tests::docker_lab::Fleet;
use lbfleet_tests::docker_lab::HaproxyBox;
use lbfleet_tests::docker_lab::READY;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::agent_binary;
use lbfleet_tests::process::ClusterOptions;

const SHARD: &str = "web";
const BACKEND: &str = "shard-web";

async fn fleet(test: &str) -> anyhow::Result<Fleet> {
    Fleet::start(test, ClusterOptions::default(), &agent_binary(), SHARD, &[("lb-a", AgentOptions::default())]).await
}

fn sites(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("site-{i:03}.example.com")).collect()
}

/// Which node serves each FQDN through `lb` (`X-Served-By`).
async fn placement(lb: &HaproxyBox, fqdns: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut placed = BTreeMap::new();
    for fqdn in fqdns {
        placed.insert(fqdn.clone(), node_serving(lb, fqdn, SHARD).await?);
    }
    Ok(placed)
}

/// FQDNs per node, for the figures printed.
fn per_node(placed: &BTreeMap<String, String>) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for node in placed.values() {
        *counts.entry(node.as_str()).or_insert(0) += 1;
    }
    counts
}

fn all_up(nodes: &'static [&'static str]) -> impl Fn(&[lbfleet_tests::docker_lab::ServerStat]) -> bool {
    move |servers| {
        servers.len() == nodes.len()
            && nodes.iter().all(|node| servers.iter().any(|s| s.server == *node && s.status == "UP"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_one_of_four_nodes_moves_only_the_fqdns_it_served() -> anyhow::Result<()> {
    if !docker_available() {
        return Ok(());
    }
    const NODES: &[&str] = &["node-0", "node-1", "node-2", "node-3"];
    const REMAINING: &[&str] = &["node-0", "node-2", "node-3"];
    // The second of four: without a stable server id per node, the servers after it would be
    // renumbered and move FQDNs of their own.
    const REMOVED: &str = "node-1";
    let mut fleet = fleet("hashing").await?;
    let client = fleet.client().await?;
    fleet.add_nodes(&client, SHARD, NODES).await?;
    let fqdns = sites(200);
    fleet.bind_all(&client, &fqdns, SHARD).await?;
    let lb = &fleet.host("lb-a").lb;
    wait_servers(lb, BACKEND, "four nodes UP", all_up(NODES)).await?;
    let before = placement(lb, &fqdns).await?;

    let removed = fleet.cli(&["node", "remove", REMOVED, "--now"]).await?;
    assert!(removed.ok, "node remove --now failed: {}{}", removed.stdout, removed.stderr);
    wait_servers(lb, BACKEND, "the three other nodes UP, and only them", all_up(REMAINING)).await?;
    let after = placement(lb, &fqdns).await?;

    let changed: Vec<&String> = fqdns.iter().filter(|fqdn| before[*fqdn] != after[*fqdn]).collect();
    let on_removed = before.values().filter(|node| *node == REMOVED).count();
    let bound = fqdns.len() as f64 * (1.0 / NODES.len() as f64 + 0.05);
    println!(
        "consistent hashing: {} FQDNs on {} nodes, before {:?}; {REMOVED} removed (it served {on_removed}); \
         after {:?}; {} changed node (bound {bound:.0})",
        fqdns.len(),
        NODES.len(),
        per_node(&before),
        per_node(&after),
        changed.len()
    );
    assert!(on_removed > 0, "{REMOVED} served no FQDN before its removal: nothing was measured");
    let strays: Vec<String> = changed
        .iter()
        .filter(|fqdn| before[**fqdn] != REMOVED)
        .map(|fqdn| format!("{fqdn}: {} -> {}", before[*fqdn], after[*fqdn]))
        .collect();
    assert!(strays.is_empty(), "{} FQDNs moved that were not on {REMOVED}: {strays:?}", strays.len());
    assert!((changed.len() as f64) <= bound, "{} FQDNs changed node, more than {bound:.0}", changed.len());
    assert!(after.values().all(|node| node != REMOVED), "{REMOVED} still serves after its removal");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_shows_down_in_status_and_the_others_serve_its_fqdns() -> anyhow::Result<()> {
    if !docker_available() {
        return Ok(());
    }
    const NODES: &[&str] = &["node-0", "node-1", "node-2"];
    const STOPPED: &str = "node-1";
    let mut fleet = fleet("stopped").await?;
    let client = fleet.client().await?;
    fleet.add_nodes(&client, SHARD, NODES).await?;
    let fqdns = sites(40);
    fleet.bind_all(&client, &fqdns, SHARD).await?;
    let lb = &fleet.host("lb-a").lb;
    wait_servers(lb, BACKEND, "three nodes UP", all_up(NODES)).await?;
    let before = placement(lb, &fqdns).await?;
    let orphans: Vec<&String> = fqdns.iter().filter(|fqdn| before[*fqdn] == STOPPED).collect();
    assert!(!orphans.is_empty(), "{STOPPED} served none of {} FQDNs: {:?}", fqdns.len(), per_node(&before));

    fleet.lab.stop(&format!("{}-{STOPPED}", fleet.lab.prefix))?;
    // The agent's report, as the Status RPC carries it.
    let reported = wait_for(&format!("lb-a to report {STOPPED} DOWN"), READY, || async {
        let status = client.status().await.ok()?;
        let report = status.agents.into_iter().find(|a| a.host == "lb-a")?.report?;
        let server = report.servers.into_iter().find(|s| s.backend == BACKEND && s.server == STOPPED)?;
        server.status.starts_with("DOWN").then_some(server)
    })
    .await?;
    // And the operator's view: the CLI names the server and says it is down.
    let status = fleet.cli(&["status"]).await?;
    assert!(status.ok, "lbfleet status failed: {}", status.stderr);
    assert!(
        status.stdout.lines().any(|line| line.contains(STOPPED) && line.contains("DOWN")),
        "lbfleet status does not show {STOPPED} DOWN (the agent reports {reported:?}):\n{}",
        status.stdout
    );

    let after = placement(lb, &fqdns).await?;
    println!(
        "stopped node: {STOPPED} served {} of {} FQDNs; before {:?}, after {:?}",
        orphans.len(),
        fqdns.len(),
        per_node(&before),
        per_node(&after)
    );
    for fqdn in &fqdns {
        if before[fqdn] == STOPPED {
            assert_ne!(after[fqdn], STOPPED, "{fqdn} is still served by the stopped node");
        } else {
            assert_eq!(after[fqdn], before[fqdn], "{fqdn} moved although its node runs");
        }
    }
    Ok(())
}
