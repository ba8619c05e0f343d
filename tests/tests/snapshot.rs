//! `lbfleet snapshot save` from a running 3-node group (through a follower, with binds going
//! on), `lbfleet coordinator restore` into a new data dir, and the new group started on it:
//! every binding and the whole topology are there, it takes writes, and a node added with
//! `lbfleet members add` receives the state. A damaged snapshot file is refused and a restore
//! of it creates nothing; a restore never writes into a data dir that holds anything.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_coordinator::daemon::restore::RESTORED_VERSION_GAP;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_proto::tls::TlsDir;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::free_ports;
use lbfleet_tests::process::lbfleet_binary;
use lbfleet_tests::process::tail;
use lbfleet_tests::process::ProcessCluster;

const CLUSTERS: [&str; 2] = ["eu", "us"];
/// Binds sent one by one, and in one batch.
const SINGLE_BINDS: usize = 200;
const BATCH_BINDS: usize = 5_000;
/// Binds sent while the snapshot is taken.
const CONCURRENT_BINDS: usize = 100;
/// How long a restored node has to elect itself and answer.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A coordinator process outside a `ProcessCluster`; killed and reaped when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(node_id: u64, listen: &str, data_dir: &Path, tls_dir: &Path, log: PathBuf) -> anyhow::Result<Daemon> {
        let output = OpenOptions::new().create(true).append(true).open(&log)?;
        let child = Command::new(lbfleet_binary())
            .args(["coordinator", "run", "--node-id", &node_id.to_string(), "--listen", listen])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--tls-dir")
            .arg(tls_dir)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .context("cannot start lbfleet coordinator run")?;
        Ok(Daemon { child, log })
    }

    fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `lbfleet` binary with `args`.
fn lbfleet(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(lbfleet_binary()).args(args).stdin(Stdio::null()).output().context("cannot run lbfleet")
}

/// Runs `lbfleet --json ARGS`, which must succeed, and parses what it printed.
fn lbfleet_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let output = lbfleet(&all)?;
    anyhow::ensure!(
        output.status.success(),
        "lbfleet {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Runs `lbfleet ARGS`, which must fail, and returns its error output.
fn lbfleet_fails(args: &[&str]) -> anyhow::Result<String> {
    let output = lbfleet(args)?;
    anyhow::ensure!(!output.status.success(), "lbfleet {} succeeded: {}", args.join(" "), output.status);
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

fn path(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn bind(fqdn: String, shard: &str) -> Kind {
    Kind::Bind(pb::Bind { fqdn, shard: shard.into(), cluster: String::new() })
}

/// Two clusters with hosts, shards and nodes (one of them removed again), two revocations,
/// bindings written singly and in a batch, some moved and some unbound. Returns the last
/// version written.
async fn populate(client: &Client) -> anyhow::Result<u64> {
    let mut writes = vec![
        Kind::CreateCluster(pb::CreateCluster { name: "eu".into(), haproxy_container: String::new() }),
        Kind::CreateCluster(pb::CreateCluster { name: "us".into(), haproxy_container: "haproxy-us".into() }),
    ];
    for (host, cluster, container) in [("lb-1", "eu", ""), ("lb-2", "eu", "haproxy-lb-2"), ("lb-3", "us", "")] {
        writes.push(Kind::AddHost(pb::AddHost {
            id: host.into(),
            cluster: cluster.into(),
            address: format!("{host}.internal"),
            haproxy_container: container.into(),
        }));
    }
    for (shard, cluster) in [("web-1", "eu"), ("web-2", "eu"), ("web-3", "us")] {
        writes.push(Kind::CreateShard(pb::CreateShard { name: shard.into(), cluster: cluster.into() }));
    }
    for (node, shard, host, container) in [
        ("web-1-a", "web-1", "lb-1", "web-1-a"),
        ("web-1-b", "web-1", "lb-2", ""),
        ("web-2-a", "web-2", "lb-1", ""),
        ("web-3-a", "web-3", "lb-3", "web-3-a"),
        ("web-3-old", "web-3", "lb-3", ""),
    ] {
        writes.push(Kind::AddNode(pb::AddNode {
            name: node.into(),
            shard: shard.into(),
            host: host.into(),
            address: format!("{node}:80"),
            container: container.into(),
        }));
    }
    writes.push(Kind::RemoveNode(pb::RemoveNode { name: "web-3-old".into() }));
    writes.push(Kind::Revoke(pb::Revoke { host: "lb-retired".into(), serial: String::new() }));
    writes.push(Kind::Revoke(pb::Revoke { host: String::new(), serial: "4f2a01".into() }));
    for i in 0..SINGLE_BINDS {
        let shard = ["web-1", "web-2", "web-3"][i % 3];
        writes.push(bind(format!("single-{i}.example.com"), shard));
    }
    let mut version = 0;
    for write in writes {
        version = client.write(write).await?.version;
    }
    let entries = (0..BATCH_BINDS)
        .map(|i| pb::BindEntry { fqdn: format!("batch-{i}.example.net"), shard: "web-1".into() })
        .collect();
    client.write(Kind::BindBatch(pb::BindBatch { cluster: "eu".into(), entries })).await?;
    for i in 0..10 {
        client.write(bind(format!("batch-{i}.example.net"), "web-2")).await?;
        let unbind = pb::Unbind { fqdn: format!("single-{}.example.com", i * 3), cluster: String::new() };
        version = client.write(Kind::Unbind(unbind)).await?.version;
    }
    Ok(version)
}

/// Every cluster's view, without the version it was read at.
async fn views(client: &Client) -> anyhow::Result<BTreeMap<&'static str, pb::ClusterView>> {
    let mut views = BTreeMap::new();
    for name in CLUSTERS {
        let view = client.cluster(name, None).await?;
        views.insert(name, pb::ClusterView { version: 0, ..view });
    }
    Ok(views)
}

fn bindings(view: &pb::ClusterView) -> BTreeSet<(String, String)> {
    view.bindings.iter().map(|b| (b.fqdn.clone(), b.shard.clone())).collect()
}

/// A client of the node at `address` once it leads.
async fn leader_at(address: &str, tls: &TlsDir, daemon: &Daemon) -> anyhow::Result<Client> {
    let endpoints = [address.to_string()];
    let found = wait_for("the restored node to lead", START_DEADLINE, || async {
        let client = Client::connect(&endpoints, tls, None, Duration::from_secs(3)).await.ok()?;
        let status = client.status().await.ok()?;
        (status.has_leader && status.current_leader == status.node_id).then_some(client)
    })
    .await;
    found.with_context(|| format!("log of the restored node:\n{}", daemon.log_tail()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_running_group_restores_into_a_new_group() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    let client = cluster.client().await?;
    let written = populate(&client).await?;
    let before = views(&client).await?;
    let revoked = client.status().await?.revocations;
    assert_eq!(revoked.len(), 2);
    let leader = client.status().await?.current_leader;
    let follower = (0..cluster.size()).find(|&i| cluster.node_id(i) != leader).expect("3 nodes, 1 leader");

    // Saved through a follower, which relays the leader's stream, while binds go on.
    let file = cluster.dir.path().join("backup.lbfs");
    let concurrent = async {
        let mut acknowledged = BTreeSet::new();
        for i in 0..CONCURRENT_BINDS {
            let fqdn = format!("during-{i}.example.org");
            client.write(bind(fqdn.clone(), "web-2")).await?;
            acknowledged.insert((fqdn, "web-2".to_string()));
        }
        anyhow::Ok(acknowledged)
    };
    let save_args: Vec<String> = [
        "--endpoints",
        &cluster.endpoint(follower),
        "--tls-dir",
        path(&cluster.tls_dir),
        "snapshot",
        "save",
        path(&file),
    ]
    .map(String::from)
    .to_vec();
    let save =
        tokio::task::spawn_blocking(move || lbfleet_json(&save_args.iter().map(String::as_str).collect::<Vec<_>>()));
    let (during, saved) = tokio::join!(concurrent, save);
    let (during, saved) = (during?, saved??);
    println!("snapshot saved: {saved}");
    let version = saved["version"].as_u64().context("saved version")?;
    assert!(version >= written, "the snapshot (version {version}) misses acknowledged writes up to {written}");
    assert_eq!(saved["node_id"], leader, "the leader encodes the snapshot");
    assert_eq!(saved["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(saved["bytes"].as_u64(), std::fs::metadata(&file).ok().map(|m| m.len()));
    let verified = lbfleet_json(&["snapshot", "verify", path(&file)])?;
    assert_eq!(verified["version"], version);
    assert_eq!(verified["counts"], saved["counts"]);

    // Restored as node 1 of a new group, on a port of its own.
    let ports = free_ports(2)?;
    let (first, second) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]));
    let data_dir = cluster.dir.path().join("restored-1");
    let restored = lbfleet_json(&[
        "coordinator",
        "restore",
        "--from",
        path(&file),
        "--data-dir",
        path(&data_dir),
        "--node-id",
        "1",
        "--advertise",
        &first,
    ])?;
    assert_eq!(restored["version"].as_u64(), Some(version + RESTORED_VERSION_GAP));
    assert_eq!(restored["snapshot"]["version"], version);
    let started = Instant::now();
    let node = Daemon::start(1, &first, &data_dir, &cluster.tls_dir, cluster.dir.path().join("restored-1.log"))?;
    let tls = cluster.tls();
    let new_group = leader_at(&first, &tls, &node).await?;
    println!("restored node leads after {:?}", started.elapsed());

    let after = views(&new_group).await?;
    for name in CLUSTERS {
        let (old, new) = (&before[name], &after[name]);
        assert_eq!(
            pb::ClusterView { bindings: Vec::new(), ..old.clone() },
            pb::ClusterView { bindings: Vec::new(), ..new.clone() }
        );
        // Everything acknowledged before the save is there; of the binds during it, a prefix.
        let (old, new) = (bindings(old), bindings(new));
        assert!(new.is_superset(&old), "{name}: {} bindings missing", old.difference(&new).count());
        assert!(new.difference(&old).all(|b| during.contains(b)), "{name}: bindings from nowhere");
    }
    let total: usize = after.values().map(|v| v.bindings.len()).sum();
    assert_eq!(saved["counts"]["bindings"].as_u64(), Some(total as u64));
    assert_eq!(saved["counts"]["nodes"], 4);
    assert_eq!(saved["counts"]["revocations"], 2);
    assert_eq!(new_group.status().await?.revocations, revoked);

    // The new group takes writes, at versions above the restored one.
    let reply = new_group.write(bind("after-restore.example.com".into(), "web-3")).await?;
    assert!(reply.version > version + RESTORED_VERSION_GAP, "{reply:?}");

    // Grown the documented way: a node with an empty data dir, then `members add`.
    let joiner = Daemon::start(
        2,
        &second,
        &cluster.dir.path().join("restored-2"),
        &cluster.tls_dir,
        cluster.dir.path().join("restored-2.log"),
    )?;
    let member = format!("2={second}");
    let members =
        lbfleet_json(&["--endpoints", &first, "--tls-dir", path(&cluster.tls_dir), "members", "add", &member])?;
    assert_eq!(members["members"].as_array().map(|m| m.iter().filter(|m| m["voter"] == true).count()), Some(2));
    let joined = wait_for("the new member to apply the restored state", START_DEADLINE, || async {
        let status = Client::status_of(&second, new_group.tls(), Duration::from_secs(3)).await.ok()?;
        (status.applied_index >= reply.version).then_some(status)
    })
    .await
    .with_context(|| format!("log of the new member:\n{}", joiner.log_tail()))?;
    assert_eq!(joined.current_leader, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_refused_and_restores_nothing() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(1)?;
    let client = cluster.client().await?;
    client
        .write(Kind::CreateCluster(pb::CreateCluster { name: "eu".into(), haproxy_container: String::new() }))
        .await?;
    client.write(Kind::CreateShard(pb::CreateShard { name: "web-1".into(), cluster: "eu".into() })).await?;
    for i in 0..50 {
        client.write(bind(format!("site-{i}.example.com"), "web-1")).await?;
    }
    let dir = cluster.dir.path();
    let tls = path(&cluster.tls_dir);
    let endpoint = cluster.endpoint(0);
    let file = dir.join("good.lbfs");
    let save = ["--endpoints", &endpoint, "--tls-dir", tls, "snapshot", "save", path(&file)];
    lbfleet_json(&save)?;
    let good = std::fs::read(&file)?;

    // An existing file is kept unless --force.
    let error = lbfleet_fails(&save)?;
    assert!(error.contains("exists; give --force"), "{error}");
    assert_eq!(std::fs::read(&file)?, good);
    let mut forced = save.to_vec();
    forced.push("--force");
    lbfleet_json(&forced)?;
    let leftovers: Vec<_> = std::fs::read_dir(dir)?.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    assert!(!leftovers.iter().any(|name| name.contains(".tmp-")), "temp files left: {leftovers:?}");

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    let truncated = &good[..good.len() - 100];
    for (name, bytes, expected) in [
        ("flipped.lbfs", &flipped[..], "corrupted snapshot: its SHA-256 checksum does not match"),
        ("truncated.lbfs", truncated, "truncated snapshot"),
        ("empty.lbfs", &[][..], "truncated snapshot: 0 bytes"),
    ] {
        let damaged = dir.join(name);
        std::fs::write(&damaged, bytes)?;
        let error = lbfleet_fails(&["snapshot", "verify", path(&damaged)])?;
        assert!(error.contains(expected) && error.contains(name), "{name}: {error}");
        let data_dir = dir.join(format!("restore-{name}"));
        let error = lbfleet_fails(&[
            "coordinator",
            "restore",
            "--from",
            path(&damaged),
            "--data-dir",
            path(&data_dir),
            "--node-id",
            "1",
            "--advertise",
            "127.0.0.1:7400",
        ])?;
        assert!(error.contains(expected), "{name}: {error}");
        assert!(!data_dir.exists(), "{name}: a refused restore created {}", data_dir.display());
    }

    // A data dir that holds anything, here the running node's own, is not touched.
    let before: Vec<_> =
        std::fs::read_dir(cluster.data_dir(0))?.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
    let error = lbfleet_fails(&[
        "coordinator",
        "restore",
        "--from",
        path(&file),
        "--data-dir",
        path(cluster.data_dir(0)),
        "--node-id",
        "1",
        "--advertise",
        &endpoint,
    ])?;
    assert!(error.contains("is not empty"), "{error}");
    let after: Vec<_> = std::fs::read_dir(cluster.data_dir(0))?.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
    assert_eq!(before, after);
    assert_eq!(client.cluster("eu", None).await?.bindings.len(), 50);
    Ok(())
}
