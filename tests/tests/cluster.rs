//! In-process 3-node coordinator clusters: replication, failover, restart, snapshots, mTLS.

use std::collections::BTreeSet;
use std::time::Duration;

use lbfleet_coordinator::ctl::client::Client;
use lbfleet_coordinator::ctl::client::ClientError;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;
use lbfleet_tests::inproc::TestCluster;
use lbfleet_tests::inproc::WAIT;
use lbfleet_tests::poll::wait_for;

/// Creates cluster `c1` with shard `web-1`.
async fn topology(client: &Client) -> anyhow::Result<()> {
    client
        .write(Kind::CreateCluster(pb::CreateCluster { name: "c1".into(), haproxy_container: String::new() }))
        .await?;
    client.write(Kind::CreateShard(pb::CreateShard { name: "web-1".into(), cluster: "c1".into() })).await?;
    Ok(())
}

async fn bind(client: &Client, fqdn: &str) -> Result<pb::WriteReply, ClientError> {
    client.write(Kind::Bind(pb::Bind { fqdn: fqdn.into(), shard: "web-1".into(), cluster: String::new() })).await
}

/// The FQDNs bound in `c1` as node `id` has applied them (no leader involved).
fn bound_on(cluster: &TestCluster, id: u64) -> BTreeSet<String> {
    let applied = cluster.coordinator(id).shared.read();
    applied.state.clusters.get("c1").map(|c| c.bindings.keys().map(|f| f.to_string()).collect()).unwrap_or_default()
}

async fn wait_bound_on(cluster: &TestCluster, id: u64, expected: &BTreeSet<String>) -> anyhow::Result<()> {
    wait_for(&format!("node {id} to apply {} bindings", expected.len()), WAIT, || async {
        bound_on(cluster, id).is_superset(expected).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_through_a_follower_reaches_every_node() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 10_000).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let client = cluster.client_of(follower).await?;
    assert_eq!(client.endpoint(), cluster.address(follower));
    topology(&client).await?;
    let reply = bind(&client, "Follower.Example.COM").await?;
    assert_eq!(reply.message, "bound follower.example.com to shard web-1");
    let expected = BTreeSet::from(["follower.example.com".to_string()]);
    for id in cluster.running() {
        wait_bound_on(&cluster, id, &expected).await?;
    }
    // A linearizable read through the follower sees the write.
    let view = client.cluster("c1", None).await?;
    assert!(view.version >= reply.version);
    assert_eq!(view.bindings.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_keeps_every_acknowledged_bind() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, 10_000).await?;
    let client = cluster.client().await?;
    topology(&client).await?;
    let mut acknowledged = BTreeSet::new();
    for i in 0..50 {
        let fqdn = format!("site-{i}.example.com");
        bind(&client, &fqdn).await?;
        acknowledged.insert(fqdn);
    }
    let old_leader = cluster.leader().await?;
    cluster.crash(old_leader);
    let new_leader = cluster.leader().await?;
    assert_ne!(new_leader, old_leader);
    for id in cluster.running() {
        wait_bound_on(&cluster, id, &acknowledged).await?;
    }
    // The group keeps taking writes with one node down.
    let client = cluster.client().await?;
    bind(&client, "after-failover.example.com").await?;
    acknowledged.insert("after-failover.example.com".into());
    let view = client.cluster("c1", None).await?;
    let seen: BTreeSet<String> = view.bindings.into_iter().map(|b| b.fqdn).collect();
    assert_eq!(seen, acknowledged);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restarts_from_its_data_dir() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, 10_000).await?;
    let client = cluster.client().await?;
    topology(&client).await?;
    let leader = cluster.leader().await?;
    let restarted = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let mut expected = BTreeSet::new();
    for i in 0..20 {
        let fqdn = format!("before-{i}.example.com");
        bind(&client, &fqdn).await?;
        expected.insert(fqdn);
    }
    wait_bound_on(&cluster, restarted, &expected).await?;
    cluster.stop(restarted).await;
    for i in 0..20 {
        let fqdn = format!("while-down-{i}.example.com");
        bind(&client, &fqdn).await?;
        expected.insert(fqdn);
    }
    assert!(cluster.data_dir(restarted).join("sled").exists());
    cluster.restart(restarted).await?;
    // It comes back with its own log and catches up on what it missed; no re-bootstrap.
    wait_bound_on(&cluster, restarted, &expected).await?;
    assert_eq!(bound_on(&cluster, restarted), expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_member_catches_up_by_snapshot() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, 20).await?;
    let client = cluster.client().await?;
    topology(&client).await?;
    let mut expected = BTreeSet::new();
    for i in 0..100 {
        let fqdn = format!("snap-{i}.example.com");
        bind(&client, &fqdn).await?;
        expected.insert(fqdn);
    }
    let leader = cluster.leader().await?;
    // The leader has snapshotted and purged the log the newcomer would need.
    wait_for("the leader to purge its log behind a snapshot", WAIT, || async {
        let metrics = cluster.coordinator(leader).raft.metrics().borrow().clone();
        metrics.purged.is_some_and(|p| p.index > 20).then_some(())
    })
    .await?;
    let address = cluster.spawn(4, "127.0.0.1:0".parse()?).await?;
    let status = client
        .change_membership(pb::change_membership_request::Change::Add(pb::MemberAddress { id: 4, address }))
        .await?;
    assert!(status.members.iter().any(|m| m.id == 4 && m.voter));
    wait_bound_on(&cluster, 4, &expected).await?;
    let metrics = cluster.coordinator(4).raft.metrics().borrow().clone();
    assert!(metrics.snapshot.is_some(), "node 4 was brought up by a snapshot");
    // Its log starts after the snapshot: the early entries only ever reached it inside the snapshot.
    assert!(metrics.purged.is_some_and(|p| p.index > 20) || metrics.snapshot.is_some_and(|s| s.index > 20));
    // And it now takes part in commits.
    bind(&client, "after-join.example.com").await?;
    expected.insert("after-join.example.com".into());
    wait_bound_on(&cluster, 4, &expected).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_removal_shrinks_the_group() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 10_000).await?;
    let client = cluster.client().await?;
    let leader = cluster.leader().await?;
    let removed = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let status = client.change_membership(pb::change_membership_request::Change::Remove(removed)).await?;
    assert!(!status.members.iter().any(|m| m.id == removed && m.voter));
    let err = client.change_membership(pb::change_membership_request::Change::Remove(99)).await.unwrap_err();
    assert!(err.to_string().contains("not a voting member"), "{err}");
    topology(&client).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, 10_000).await?;
    let client = cluster.client().await?;
    topology(&client).await?;
    let before = client.cluster("c1", None).await?;
    let err = bind(&client, "evil.com\nclear map /var/lib/haproxy/maps/fqdn-to-shard.map").await.unwrap_err();
    assert!(matches!(&err, ClientError::Status(s) if s.code() == tonic::Code::InvalidArgument), "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    let err = client
        .write(Kind::Bind(pb::Bind { fqdn: "ok.com".into(), shard: "nope".into(), cluster: String::new() }))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "shard \"nope\" not found");
    let err = client.write(Kind::Unbind(pb::Unbind { fqdn: "missing.com".into(), cluster: String::new() })).await;
    assert!(matches!(err, Err(ClientError::Status(s)) if s.code() == tonic::Code::NotFound));
    let err = client
        .write(Kind::AddNode(pb::AddNode {
            name: "n".into(),
            shard: "web-1".into(),
            host: "h".into(),
            address: "x:80\n  server evil 1.1.1.1:80".into(),
            container: String::new(),
        }))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid node address"), "{err}");
    let after = client.cluster("c1", None).await?;
    assert_eq!(before.bindings, after.bindings);
    assert_eq!(before.nodes, after.nodes);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_certificates_and_plaintext_are_refused() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, 10_000).await?;
    let address = cluster.address(1);

    // A certificate from another CA: the handshake fails.
    let other = tempfile::tempdir()?;
    let stranger = Identity::new(Role::Admin, "test")?;
    lbfleet_coordinator::pki::init(other.path(), std::slice::from_ref(&stranger))?;
    let other_tls = Credentials::client(&lbfleet_proto::tls::TlsDir::new(other.path()), &stranger)?;
    let refused = Client::first_reachable(std::slice::from_ref(&address), &other_tls, Duration::from_secs(3)).await;
    assert!(matches!(refused, Err(ClientError::Unreachable { .. })), "foreign CA accepted");

    // An agent certificate of the right CA may not use the operator API.
    let agent = Identity::new(Role::Agent, "lb-a")?;
    let agent_tls = Credentials::client(&cluster.tls, &agent)?;
    let refused = Client::first_reachable(std::slice::from_ref(&address), &agent_tls, Duration::from_secs(3)).await;
    let Err(ClientError::Unreachable { tried }) = refused else { panic!("agent certificate accepted") };
    assert!(tried[0].to_string().contains("agent:lb-a"), "{tried:?}");

    // Nor the Raft transport, which only coordinators may call.
    let channel = lbfleet_proto::transport::channel(&address, &agent_tls)?;
    let status = pb::raft_client::RaftClient::new(channel)
        .vote(pb::RaftPayload { data: vec![] })
        .await
        .expect_err("agent may not call Raft");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let admin_tls = Credentials::client(&cluster.tls, &cluster.tls.admin_identity(None)?)?;
    let channel = lbfleet_proto::transport::channel(&address, &admin_tls)?;
    let status = pb::raft_client::RaftClient::new(channel)
        .append_entries(pb::RaftPayload { data: vec![] })
        .await
        .expect_err("admin may not call Raft");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // A plaintext HTTP/2 client gets no answer at all.
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3));
    let result = match plaintext.connect().await {
        Ok(channel) => pb::admin_client::AdminClient::new(channel).status(pb::StatusRequest {}).await.map(|_| ()),
        Err(error) => Err(tonic::Status::unavailable(error.to_string())),
    };
    assert!(result.is_err(), "plaintext client was served");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_a_stale_if_version_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 10_000).await?;
    let client = cluster.client().await?;
    topology(&client).await?;
    // The version a reader saw: the cluster view carries it.
    let seen = client.cluster("c1", None).await?.version;
    bind(&client, "other-writer.com").await?;

    let stale = cluster.client().await?.with_if_version(Some(seen));
    let err = bind(&stale, "mine.com").await.unwrap_err();
    assert!(matches!(&err, ClientError::Status(s) if s.code() == tonic::Code::FailedPrecondition), "{err}");
    let current = client.cluster("c1", None).await?;
    assert!(err.to_string().starts_with(&format!("the state is at version {}, not {seen}", current.version)), "{err}");
    assert!(!current.bindings.iter().any(|b| b.fqdn == "mine.com"), "a refused write was applied");

    // Computed from the current version, it applies; a second write with the same version does not.
    let fresh = cluster.client().await?.with_if_version(Some(current.version));
    bind(&fresh, "mine.com").await?;
    let err = bind(&fresh, "mine-too.com").await.unwrap_err();
    assert!(err.to_string().contains("as --if-version said"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_dry_run_changes_nothing_and_prune_makes_the_map_the_file() -> anyhow::Result<()> {
    use lbfleet_coordinator::ctl::import;

    let cluster = TestCluster::start(1, 10_000).await?;
    let client = cluster.client().await?;
    topology(&client).await?;
    client.write(Kind::CreateShard(pb::CreateShard { name: "web-2".into(), cluster: "c1".into() })).await?;
    for fqdn in ["moved.com", "same.com", "gone.com"] {
        bind(&client, fqdn).await?;
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("map.txt");
    std::fs::write(&file, "moved.com shard-web-2\nsame.com shard-web-1\nnew.com shard-web-1\n")?;
    let bindings = || async {
        let view = client.cluster("c1", None).await?;
        anyhow::Ok(view.bindings.into_iter().map(|b| (b.fqdn, b.shard)).collect::<Vec<_>>())
    };
    let before = bindings().await?;

    let plan = import::dry_run(&client, &file, "c1", true).await?;
    assert_eq!(plan.added, [("new.com".to_string(), "web-1".to_string())]);
    assert_eq!(plan.moved, [("moved.com".to_string(), "web-1".to_string(), "web-2".to_string())]);
    assert_eq!((plan.unchanged, plan.removed.clone()), (1, vec!["gone.com".to_string()]));
    assert_eq!(bindings().await?, before, "a dry run changed the map");

    let report = import::run(&client, &file, "c1", 100, true).await?;
    assert_eq!((report.added, report.moved, report.unchanged, report.removed), (1, 1, 1, 1));
    let expected: Vec<(String, String)> = [("moved.com", "web-2"), ("new.com", "web-1"), ("same.com", "web-1")]
        .iter()
        .map(|(f, s)| (f.to_string(), s.to_string()))
        .collect();
    assert_eq!(bindings().await?, expected);
    Ok(())
}
