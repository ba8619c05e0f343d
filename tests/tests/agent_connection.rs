//! The agent's one connection to the group, against 3 coordinator processes and a real HAProxy.
//!
//! It follows the leader: when the leader is killed (SIGKILL) or frozen (SIGSTOP: it keeps its
//! sockets and answers nothing), the agent that streamed from it moves to the new leader, and a
//! bind made after the fault reaches its HAProxy; each run prints how long that took. It picks
//! up a renewed certificate without a restart, and a revoked host is cut off while its HAProxy
//! keeps serving. These need Docker and the lbfleet images: without them they fail when `CI` is
//! set and otherwise do nothing; and `cargo build --bins` first.
//!
//! The agent's leader search (`lbfleet_agent::leader::find`) is also checked on its own against
//! an in-process group, without Docker: a frozen endpoint listed first costs nothing, a leader
//! known only from a redirect is found, and a search beside a held stream never takes it over.

use std::time::Duration;
use std::time::Instant;

use lbfleet_agent::leader;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_proto::pb::coordinator_message::Kind as CoordinatorKind;
use lbfleet_proto::tls::TlsDir;
use lbfleet_proto::transport::CONNECT_TIMEOUT;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;
use lbfleet_tests::docker_lab::add_agent_certs;
use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::AgentOptions;
use lbfleet_tests::docker_lab::AgentProcess;
use lbfleet_tests::docker_lab::HaproxyBox;
use lbfleet_tests::docker_lab::Lab;
use lbfleet_tests::docker_lab::Mounts;
use lbfleet_tests::docker_lab::READY;
use lbfleet_tests::frozen::FrozenPeer;
use lbfleet_tests::inproc::TestCluster;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::agent_binary;
use lbfleet_tests::process::lbfleet_binary;
use lbfleet_tests::process::ProcessCluster;

const CLUSTER: &str = "c1";
const SHARD: &str = "web-1";
const HOST: &str = "lb-a";
/// The longest any step after the fault may take before the test gives up on it.
const WAIT: Duration = Duration::from_secs(30);
/// A killed leader drops the agent's connection at once: a new leader (elected within 0.8 s)
/// must have it, caught up, within this, on a busy machine too.
const KILL_BOUND: Duration = Duration::from_secs(6);
/// A frozen leader says nothing: after 4 s of silence the agent looks for another leader, which
/// the group elected meanwhile; it must have moved and caught up within this (its 10 s TTL
/// alone would not do).
const FREEZE_BOUND: Duration = Duration::from_secs(8);
/// How often the leader's status is asked while waiting.
const STATUS_POLL: Duration = Duration::from_millis(50);

/// One test at a time, so the figures printed carry no load from the other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Freeze,
}

/// A 3-process group and one LB host (HAProxy container and agent). Fields drop in order:
/// the agent, then the coordinators, then the containers.
struct Rig {
    agent: AgentProcess,
    cluster: ProcessCluster,
    lb: HaproxyBox,
    _lab: Lab,
    /// The client the bind after the fault goes through; it talks to the leader before it fails.
    client: Client,
    /// The index of the leader when the agent started.
    leader: usize,
}

impl Rig {
    /// Registers cluster, shard and host, starts HAProxy and the agent with the leader first in
    /// its endpoints, binds one FQDN and waits until HAProxy holds it.
    async fn start(test: &str) -> anyhow::Result<Rig> {
        let cluster = ProcessCluster::start(3)?;
        add_agent_certs(&lbfleet_binary(), &cluster.tls_dir, &[HOST])?;
        let client = cluster.client().await?;
        let leader = cluster.leader_index(&client).await?;
        let leader_id = cluster.node_id(leader);
        let mut lab = Lab::new(test)?;
        let lb = lab.start_haproxy(HOST, Mounts::ALL)?;
        client
            .write(Kind::CreateCluster(pb::CreateCluster { name: CLUSTER.into(), haproxy_container: String::new() }))
            .await?;
        client.write(Kind::CreateShard(pb::CreateShard { name: SHARD.into(), cluster: CLUSTER.into() })).await?;
        let add = pb::AddHost {
            id: HOST.into(),
            cluster: CLUSTER.into(),
            address: String::new(),
            haproxy_container: lb.container.clone(),
        };
        client.write(Kind::AddHost(add)).await?;
        lb.wait_ready().await?;
        let endpoints = leader_first(&cluster, leader);
        let log = lab.dir().join("agent.log");
        let agent = AgentProcess::start(
            &agent_binary(),
            HOST,
            &endpoints,
            &cluster.tls_dir,
            &lb,
            &AgentOptions::default(),
            log,
        )?;
        let rig = Rig { agent, cluster, lb, _lab: lab, client, leader };
        let version = rig.client.write(bind("before.example.com")).await?.version;
        let progress = rig.client.wait_applied(CLUSTER, version, READY).await?;
        anyhow::ensure!(progress.done, "the first bind was not applied: {:?}\n{}", progress.hosts, rig.agent.log());
        anyhow::ensure!(rig.lb.holds("before.example.com").await?, "HAProxy lacks the first bind");
        let status = rig.client.status().await?;
        let agent = status.agents.iter().find(|a| a.host == HOST).expect("the agent is listed");
        assert_eq!(agent.served_by, leader_id, "the agent did not start on the leader: {agent:?}");
        Ok(rig)
    }

    /// The endpoints of the nodes that were not faulted.
    fn survivors(&self) -> Vec<String> {
        (0..self.cluster.size()).filter(|&i| i != self.leader).map(|i| self.cluster.endpoint(i)).collect()
    }
}

/// The group's endpoints with the one at `first` in front, so the agent starts on it.
fn leader_first(cluster: &ProcessCluster, first: usize) -> Vec<String> {
    let mut endpoints = vec![cluster.endpoint(first)];
    endpoints.extend((0..cluster.size()).filter(|&i| i != first).map(|i| cluster.endpoint(i)));
    endpoints
}

fn bind(fqdn: &str) -> Kind {
    Kind::Bind(pb::Bind { fqdn: fqdn.into(), shard: SHARD.into(), cluster: String::new() })
}

/// Asks the leader among `endpoints` for its status until `done` accepts it or `deadline` passes.
/// Only the leader's status counts: it serves the agents' streams and keeps their progress.
async fn leader_status_until(
    endpoints: &[String],
    tls: &TlsDir,
    deadline: Instant,
    what: &str,
    done: impl Fn(&pb::StatusReply) -> bool,
) -> anyhow::Result<pb::StatusReply> {
    let mut client: Option<Client> = None;
    let mut last = String::from("no answer yet");
    loop {
        if client.is_none() {
            match Client::connect(endpoints, tls, None, Duration::from_secs(2)).await {
                Ok(connected) => client = Some(connected),
                Err(error) => last = error.to_string(),
            }
        }
        if let Some(connected) = &client {
            match connected.status().await {
                Ok(status) if status.has_leader && status.current_leader == status.node_id => {
                    if done(&status) {
                        return Ok(status);
                    }
                    last = format!("leader {}: agents {:?}", status.node_id, status.agents);
                }
                Ok(status) => {
                    last = format!("node {} is not the leader", status.node_id);
                    client = None;
                }
                Err(error) => {
                    last = error.to_string();
                    client = None;
                }
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}: {last}");
        tokio::time::sleep(STATUS_POLL).await;
    }
}

/// The agent's entry in `status`.
fn agent_of(status: &pb::StatusReply) -> Option<&pb::AgentStatus> {
    status.agents.iter().find(|a| a.host == HOST)
}

/// Runs `lbfleet --json status` against `endpoints`.
fn cli_status(rig: &Rig, endpoints: &[String]) -> anyhow::Result<serde_json::Value> {
    let output = std::process::Command::new(lbfleet_binary())
        .args(["--endpoints", &endpoints.join(","), "--timeout", "3", "--json", "status"])
        .arg("--tls-dir")
        .arg(&rig.cluster.tls_dir)
        .output()?;
    anyhow::ensure!(output.status.success(), "lbfleet status failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(serde_json::from_slice(&output.stdout)?)
}

async fn agent_follows_the_leader(fault: Fault) -> anyhow::Result<()> {
    if !docker_available() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let test = match fault {
        Fault::Kill => "agent-kill",
        Fault::Freeze => "agent-freeze",
    };
    let mut rig = Rig::start(test).await?;
    let old_leader = rig.cluster.node_id(rig.leader);
    let survivors = rig.survivors();
    let tls = rig.cluster.tls();

    let faulted = Instant::now();
    match fault {
        Fault::Kill => rig.cluster.kill(rig.leader),
        Fault::Freeze => rig.cluster.freeze(rig.leader),
    }
    let deadline = faulted + WAIT;

    // The agent moving and the bind going live, watched at the same time.
    let moved = async {
        let status = leader_status_until(&survivors, &tls, deadline, "the agent on the new leader", |status| {
            agent_of(status).is_some_and(|a| a.connected && a.served_by == status.node_id)
        })
        .await?;
        anyhow::Ok((status.node_id, faulted.elapsed()))
    };
    let live = async {
        let version = rig.client.write(bind("after.example.com")).await?.version;
        let committed = faulted.elapsed();
        let left = deadline.saturating_duration_since(Instant::now());
        wait_for("after.example.com in HAProxy's map", left, || async {
            rig.lb.holds("after.example.com").await.ok()?.then_some(())
        })
        .await?;
        anyhow::Ok((version, committed, faulted.elapsed()))
    };
    let (moved, live) = tokio::join!(moved, live);
    let context = |error: anyhow::Error| error.context(format!("agent log:\n{}", rig.agent.log()));
    let (new_leader, on_new_leader) = moved.map_err(context)?;
    let (version, committed, in_map) = live.map_err(context)?;
    let status = leader_status_until(&survivors, &tls, deadline, "the agent at lag 0", |status| {
        agent_of(status).is_some_and(|a| a.connected && a.lag == 0 && a.acked_version >= version)
    })
    .await
    .map_err(context)?;
    let caught_up = faulted.elapsed();
    println!(
        "{fault:?} of leader {old_leader}: bind committed after {committed:?}; agent on leader {new_leader} after \
         {on_new_leader:?}; FQDN in HAProxy's map after {in_map:?}; agent at lag 0 after {caught_up:?}"
    );
    assert_ne!(new_leader, old_leader);
    assert_eq!(status.node_id, new_leader, "leadership moved again");

    // What an operator sees.
    let cli = cli_status(&rig, &survivors)?;
    assert_eq!(cli["leader"], new_leader, "{cli}");
    let agent = cli["agents"].as_array().and_then(|a| a.iter().find(|a| a["host"] == HOST)).cloned();
    let agent = agent.unwrap_or_default();
    assert_eq!(
        (&agent["connected"], &agent["lag"], &agent["served_by"]),
        (&true.into(), &0.into(), &new_leader.into())
    );

    let bound = match fault {
        Fault::Kill => KILL_BOUND,
        Fault::Freeze => FREEZE_BOUND,
    };
    assert!(caught_up < bound, "{fault:?}: the agent took {caught_up:?} (bound {bound:?}):\n{}", rig.agent.log());

    if let Fault::Freeze = fault {
        rig.cluster.thaw(rig.leader);
    }
    // The old leader back or gone, the agent stays with the group: the next bind reaches HAProxy.
    let version = rig.client.write(bind("later.example.com")).await?.version;
    let progress = rig.client.wait_applied(CLUSTER, version, READY).await?;
    assert!(progress.done, "{:?}\n{}", progress.hosts, rig.agent.log());
    assert!(rig.lb.holds("later.example.com").await?);
    assert!(rig.agent.is_running(), "the agent exited:\n{}", rig.agent.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_follows_a_killed_leader() -> anyhow::Result<()> {
    agent_follows_the_leader(Fault::Kill).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_follows_a_frozen_leader() -> anyhow::Result<()> {
    agent_follows_the_leader(Fault::Freeze).await
}

/// Runs `lbfleet ARGS...` with the group's TLS directory; its stdout, or why it failed.
fn lbfleet(rig: &Rig, args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new(lbfleet_binary())
        .args(["--endpoints", &rig.cluster.endpoints().join(","), "--tls-dir"])
        .arg(&rig.cluster.tls_dir)
        .args(args)
        .output()?;
    anyhow::ensure!(output.status.success(), "lbfleet {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_uses_a_renewed_certificate_and_a_revoked_host_is_cut_off() -> anyhow::Result<()> {
    if !docker_available() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let rig = Rig::start("agent-credentials").await?;
    let tls = rig.cluster.tls();
    let identity = Identity::new(Role::Agent, HOST)?;
    let old_serial = Credentials::client(&tls, &identity)?.serial();

    // Renewed in place: the running agent reconnects with the new certificate by itself.
    let renewed = lbfleet(&rig, &["pki", "renew", "--dir", &tls.path().to_string_lossy(), "--agent", HOST])?;
    let new_serial = Credentials::client(&tls, &identity)?.serial();
    assert_ne!(new_serial, old_serial);
    assert!(renewed.contains(&new_serial), "{renewed}");
    wait_for("the agent to reconnect with its renewed certificate", WAIT, || async {
        rig.agent.log().contains("the certificate was renewed").then_some(())
    })
    .await?;
    // The old certificate revoked, the agent carries on with the new one.
    lbfleet(&rig, &["host", "revoke", "--serial", &old_serial])?;
    let version = rig.client.write(bind("renewed.example.com")).await?.version;
    let progress = rig.client.wait_applied(CLUSTER, version, READY).await?;
    assert!(progress.done, "{:?}\n{}", progress.hosts, rig.agent.log());
    assert!(rig.lb.holds("renewed.example.com").await?);

    // The host revoked: its stream is closed and every coordinator refuses it; HAProxy keeps serving.
    let revoked = lbfleet(&rig, &["host", "revoke", HOST])?;
    assert!(revoked.contains("revoked host lb-a"), "{revoked}");
    let deadline = Instant::now() + WAIT;
    leader_status_until(&rig.cluster.endpoints(), &tls, deadline, "the revoked agent to be cut off", |status| {
        agent_of(status).is_some_and(|a| !a.connected)
    })
    .await?;
    let version = rig.client.write(bind("while-revoked.example.com")).await?.version;
    let progress = rig.client.wait_applied(CLUSTER, version, Duration::from_secs(3)).await?;
    assert!(!progress.done, "a revoked host applied a change: {:?}", progress.hosts);
    assert!(rig.lb.holds("renewed.example.com").await?, "HAProxy lost a binding when its host was revoked");
    assert!(rig.agent.log().contains("was revoked"), "the agent does not say why:\n{}", rig.agent.log());
    let status = lbfleet(&rig, &["status"])?;
    assert!(status.contains("revoked: host lb-a"), "{status}");

    // Lifted: the agent comes back by itself and catches up.
    lbfleet(&rig, &["host", "unrevoke", HOST])?;
    let progress = rig.client.wait_applied(CLUSTER, version, WAIT).await?;
    assert!(progress.done, "{:?}\n{}", progress.hosts, rig.agent.log());
    assert!(rig.lb.holds("while-revoked.example.com").await?);
    Ok(())
}

/// The first message of an opened stream, which for a new agent is the full state.
async fn first_update(opened: &mut leader::Opened) -> anyhow::Result<CoordinatorKind> {
    let message = tokio::time::timeout(Duration::from_secs(10), opened.inbound.message()).await??;
    message.and_then(|m| m.kind).ok_or_else(|| anyhow::anyhow!("the stream closed without a message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_search_skips_frozen_nodes_follows_redirects_and_leaves_a_held_stream_alone() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 10_000).await?;
    let client = cluster.client().await?;
    client
        .write(Kind::CreateCluster(pb::CreateCluster { name: CLUSTER.into(), haproxy_container: String::new() }))
        .await?;
    let add = pb::AddHost { id: HOST.into(), cluster: CLUSTER.into(), ..pb::AddHost::default() };
    client.write(Kind::AddHost(add)).await?;
    let leader = cluster.address(cluster.leader().await?);
    let followers: Vec<String> =
        cluster.running().into_iter().map(|id| cluster.address(id)).filter(|a| *a != leader).collect();
    let tls = Credentials::client(&cluster.tls, &Identity::new(Role::Agent, HOST)?)?;
    let hello = pb::Hello { host_id: HOST.into(), ..pb::Hello::default() };
    let frozen = FrozenPeer::start().await?;

    // All endpoints are asked at once: the frozen one first in the list holds nothing up.
    let endpoints = [frozen.address.clone(), followers[0].clone(), leader.clone()];
    let started = Instant::now();
    let mut opened = leader::find(&endpoints, &tls, hello.clone(), None).await;
    let took = started.elapsed();
    assert_eq!(opened.endpoint, leader);
    assert!(took < CONNECT_TIMEOUT, "the search waited {took:?} for the frozen endpoint");
    assert!(matches!(first_update(&mut opened).await?, CoordinatorKind::Full(_)));
    drop(opened);

    // A leader not listed is reached through the address a follower names.
    let endpoints = [followers[0].clone()];
    let mut opened = tokio::time::timeout(WAIT, leader::find(&endpoints, &tls, hello.clone(), None)).await?;
    assert_eq!(opened.endpoint, leader);
    assert!(matches!(first_update(&mut opened).await?, CoordinatorKind::Full(_)));

    // Beside a stream held on the leader, the search asks only the others, which name that leader:
    // it finds nothing to move to, and the held stream stays the host's.
    let endpoints = [leader.clone(), followers[0].clone(), followers[1].clone()];
    let beside = leader::find(&endpoints, &tls, hello.clone(), Some(&leader));
    assert!(tokio::time::timeout(Duration::from_secs(2), beside).await.is_err(), "the search took a stream");
    let status = client.status().await?;
    let agent = status.agents.iter().find(|a| a.host == HOST).expect("the agent is listed");
    assert!(agent.connected, "{agent:?}");
    drop(opened);
    Ok(())
}
