//! The agent stream, spoken by a scripted agent against an in-process coordinator group:
//! full state, deltas, resume, acks, nacks held back, --wait, leader redirects, authorization.

use std::time::Duration;

use lbfleet_coordinator::ctl::client::Client;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::pb::agent_message::Kind as AgentKind;
use lbfleet_proto::pb::agent_stream_client::AgentStreamClient;
use lbfleet_proto::pb::command::Kind;
use lbfleet_proto::pb::coordinator_message::Kind as CoordinatorKind;
use lbfleet_proto::transport::LEADER_KEY;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;
use lbfleet_tests::inproc::TestCluster;
use lbfleet_tests::poll::wait_for;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// A hand-driven agent: what it sends and what it received.
struct ScriptedAgent {
    out: mpsc::Sender<pb::AgentMessage>,
    inbound: Streaming<pb::CoordinatorMessage>,
}

impl ScriptedAgent {
    /// Opens host `host`'s stream with the certificate of `identity`, resuming from `version`.
    async fn connect(
        cluster: &TestCluster,
        node: u64,
        identity: &Identity,
        host: &str,
        version: u64,
    ) -> Result<Self, tonic::Status> {
        let tls = Credentials::client(&cluster.tls, identity).expect("agent TLS");
        let channel = lbfleet_proto::transport::channel(&cluster.address(node), &tls).expect("channel");
        let (out, rx) = mpsc::channel(16);
        let hello = pb::Hello { host_id: host.into(), last_applied_version: version, ..Default::default() };
        out.send(AgentKind::Hello(hello).into()).await.expect("queue hello");
        let inbound = AgentStreamClient::new(channel).session(ReceiverStream::new(rx)).await?.into_inner();
        Ok(ScriptedAgent { out, inbound })
    }

    /// The next state message, skipping heartbeats.
    async fn next_update(&mut self) -> CoordinatorKind {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.inbound.message())
                .await
                .expect("an update in time")
                .expect("stream open")
                .expect("a message");
            match message.kind.expect("a kind") {
                CoordinatorKind::Heartbeat(_) => continue,
                other => return other,
            }
        }
    }

    /// Asserts nothing but heartbeats arrive for `wait`.
    async fn expect_quiet(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(message) = tokio::time::timeout_at(deadline, self.inbound.message()).await {
            let kind = message.expect("stream open").expect("a message").kind;
            assert!(matches!(kind, Some(CoordinatorKind::Heartbeat(_))), "unexpected {kind:?}");
        }
    }

    async fn send(&self, kind: AgentKind) {
        self.out.send(kind.into()).await.expect("stream open");
    }
}

async fn setup(client: &Client) -> anyhow::Result<()> {
    let writes = [
        Kind::CreateCluster(pb::CreateCluster { name: "c1".into(), haproxy_container: "lb".into() }),
        Kind::AddHost(pb::AddHost {
            id: "lb-a".into(),
            cluster: "c1".into(),
            address: "a".into(),
            ..Default::default()
        }),
        Kind::CreateShard(pb::CreateShard { name: "web-1".into(), cluster: "c1".into() }),
        Kind::AddNode(pb::AddNode {
            name: "n0".into(),
            shard: "web-1".into(),
            host: "lb-a".into(),
            address: "n0:80".into(),
            container: String::new(),
        }),
    ];
    for write in writes {
        client.write(write).await?;
    }
    Ok(())
}

async fn bind(client: &Client, fqdn: &str) -> anyhow::Result<pb::WriteReply> {
    Ok(client.write(Kind::Bind(pb::Bind { fqdn: fqdn.into(), shard: "web-1".into(), cluster: String::new() })).await?)
}

fn agent(host: &str) -> Identity {
    Identity::new(Role::Agent, host).expect("agent identity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_state_then_deltas_acks_and_wait() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, 10_000).await?;
    let client = cluster.client().await?;
    setup(&client).await?;
    bind(&client, "a.example.com").await?;

    let mut agent_a = ScriptedAgent::connect(&cluster, 1, &agent("lb-a"), "lb-a", 0).await?;
    let CoordinatorKind::Full(full) = agent_a.next_update().await else { panic!("a new agent gets the full state") };
    assert_eq!(full.map, vec![pb::MapEntry { fqdn: "a.example.com".into(), backend: "shard-web-1".into() }]);
    let topology = full.topology.expect("topology");
    assert_eq!(topology.container, "lb");
    assert_eq!(topology.backends[0].servers[0].address, "n0:80");
    agent_a.send(AgentKind::Ack(pb::Ack { version: full.version })).await;

    // A bind arrives as a delta carrying just that change.
    let reply = bind(&client, "b.example.com").await?;
    let CoordinatorKind::Delta(delta) = agent_a.next_update().await else { panic!("a delta") };
    assert_eq!((delta.from_version, delta.version), (full.version, reply.version));
    assert_eq!(delta.upserts, vec![pb::MapEntry { fqdn: "b.example.com".into(), backend: "shard-web-1".into() }]);
    assert!(delta.removals.is_empty() && delta.topology.is_none());

    // --wait returns once the agent acknowledged the version, and names it while it has not.
    let (done, _) = wait(&client, reply.version, 50).await?;
    assert!(!done, "not acknowledged yet");
    agent_a.send(AgentKind::Ack(pb::Ack { version: delta.version })).await;
    let (done, hosts) = wait(&client, reply.version, 5_000).await?;
    assert!(done, "{hosts:?}");

    // An admin state reaches the agent in the topology of a delta, with the server's fixed id.
    let drain = pb::SetNodeState { name: "n0".into(), state: pb::AdminState::AdminDrain.into() };
    client.write(Kind::SetNodeState(drain)).await?;
    let CoordinatorKind::Delta(delta) = agent_a.next_update().await else { panic!("a delta") };
    let topology = delta.topology.expect("an admin state changes the topology");
    let server = &topology.backends[0].servers[0];
    assert_eq!((server.name.as_str(), server.id, server.admin), ("n0", 1, pb::AdminState::AdminDrain.into()));
    assert!(delta.upserts.is_empty() && delta.removals.is_empty());

    // A node change reaches the agent as a topology update.
    client.write(Kind::RemoveNode(pb::RemoveNode { name: "n0".into() })).await?;
    let CoordinatorKind::Delta(delta) = agent_a.next_update().await else { panic!("a delta") };
    assert!(delta.topology.expect("topology changed").backends[0].servers.is_empty());

    let status = client.status().await?;
    let agent_status = status.agents.iter().find(|a| a.host == "lb-a").expect("agent listed");
    assert!(agent_status.connected);
    assert_eq!(agent_status.acked_version, reply.version);
    Ok(())
}

async fn wait(client: &Client, version: u64, millis: u64) -> anyhow::Result<(bool, Vec<pb::HostProgress>)> {
    let reply = client.wait_applied("c1", version, Duration::from_millis(millis)).await?;
    Ok((reply.done, reply.hosts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_gets_only_what_was_missed_and_nacks_are_not_resent() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, 10_000).await?;
    let client = cluster.client().await?;
    setup(&client).await?;
    let first = bind(&client, "a.example.com").await?;
    bind(&client, "b.example.com").await?;
    client.write(Kind::Unbind(pb::Unbind { fqdn: "a.example.com".into(), cluster: String::new() })).await?;

    // Resuming from the version of the first bind: the net change since, not everything.
    let mut agent_a = ScriptedAgent::connect(&cluster, 1, &agent("lb-a"), "lb-a", first.version).await?;
    let CoordinatorKind::Delta(delta) = agent_a.next_update().await else { panic!("a resumed agent gets a delta") };
    assert_eq!(delta.from_version, first.version);
    assert_eq!(delta.upserts.len(), 1);
    assert_eq!(delta.removals, vec!["a.example.com".to_string()]);

    // A rejected version is recorded and not sent again.
    agent_a.send(AgentKind::Nack(pb::Nack { version: delta.version, error: "haproxy -c failed".into() })).await;
    agent_a.expect_quiet(Duration::from_millis(1_500)).await;
    let progress = client.wait_applied("c1", delta.version, Duration::from_millis(50)).await?;
    assert!(!progress.done);
    assert_eq!(progress.hosts[0].nack_error, "haproxy -c failed");
    let status = client.status().await?;
    assert_eq!(status.agents[0].nacked_version, delta.version);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_authorized_and_served_by_the_leader() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 10_000).await?;
    let client = cluster.client().await?;
    setup(&client).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");

    // Another host's certificate cannot open lb-a's stream.
    let refused = ScriptedAgent::connect(&cluster, leader, &agent("lb-b"), "lb-a", 0).await.err().expect("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("agent:lb-b"), "{}", refused.message());
    // An operator certificate is not an agent's.
    let admin = cluster.tls.admin_identity(None)?;
    let refused = ScriptedAgent::connect(&cluster, leader, &admin, "lb-a", 0).await.err().expect("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // An unregistered host is told how to register.
    let refused = ScriptedAgent::connect(&cluster, leader, &agent("lb-b"), "lb-b", 0).await.err().expect("refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("lbfleet host add lb-b"), "{}", refused.message());

    // A follower sends the agent to the leader.
    let redirected =
        ScriptedAgent::connect(&cluster, follower, &agent("lb-a"), "lb-a", 0).await.err().expect("redirect");
    let leader_address = redirected.metadata().get(LEADER_KEY).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(leader_address, Some(cluster.address(leader)));
    Ok(())
}

/// Waits for the end of a stream, skipping what arrives before it; `None` if it stays open for 10 s.
async fn stream_end(agent: &mut ScriptedAgent) -> Option<Result<(), tonic::Status>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, agent.inbound.message()).await {
            Err(_) => return None,
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return Some(Ok(())),
            Ok(Err(status)) => return Some(Err(status)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_are_refused_and_their_stream_closed() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 10_000).await?;
    let client = cluster.client().await?;
    setup(&client).await?;
    let leader = cluster.leader().await?;

    let mut agent_a = ScriptedAgent::connect(&cluster, leader, &agent("lb-a"), "lb-a", 0).await?;
    assert!(matches!(agent_a.next_update().await, CoordinatorKind::Full(_)));

    let reply = client.write(Kind::Revoke(pb::Revoke { host: "lb-a".into(), serial: String::new() })).await?;
    assert!(reply.message.contains("revoked host lb-a"), "{}", reply.message);
    let listed = client.status().await?.revocations;
    assert!(listed.iter().any(|r| r.host == "lb-a" && r.revoked_at > 0), "{listed:?}");
    // The open stream is closed with the reason.
    let ended = stream_end(&mut agent_a).await.expect("the revoked host's stream stayed open");
    let status = ended.expect_err("the stream ended without an error");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("host lb-a was revoked"), "{}", status.message());

    // Every coordinator refuses a new connection with that certificate once it applied the revocation.
    for node in cluster.running() {
        let what = format!("node {node} to refuse the revoked certificate");
        wait_for(&what, Duration::from_secs(10), || async {
            ScriptedAgent::connect(&cluster, node, &agent("lb-a"), "lb-a", 0).await.err()
        })
        .await?;
    }
    // Another host is not affected: it gets as far as being told it is not registered.
    let other = ScriptedAgent::connect(&cluster, leader, &agent("lb-b"), "lb-b", 0).await.err().expect("unregistered");
    assert_eq!(other.code(), tonic::Code::FailedPrecondition, "{other:?}");

    // Lifting the revocation lets the host back in.
    client.write(Kind::Unrevoke(pb::Unrevoke { host: "lb-a".into(), serial: String::new() })).await?;
    let mut back = wait_for("the host to be let back in", Duration::from_secs(10), || async {
        ScriptedAgent::connect(&cluster, leader, &agent("lb-a"), "lb-a", 0).await.ok()
    })
    .await?;
    assert!(matches!(back.next_update().await, CoordinatorKind::Full(_)));

    // By serial: only that certificate is refused; the one issued after it connects.
    let old_serial = Credentials::client(&cluster.tls, &agent("lb-a"))?.serial();
    let colons: Vec<String> =
        old_serial.as_bytes().chunks(2).map(|pair| String::from_utf8_lossy(pair).to_uppercase()).collect();
    client.write(Kind::Revoke(pb::Revoke { host: String::new(), serial: colons.join(":") })).await?;
    let ended = stream_end(&mut back).await.expect("the stream of a revoked serial stayed open");
    assert_eq!(ended.expect_err("closed without an error").code(), tonic::Code::PermissionDenied);
    lbfleet_coordinator::pki::renew(cluster.tls.path(), &[agent("lb-a")])?;
    assert_ne!(Credentials::client(&cluster.tls, &agent("lb-a"))?.serial(), old_serial);
    let mut renewed = ScriptedAgent::connect(&cluster, leader, &agent("lb-a"), "lb-a", 0).await?;
    assert!(matches!(renewed.next_update().await, CoordinatorKind::Full(_)));

    let bad = client.write(Kind::Revoke(pb::Revoke { host: "lb-a".into(), serial: "0a".into() })).await.unwrap_err();
    assert!(bad.to_string().contains("either a host or a certificate serial"), "{bad}");
    let bad = client.write(Kind::Revoke(pb::Revoke { host: String::new(), serial: "xyz".into() })).await.unwrap_err();
    assert!(bad.to_string().contains("invalid certificate serial"), "{bad}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_shard_moves_its_fqdns_and_its_backend_leaves_the_agents_topology() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, 10_000).await?;
    let client = cluster.client().await?;
    setup(&client).await?;
    client.write(Kind::CreateShard(pb::CreateShard { name: "web-2".into(), cluster: "c1".into() })).await?;
    bind(&client, "a.example.com").await?;
    let mut agent_a = ScriptedAgent::connect(&cluster, 1, &agent("lb-a"), "lb-a", 0).await?;
    let CoordinatorKind::Full(full) = agent_a.next_update().await else { panic!("a new agent gets the full state") };
    agent_a.send(AgentKind::Ack(pb::Ack { version: full.version })).await;

    // Refused while in use, with the reason; nothing reaches the agent.
    let delete = |move_to: &str| Kind::DeleteShard(pb::DeleteShard { name: "web-1".into(), move_to: move_to.into() });
    let refused = client.write(delete("web-2")).await.unwrap_err();
    assert!(refused.to_string().contains("it has nodes n0; remove them first"), "{refused}");
    client.write(Kind::RemoveNode(pb::RemoveNode { name: "n0".into() })).await?;
    let CoordinatorKind::Delta(_) = agent_a.next_update().await else { panic!("a node removal is a delta") };
    let refused = client.write(delete("")).await.unwrap_err();
    assert!(refused.to_string().contains("1 FQDNs are bound to it (a.example.com)"), "{refused}");

    let reply = client.write(delete("web-2")).await?;
    assert_eq!(reply.message, "deleted shard web-1; moved its 1 FQDNs to shard web-2");
    // A refused write still takes a log entry, so deltas without changes may come first.
    let (mut upserts, mut topology) = (Vec::new(), None);
    while let CoordinatorKind::Delta(delta) = agent_a.next_update().await {
        upserts.extend(delta.upserts);
        topology = delta.topology.or(topology);
        if delta.version >= reply.version {
            break;
        }
    }
    assert_eq!(upserts, vec![pb::MapEntry { fqdn: "a.example.com".into(), backend: "shard-web-2".into() }]);
    let backends: Vec<String> = topology.expect("the topology changed").backends.into_iter().map(|b| b.name).collect();
    assert_eq!(backends, ["shard-web-2"]);
    Ok(())
}
