//! The replicated history on a 3-node group of real coordinator processes: two admins with
//! certificates of their own bind and then move one FQDN, the second through a follower that
//! forwards the write; `lbfleet history --fqdn` run against each coordinator alone names them
//! in order. An admin certificate that asserts another identity is refused and records nothing.

use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lbfleet_coordinator::api::forward::ON_BEHALF_OF_KEY;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_proto::transport;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::lbfleet_binary;
use lbfleet_tests::process::ProcessCluster;
use lbfleet_tests::process::ADMIN;
use tonic::metadata::MetadataValue;

const FQDN: &str = "shop.example.com";
/// How long a follower may take to apply what the leader committed.
const REPLICATION_DEADLINE: Duration = Duration::from_secs(20);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the `lbfleet` binary with `args`.
fn lbfleet(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(lbfleet_binary()).args(args).stdin(Stdio::null()).output().context("cannot run lbfleet")
}

/// Runs `lbfleet` as `identity` against `endpoint` alone; it must succeed. Returns its stdout.
fn lbfleet_as(cluster: &ProcessCluster, identity: &str, endpoint: &str, args: &[&str]) -> anyhow::Result<String> {
    let tls = cluster.tls_dir.to_str().context("test paths are UTF-8")?;
    let mut all = vec!["--endpoints", endpoint, "--tls-dir", tls, "--identity", identity];
    all.extend_from_slice(args);
    let output = lbfleet(&all)?;
    anyhow::ensure!(
        output.status.success(),
        "lbfleet {} failed ({}): {}",
        all.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

fn credentials(cluster: &ProcessCluster, admin: &str) -> anyhow::Result<Arc<Credentials>> {
    let tls = cluster.tls();
    Ok(Credentials::client(&tls, &tls.admin_identity(Some(admin))?)?)
}

fn bind(shard: &str) -> Kind {
    Kind::Bind(pb::Bind { fqdn: FQDN.into(), shard: shard.into(), cluster: String::new() })
}

/// A write sent as `admin` straight to `endpoint`, claiming to act for `asserted`.
async fn write_asserting(
    cluster: &ProcessCluster,
    admin: &str,
    endpoint: &str,
    asserted: &str,
) -> anyhow::Result<tonic::Status> {
    let tls = credentials(cluster, admin)?;
    let mut client = transport::admin_client(transport::channel(endpoint, &tls)?);
    let write = pb::WriteRequest { command: Some(bind("web-2").into()), ..Default::default() };
    let mut request = transport::request(write, CALL_TIMEOUT);
    request.metadata_mut().insert(ON_BEHALF_OF_KEY, MetadataValue::try_from(asserted)?);
    match client.write(request).await {
        Ok(reply) => anyhow::bail!("{admin} acting as {asserted} was allowed to write: {:?}", reply.into_inner()),
        Err(status) => Ok(status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_names_each_admin_on_every_coordinator() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    let operator = cluster.client().await?;
    for kind in [
        Kind::CreateCluster(pb::CreateCluster { name: "eu".into(), haproxy_container: String::new() }),
        Kind::CreateShard(pb::CreateShard { name: "web-1".into(), cluster: "eu".into() }),
        Kind::CreateShard(pb::CreateShard { name: "web-2".into(), cluster: "eu".into() }),
    ] {
        operator.write(kind).await?;
    }
    let leader = cluster.leader_index(&operator).await?;
    let follower = (leader + 1) % cluster.size();

    // Two more operators, with certificates of the group's CA.
    let tls = cluster.tls_dir.to_str().context("test paths are UTF-8")?;
    let issued = lbfleet(&["pki", "init", "--dir", tls, "--admin", "alice", "bob"])?;
    anyhow::ensure!(issued.status.success(), "pki init: {}", String::from_utf8_lossy(&issued.stderr));

    // alice binds with the CLI, bob moves through a follower, which forwards to the leader.
    let bound = lbfleet_as(&cluster, "alice", &cluster.endpoint(leader), &["bind", FQDN, "web-1"])?;
    assert!(bound.contains("bound shop.example.com to shard web-1"), "{bound}");
    let bob = Client::open(&cluster.endpoint(follower), &credentials(&cluster, "bob")?, CALL_TIMEOUT).await?;
    let status = bob.status().await?;
    assert_ne!(status.node_id, status.current_leader, "bob must write through a follower");
    let moved = bob.write(bind("web-2")).await?;
    assert_eq!(moved.message, "moved shop.example.com from shard web-1 to shard web-2");

    // Only a coordinator may assert another identity: at the leader and at a follower alike.
    for endpoint in [cluster.endpoint(leader), cluster.endpoint(follower)] {
        let refused = write_asserting(&cluster, "alice", &endpoint, "admin:bob").await?;
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert_eq!(
            refused.message(),
            "admin:alice may not act as \"admin:bob\": only a coordinator's certificate may assert another identity"
        );
    }

    for index in 0..cluster.size() {
        let endpoint = cluster.endpoint(index);
        // A follower answers once it applied what it knew was committed: it may not know of bob's
        // move on the first ask.
        let history = wait_for(&format!("both changes in node {}'s history", index + 1), REPLICATION_DEADLINE, || {
            let endpoint = endpoint.clone();
            let cluster = &cluster;
            async move {
                let text = lbfleet_as(cluster, ADMIN, &endpoint, &["--json", "history", "--fqdn", FQDN]).ok()?;
                let history: serde_json::Value = serde_json::from_str(&text).ok()?;
                (history["records"].as_array()?.len() >= 2).then_some(history)
            }
        })
        .await?;
        assert_eq!(history["endpoint"], endpoint, "the node asked answers itself");
        let records = history["records"].as_array().context("records")?;
        let seen: Vec<(&str, &str, &str, &str, &str)> = records
            .iter()
            .map(|r| {
                let field = |name: &str| r[name].as_str().unwrap_or("?");
                (field("by"), field("action"), field("fqdn"), field("shard"), field("previous"))
            })
            .collect();
        assert_eq!(
            seen,
            [("admin:alice", "bind", FQDN, "web-1", ""), ("admin:bob", "move", FQDN, "web-2", "web-1")],
            "node {}: the refused writes must not be recorded",
            index + 1
        );
        assert_eq!(records[1]["version"].as_u64(), Some(moved.version));
        assert!(records[0]["at_unix_ms"].as_i64() <= records[1]["at_unix_ms"].as_i64());
        assert!(records[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", records[0]);

        let table = lbfleet_as(&cluster, ADMIN, &endpoint, &["history", "--fqdn", FQDN, "--since", "1h"])?;
        eprintln!("{table}");
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("TIME") && lines[0].contains("VERSION  BY"), "{table}");
        assert!(lines[1].contains("admin:alice") && lines[1].contains("bind"), "{table}");
        assert!(
            lines[2].contains("admin:bob") && lines[2].contains("shop.example.com -> web-2 (was web-1)"),
            "{table}"
        );
    }

    // The limit is a write like any other, recorded with its caller.
    lbfleet_as(&cluster, "alice", &cluster.endpoint(follower), &["history", "--set-limit", "500"])?;
    let text = lbfleet_as(&cluster, ADMIN, &cluster.endpoint(leader), &["--json", "history", "--cluster", "eu"])?;
    let history: serde_json::Value = serde_json::from_str(&text)?;
    eprintln!("{text}");
    assert_eq!(history["limit"], 500);
    let all = lbfleet_as(&cluster, ADMIN, &cluster.endpoint(leader), &["--json", "history"])?;
    let all: serde_json::Value = serde_json::from_str(&all)?;
    let last = all["records"].as_array().and_then(|r| r.last()).context("no records")?;
    assert_eq!((last["by"].as_str(), last["action"].as_str()), (Some("admin:alice"), Some("set history limit")));
    assert_eq!(history["records"][0]["by"], "admin:operator", "the topology was made by the test's operator");
    Ok(())
}
