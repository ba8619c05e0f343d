//! Topology and map edits through the real CLI, followed on two real HAProxy hosts: a shard with
//! FQDNs is not deleted unless `--move-to` takes them; `import --prune` makes the map the file and
//! `--dry-run` changes nothing; a write with a stale `--if-version` is refused and changes
//! nothing. Without Docker these fail when `CI` is set and otherwise do nothing. Needs
//! `cargo build --bins` first.

use std::collections::BTreeMap;

use lbfleet_coordinator::ctl::client::Client;
use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::node_serving;
use lbfleet_tests::docker_lab::AgentOptions;
use lbfleet_tests::docker_lab::Fleet;
use lbfleet_tests::docker_lab::READY;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::agent_binary;
use lbfleet_tests::process::ClusterOptions;

const SHARD: &str = "web";

async fn two_host_fleet(test: &str) -> anyhow::Result<Fleet> {
    let hosts = [("lb-a", AgentOptions::default()), ("lb-b", AgentOptions::default())];
    Fleet::start(test, ClusterOptions::default(), &agent_binary(), SHARD, &hosts).await
}

/// Runs the CLI and fails with its output unless it succeeded; returns its stdout.
async fn cli_ok(fleet: &Fleet, args: &[&str]) -> anyhow::Result<String> {
    let ran = fleet.cli(args).await?;
    anyhow::ensure!(ran.ok, "lbfleet {} failed: {}{}", args.join(" "), ran.stdout, ran.stderr);
    Ok(ran.stdout)
}

/// Waits until HAProxy's map on every LB host is exactly `expected`.
async fn maps_become(fleet: &Fleet, expected: &BTreeMap<String, String>) -> anyhow::Result<()> {
    for host in &fleet.hosts {
        let what = format!("{}'s map to become {expected:?}", host.id);
        wait_for(&what, READY, || async { (host.lb.map().await.ok()? == *expected).then_some(()) }).await?;
    }
    Ok(())
}

/// HAProxy's map on every LB host, by host.
async fn maps(fleet: &Fleet) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut maps = BTreeMap::new();
    for host in &fleet.hosts {
        maps.insert(host.id.clone(), host.lb.map().await?);
    }
    Ok(maps)
}

/// The cluster's bindings as the coordinator holds them: FQDN → shard.
async fn bindings(fleet: &Fleet, client: &Client) -> anyhow::Result<BTreeMap<String, String>> {
    let view = client.cluster(&fleet.cluster, None).await?;
    Ok(view.bindings.into_iter().map(|b| (b.fqdn, b.shard)).collect())
}

fn entries(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(fqdn, value)| (fqdn.to_string(), value.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_with_fqdns_is_not_deleted_and_move_to_moves_them_on_every_host() -> anyhow::Result<()> {
    if !docker_available() {
        return Ok(());
    }
    let mut fleet = two_host_fleet("shard-delete").await?;
    let client = fleet.client().await?;
    fleet.add_nodes(&client, SHARD, &["node-0"]).await?;
    cli_ok(&fleet, &["shard", "create", "old", "--cluster", &fleet.cluster]).await?;
    let fqdns: Vec<String> = ["one", "two", "three"].iter().map(|n| format!("{n}.example.com")).collect();
    fleet.bind_all(&client, &fqdns, "old").await?;
    let on_old = entries(&fqdns.iter().map(|f| (f.as_str(), "shard-old")).collect::<Vec<_>>());
    maps_become(&fleet, &on_old).await?;

    let refused = fleet.cli(&["shard", "delete", "old"]).await?;
    println!("shard delete with bound FQDNs: {}", refused.stderr.trim());
    assert!(!refused.ok, "a shard with bound FQDNs was deleted: {}", refused.stdout);
    for fqdn in &fqdns {
        assert!(refused.stderr.contains(fqdn.as_str()), "the refusal does not name {fqdn}: {}", refused.stderr);
    }
    assert!(refused.stderr.contains("--move-to"), "the refusal does not say how to move them: {}", refused.stderr);
    let view = client.cluster(&fleet.cluster, None).await?;
    assert!(view.shards.iter().any(|s| s.name == "old"), "the refused delete removed the shard: {view:?}");
    assert_eq!(
        bindings(&fleet, &client).await?,
        entries(&fqdns.iter().map(|f| (f.as_str(), "old")).collect::<Vec<_>>())
    );

    cli_ok(&fleet, &["shard", "delete", "old", "--move-to", SHARD]).await?;
    maps_become(&fleet, &entries(&fqdns.iter().map(|f| (f.as_str(), "shard-web")).collect::<Vec<_>>())).await?;
    for host in &fleet.hosts {
        for fqdn in &fqdns {
            assert_eq!(node_serving(&host.lb, fqdn, SHARD).await?, "node-0", "{fqdn} through {}", host.id);
        }
        let what = format!("backend shard-old gone from {}", host.id);
        wait_for(&what, READY, || async {
            let servers = host.lb.admin("show stat").await.ok()?;
            (!servers.lines().any(|line| line.starts_with("shard-old,"))).then_some(())
        })
        .await?;
    }
    let view = client.cluster(&fleet.cluster, None).await?;
    assert!(view.shards.iter().all(|s| s.name != "old"), "shard old is still there: {view:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_prune_and_dry_run_and_a_stale_if_version_on_two_hosts() -> anyhow::Result<()> {
    if !docker_available() {
        return Ok(());
    }
    let mut fleet = two_host_fleet("import").await?;
    let client = fleet.client().await?;
    fleet.add_nodes(&client, SHARD, &["node-0"]).await?;
    cli_ok(&fleet, &["shard", "create", "blue", "--cluster", &fleet.cluster]).await?;
    fleet.add_nodes(&client, "blue", &["blue-0"]).await?;
    let before: Vec<String> =
        ["keep-1", "keep-2", "move-1", "drop-1", "drop-2"].iter().map(|n| format!("{n}.example.com")).collect();
    fleet.bind_all(&client, &before, SHARD).await?;
    let file = fleet.lab.dir().join("fqdn-to-shard.map");
    let wanted = entries(&[
        ("keep-1.example.com", "shard-web"),
        ("keep-2.example.com", "shard-web"),
        ("move-1.example.com", "shard-blue"),
        ("new-1.example.com", "shard-blue"),
        ("new-2.example.com", "shard-web"),
    ]);
    let text: String = wanted.iter().map(|(fqdn, backend)| format!("{fqdn} {backend}\n")).collect();
    std::fs::write(&file, format!("# the map as it should be\n{text}"))?;
    let file = file.to_str().expect("a UTF-8 temp path").to_owned();

    // --dry-run: the plan, and nothing written: same version, same maps.
    let version = client.cluster(&fleet.cluster, None).await?.version;
    let maps_before = maps(&fleet).await?;
    let plan = cli_ok(&fleet, &["import", &file, "--cluster", &fleet.cluster, "--prune", "--dry-run"]).await?;
    println!("import --prune --dry-run:\n{}", plan.trim_end());
    for line in ["add    new-1.example.com", "add    new-2.example.com", "move   move-1.example.com"] {
        assert!(plan.contains(line), "the plan lacks {line:?}:\n{plan}");
    }
    for line in ["remove drop-1.example.com", "remove drop-2.example.com"] {
        assert!(plan.contains(line), "the plan lacks {line:?}:\n{plan}");
    }
    assert_eq!(client.cluster(&fleet.cluster, None).await?.version, version, "--dry-run wrote to the state");
    assert_eq!(maps(&fleet).await?, maps_before, "--dry-run changed a map");

    // --prune: the maps become the file on both hosts, and the names route where it says.
    let report = cli_ok(&fleet, &["--json", "import", &file, "--cluster", &fleet.cluster, "--prune"]).await?;
    let report: serde_json::Value = serde_json::from_str(&report)?;
    println!("import --prune: {report}");
    let (added, moved, removed) = (&report["added"], &report["moved"], &report["removed"]);
    assert_eq!((added.as_u64(), moved.as_u64(), removed.as_u64()), (Some(2), Some(1), Some(2)), "{report}");
    let imported = report["version"].as_u64().ok_or_else(|| anyhow::anyhow!("no version in {report}"))?;
    fleet.wait_applied(&client, imported).await?;
    maps_become(&fleet, &wanted).await?;
    for host in &fleet.hosts {
        assert_eq!(node_serving(&host.lb, "move-1.example.com", "blue").await?, "blue-0");
        assert_eq!(node_serving(&host.lb, "keep-1.example.com", SHARD).await?, "node-0");
    }

    // --if-version: a version read before another write is stale; the write is refused and changes nothing.
    let read = client.cluster(&fleet.cluster, None).await?.version;
    cli_ok(&fleet, &["bind", "late.example.com", SHARD, "--wait"]).await?;
    let stale = fleet.cli(&["--if-version", &read.to_string(), "bind", "stale.example.com", SHARD, "--wait"]).await?;
    println!("bind with a stale --if-version {read}: {}", stale.stderr.trim());
    assert!(!stale.ok, "a write with a stale --if-version was applied: {}", stale.stdout);
    assert!(stale.stderr.contains("version"), "the refusal does not speak of versions: {}", stale.stderr);
    let current = client.cluster(&fleet.cluster, None).await?.version;
    fleet.wait_applied(&client, current).await?;
    let mut expected = wanted.clone();
    expected.insert("late.example.com".into(), "shard-web".into());
    assert_eq!(maps(&fleet).await?.into_values().collect::<Vec<_>>(), [expected.clone(), expected.clone()]);
    assert!(!bindings(&fleet, &client).await?.contains_key("stale.example.com"));
    // The same write at the current version goes through: the refusal was about the version.
    cli_ok(&fleet, &["--if-version", &current.to_string(), "bind", "stale.example.com", SHARD, "--wait"]).await?;
    expected.insert("stale.example.com".into(), "shard-web".into());
    maps_become(&fleet, &expected).await?;
    Ok(())
}
