//! Node admin states against an in-process coordinator group and fake agents that report their
//! servers' sessions: `NodeSessions` (through a follower too), and the `lbfleet` binary's
//! `node drain --wait`, `node maint|ready` and `node remove [--now]` as an operator runs them,
//! with sessions that drop to 0 and with a host that never lets them go.

use std::collections::HashMap;
use std::process::Output;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::pb::agent_message::Kind as AgentKind;
use lbfleet_proto::pb::agent_stream_client::AgentStreamClient;
use lbfleet_proto::pb::command::Kind;
use lbfleet_proto::pb::coordinator_message::Kind as CoordinatorKind;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;
use lbfleet_tests::inproc::TestCluster;
use lbfleet_tests::inproc::WAIT;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::lbfleet_binary;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// How a fake agent's HAProxy behaves, changed by the test while the agent runs.
#[derive(Debug, Default)]
struct Haproxy {
    /// Current sessions per server name (0 when not set).
    sessions: HashMap<String, u64>,
    /// Sessions on a server out of rotation end one per report: clients finishing their requests.
    sessions_end: bool,
    /// Whether report requests are answered at all (a frozen agent does not).
    answers: bool,
    /// Servers this HAProxy does not have (its config is older than the topology).
    missing: Vec<String>,
}

/// An agent that holds its host's stream, applies every topology it is sent (admin states
/// included) to a pretend HAProxy, and answers report requests from it.
struct FakeAgent {
    haproxy: Arc<Mutex<Haproxy>>,
    task: JoinHandle<()>,
}

impl FakeAgent {
    async fn connect(cluster: &TestCluster, node: u64, host: &str) -> anyhow::Result<FakeAgent> {
        let identity = Identity::new(Role::Agent, host)?;
        let tls = Credentials::client(&cluster.tls, &identity)?;
        let channel = lbfleet_proto::transport::channel(&cluster.address(node), &tls)?;
        let (out, rx) = mpsc::channel(16);
        let hello = pb::Hello { host_id: host.into(), ..Default::default() };
        out.send(AgentKind::Hello(hello).into()).await?;
        let mut inbound = AgentStreamClient::new(channel).session(ReceiverStream::new(rx)).await?.into_inner();
        let haproxy = Arc::new(Mutex::new(Haproxy { answers: true, ..Default::default() }));
        let held = haproxy.clone();
        let task = tokio::spawn(async move {
            let mut topology = pb::AgentTopology::default();
            let mut heartbeat = tokio::time::interval(Duration::from_secs(2));
            loop {
                let reply = tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(pb::CoordinatorMessage { kind: Some(kind) })) => match kind {
                            CoordinatorKind::Full(full) => {
                                topology = full.topology.unwrap_or_default();
                                Some(AgentKind::Ack(pb::Ack { version: full.version }))
                            }
                            CoordinatorKind::Delta(delta) => {
                                topology = delta.topology.unwrap_or(topology);
                                Some(AgentKind::Ack(pb::Ack { version: delta.version }))
                            }
                            CoordinatorKind::ReportRequest(ask) => report(&held, &topology, ask.id).map(AgentKind::Report),
                            CoordinatorKind::Heartbeat(_) => None,
                        },
                        Ok(Some(_)) => None,
                        _ => break,
                    },
                    _ = heartbeat.tick() => Some(AgentKind::Heartbeat(pb::Heartbeat {})),
                };
                if let Some(reply) = reply {
                    if out.send(reply.into()).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(FakeAgent { haproxy, task })
    }

    fn haproxy(&self) -> std::sync::MutexGuard<'_, Haproxy> {
        self.haproxy.lock().expect("fake HAProxy lock")
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The report a fake agent sends: every server of its topology as its HAProxy holds it.
fn report(haproxy: &Mutex<Haproxy>, topology: &pb::AgentTopology, request_id: u64) -> Option<pb::AgentReport> {
    let mut haproxy = haproxy.lock().expect("fake HAProxy lock");
    if !haproxy.answers {
        return None;
    }
    let mut servers = Vec::new();
    for backend in &topology.backends {
        for server in &backend.servers {
            if haproxy.missing.contains(&server.name) {
                continue;
            }
            let (admin, status) = match pb::AdminState::try_from(server.admin) {
                Ok(pb::AdminState::AdminDrain) => ("drain", "DRAIN"),
                Ok(pb::AdminState::AdminMaint) => ("maint", "MAINT"),
                _ => ("ready", "UP"),
            };
            let sessions = haproxy.sessions.get(&server.name).copied().unwrap_or(0);
            if admin != "ready" && haproxy.sessions_end && sessions > 0 {
                haproxy.sessions.insert(server.name.clone(), sessions - 1);
            }
            servers.push(pb::ServerHealth {
                backend: backend.name.clone(),
                server: server.name.clone(),
                status: status.into(),
                check: "L4OK".into(),
                sessions,
                admin: admin.into(),
            });
        }
    }
    Some(pb::AgentReport { request_id, servers, ..Default::default() })
}

/// Cluster `c1` with LB hosts `lb-a` and `lb-b`, shard `web-1` with nodes `n0` and `n1`.
async fn setup(client: &Client) -> anyhow::Result<()> {
    let host = |id: &str, cluster: &str| {
        Kind::AddHost(pb::AddHost { id: id.into(), cluster: cluster.into(), address: id.into(), ..Default::default() })
    };
    let node = |name: &str, shard: &str, host: &str| {
        Kind::AddNode(pb::AddNode {
            name: name.into(),
            shard: shard.into(),
            host: host.into(),
            address: format!("{name}:80"),
            container: String::new(),
        })
    };
    let writes = [
        Kind::CreateCluster(pb::CreateCluster { name: "c1".into(), haproxy_container: String::new() }),
        host("lb-a", "c1"),
        host("lb-b", "c1"),
        Kind::CreateShard(pb::CreateShard { name: "web-1".into(), cluster: "c1".into() }),
        node("n0", "web-1", "lb-a"),
        node("n1", "web-1", "lb-b"),
    ];
    for write in writes {
        client.write(write).await?;
    }
    Ok(())
}

/// Connects both fake agents to the leader and waits until the leader lists them connected.
async fn agents(cluster: &TestCluster, client: &Client) -> anyhow::Result<(FakeAgent, FakeAgent)> {
    let leader = cluster.leader().await?;
    let a = FakeAgent::connect(cluster, leader, "lb-a").await?;
    let b = FakeAgent::connect(cluster, leader, "lb-b").await?;
    wait_for("both agents connected", WAIT, || async {
        let status = client.status().await.ok()?;
        let connected = status.agents.iter().filter(|agent| agent.connected).count();
        (connected == 2).then_some(())
    })
    .await?;
    Ok((a, b))
}

/// Runs the `lbfleet` binary against `cluster`, off the async runtime.
async fn lbfleet(cluster: &TestCluster, args: &[&str]) -> anyhow::Result<Output> {
    let endpoints: Vec<String> = cluster.running().iter().map(|id| cluster.address(*id)).collect();
    let mut command = std::process::Command::new(lbfleet_binary());
    command.arg("--endpoints").arg(endpoints.join(",")).arg("--tls-dir").arg(cluster.tls.path()).args(args);
    command.stdin(std::process::Stdio::null());
    tokio::task::spawn_blocking(move || command.output()).await?.context("cannot run lbfleet")
}

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The replicated admin state and server id of `node`.
async fn node_view(client: &Client, cluster: &str, node: &str) -> anyhow::Result<Option<pb::NodeView>> {
    Ok(client.cluster(cluster, None).await?.nodes.into_iter().find(|n| n.name == node))
}

fn drain() -> i32 {
    pb::AdminState::AdminDrain.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sessions_asks_every_lb_host_of_the_nodes_cluster() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 10_000).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let client = cluster.client_of(follower).await?;
    setup(&client).await?;
    let agent_a = FakeAgent::connect(&cluster, leader, "lb-a").await?;
    agent_a.haproxy().sessions.insert("n0".into(), 3);
    // Agent status is soft state of the leader, which serves the streams.
    let at_leader = cluster.client_of(leader).await?;
    wait_for("lb-a connected", WAIT, || async {
        at_leader.status().await.ok()?.agents.iter().any(|a| a.host == "lb-a" && a.connected).then_some(())
    })
    .await?;

    // Through a follower; lb-b has no agent connected, so it cannot answer.
    client.write(Kind::SetNodeState(pb::SetNodeState { name: "n0".into(), state: drain() })).await?;
    let reply = wait_for("lb-a to hold n0 in drain", WAIT, || async {
        let reply = client.node_sessions("n0", Duration::from_millis(500)).await.ok()?;
        (reply.hosts.iter().find(|h| h.host == "lb-a")?.admin == "drain").then_some(reply)
    })
    .await?;
    assert_eq!((reply.desired, reply.backend.as_str()), (drain(), "shard-web-1"));
    let hosts: Vec<(&str, bool, bool, &str, &str)> = reply
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.answered, h.found, h.admin.as_str(), h.status.as_str()))
        .collect();
    assert_eq!(hosts, [("lb-a", true, true, "drain", "DRAIN"), ("lb-b", false, false, "", "")]);
    assert_eq!(reply.hosts[0].sessions, 3);

    // An HAProxy without the server answers, and says so.
    agent_a.haproxy().missing.push("n0".into());
    let reply = client.node_sessions("n0", Duration::from_millis(500)).await?;
    assert!(reply.hosts[0].answered && !reply.hosts[0].found, "{reply:?}");

    // A frozen agent costs the poll no more than its timeout.
    agent_a.haproxy().answers = false;
    let started = std::time::Instant::now();
    let reply = client.node_sessions("n0", Duration::from_millis(300)).await?;
    assert!(!reply.hosts[0].answered, "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());

    // An unknown node is an error, and so is an admin state this build does not know.
    let error = client.node_sessions("nope", Duration::from_millis(300)).await.unwrap_err();
    assert_eq!(error.to_string(), "node \"nope\" not found");
    let error =
        client.write(Kind::SetNodeState(pb::SetNodeState { name: "nope".into(), state: drain() })).await.unwrap_err();
    assert_eq!(error.to_string(), "node \"nope\" not found");
    let error = client.write(Kind::SetNodeState(pb::SetNodeState { name: "n0".into(), state: 9 })).await.unwrap_err();
    assert!(error.to_string().contains("unknown node admin state 9"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_returns_once_every_lb_host_holds_no_session() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, 10_000).await?;
    let client = cluster.client().await?;
    setup(&client).await?;
    let (agent_a, agent_b) = agents(&cluster, &client).await?;
    for (agent, sessions) in [(&agent_a, 3), (&agent_b, 2)] {
        let mut haproxy = agent.haproxy();
        haproxy.sessions.insert("n0".into(), sessions);
        haproxy.sessions_end = true;
    }

    let output = lbfleet(&cluster, &["--timeout", "20", "node", "drain", "n0", "--wait"]).await?;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("set node n0 to drain (was ready)"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("n0 drained on all 2 LB hosts after "), "{stdout}");
    // Sessions ended one per poll: 3 of them took at least 3 polls after the first.
    let seconds: f64 = last.trim_start_matches("n0 drained on all 2 LB hosts after ").trim_end_matches(" s").parse()?;
    assert!(seconds >= 0.8, "{last}");
    assert_eq!(agent_a.haproxy().sessions["n0"], 0);
    let view = node_view(&client, "c1", "n0").await?.expect("n0 is still there");
    assert_eq!((view.admin, view.server_id), (drain(), 1));

    // maint and ready are replicated too; ready takes no wait.
    let output = lbfleet(&cluster, &["node", "maint", "n0"]).await?;
    assert!(output.status.success(), "{:?}", text(&output));
    assert_eq!(node_view(&client, "c1", "n0").await?.expect("n0").admin, i32::from(pb::AdminState::AdminMaint));
    let output = lbfleet(&cluster, &["node", "ready", "n0"]).await?;
    assert!(text(&output).0.contains("set node n0 to ready (was maint)"), "{:?}", text(&output));
    assert_eq!(node_view(&client, "c1", "n0").await?.expect("n0").admin, i32::from(pb::AdminState::AdminReady));

    // cluster show lists the admin state and server id of each node.
    lbfleet(&cluster, &["node", "drain", "n1"]).await?;
    let output = lbfleet(&cluster, &["cluster", "show", "c1"]).await?;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let row =
        |name: &str| stdout.lines().find(|l| l.starts_with(name)).map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(row("n0 ").expect("n0 listed")[4..6], ["1", "ready"], "{stdout}");
    assert_eq!(row("n1 ").expect("n1 listed")[4..6], ["2", "drain"], "{stdout}");

    // With --json, the write and the wait are one document.
    let output = lbfleet(&cluster, &["--json", "node", "drain", "n1", "--wait"]).await?;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let value: serde_json::Value = serde_json::from_str(&stdout).context("one JSON document")?;
    assert_eq!(value["writes"][0]["message"], "node n1 was already drain", "{stdout}");
    assert_eq!((value["drain"]["drained"].as_bool(), value["drain"]["end"].as_str()), (Some(true), Some("drained")));
    assert_eq!(value["drain"]["hosts"].as_array().map(Vec::len), Some(2), "{stdout}");

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_keeps_its_sessions_fails_the_wait_and_keeps_the_node() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, 10_000).await?;
    let client = cluster.client().await?;
    setup(&client).await?;
    let (agent_a, agent_b) = agents(&cluster, &client).await?;
    agent_a.haproxy().sessions_end = true;
    agent_a.haproxy().sessions.insert("n1".into(), 1);
    // lb-b's clients never finish.
    agent_b.haproxy().sessions.insert("n1".into(), 5);

    let started = std::time::Instant::now();
    let output = lbfleet(&cluster, &["--timeout", "2", "node", "drain", "n1", "--wait"]).await?;
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "stdout: {stdout}");
    assert!(
        stderr.contains("n1 not drained after 2.0 s: lb-b holds 5 sessions (drain, DRAIN); wait longer with --timeout"),
        "{stderr}"
    );
    assert!(!stderr.contains("lb-a"), "lb-a drained: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(8), "the wait took {:?}", started.elapsed());

    // remove drains first, and does not remove when the drain times out.
    let output = lbfleet(&cluster, &["--timeout", "1", "node", "remove", "n1"]).await?;
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "stdout: {stdout}");
    assert!(stderr.contains("node n1 not removed: n1 not drained after 1.0 s: lb-b holds 5 sessions"), "{stderr}");
    assert!(stderr.contains("--now"), "{stderr}");
    let view = node_view(&client, "c1", "n1").await?.expect("n1 must not be removed");
    assert_eq!(view.admin, drain(), "n1 stays out of rotation");

    // A frozen agent is named as such.
    agent_b.haproxy().answers = false;
    let output = lbfleet(&cluster, &["--timeout", "1", "node", "remove", "n1"]).await?;
    assert!(text(&output).1.contains("lb-b did not answer"), "{:?}", text(&output));

    // --now removes at once.
    let output = lbfleet(&cluster, &["node", "remove", "n1", "--now"]).await?;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("removed node n1 from shard web-1"), "{stdout}");
    assert!(node_view(&client, "c1", "n1").await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_drains_a_ready_node_then_removes_it() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, 10_000).await?;
    let client = cluster.client().await?;
    setup(&client).await?;
    let (agent_a, agent_b) = agents(&cluster, &client).await?;
    for agent in [&agent_a, &agent_b] {
        let mut haproxy = agent.haproxy();
        haproxy.sessions.insert("n0".into(), 2);
        haproxy.sessions_end = true;
    }
    let output = lbfleet(&cluster, &["--timeout", "20", "node", "remove", "n0"]).await?;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("set node n0 to drain (was ready)"), "{stdout}");
    assert!(lines[1].starts_with("n0 drained on all 2 LB hosts after "), "{stdout}");
    assert!(lines[2].starts_with("removed node n0 from shard web-1"), "{stdout}");
    assert!(node_view(&client, "c1", "n0").await?.is_none());

    // A new node takes the id above those left; n1 keeps its own.
    client
        .write(Kind::AddNode(pb::AddNode {
            name: "n2".into(),
            shard: "web-1".into(),
            host: "lb-a".into(),
            address: "n2:80".into(),
            container: String::new(),
        }))
        .await?;
    let ids: Vec<(String, u32)> =
        client.cluster("c1", None).await?.nodes.into_iter().map(|n| (n.name, n.server_id)).collect();
    assert_eq!(ids, [("n1".to_string(), 2), ("n2".to_string(), 3)]);

    let output = lbfleet(&cluster, &["node", "remove", "nope"]).await?;
    assert!(!output.status.success());
    assert!(text(&output).1.contains("node \"nope\" not found"), "{:?}", text(&output));
    Ok(())
}
