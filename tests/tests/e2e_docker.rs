//! End to end through real containers: a coordinator process, `lbfleet-agent` processes on the
//! host, HAProxy and nginx containers, and HTTP requests through HAProxy. Without Docker these
//! fail when `CI` is set and otherwise do nothing (the authorization test needs no Docker).
//! Needs `cargo build --bins` first (`tests/run.sh` does it).

use futures::StreamExt;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::pb::agent_message::Kind as AgentKind;
use lbfleet_proto::pb::agent_stream_client::AgentStreamClient;
use lbfleet_proto::pb::command::Kind;
use lbfleet_proto::pb::coordinator_message::Kind as CoordinatorKind;
use lbfleet_proto::tls::TlsDir;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;
use lbfleet_tests::docker_lab::add_agent_certs;
use lbfleet_tests::docker_lab::docker;
use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::http_get;
use lbfleet_tests::docker_lab::AgentOptions;
use lbfleet_tests::docker_lab::Fleet;
use lbfleet_tests::docker_lab::HaproxyBox;
use lbfleet_tests::docker_lab::HttpAnswer;
use lbfleet_tests::docker_lab::MAP_PATH;
use lbfleet_tests::docker_lab::READY;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::agent_binary;
use lbfleet_tests::process::lbfleet_binary;
use lbfleet_tests::process::ClusterOptions;
use lbfleet_tests::process::ProcessCluster;

const SHARD: &str = "web-1";
const BACKEND: &str = "shard-web-1";

async fn fleet(test: &str, hosts: &[(&str, AgentOptions)]) -> anyhow::Result<Fleet> {
    Fleet::start(test, ClusterOptions::default(), &agent_binary(), SHARD, hosts).await
}

async fn get(lb: &HaproxyBox, host_header: &str) -> anyhow::Result<HttpAnswer> {
    http_get(lb.http()?, host_header).await
}

/// Waits until `host_header` through `lb` reaches a node of SHARD; returns the node (`X-Served-By`).
async fn routed(lb: &HaproxyBox, host_header: &str) -> anyhow::Result<String> {
    wait_for(&format!("{host_header} to route through {}", lb.container), READY, || async {
        let answer = get(lb, host_header).await.ok()?;
        if answer.status != 200 || answer.header("x-shard") != Some(SHARD) {
            return None;
        }
        answer.header("x-served-by").map(str::to_owned)
    })
    .await
}

/// The number of lines of `log` that contain `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|line| line.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_routes_by_host_to_one_node_and_unbind_gives_404() -> anyhow::Result<()> {
    if !docker_available() {
        return Ok(());
    }
    let mut fleet = fleet("routing", &[("lb-a", AgentOptions::default())]).await?;
    let client = fleet.client().await?;
    fleet.add_nodes(&client, SHARD, &["node-0", "node-1"]).await?;
    fleet.bind(&client, "shop.example.com", SHARD).await?;
    let lb = &fleet.host("lb-a").lb;

    let node = routed(lb, "shop.example.com").await?;
    for host_header in
        ["shop.example.com", "SHOP.EXAMPLE.COM", "shop.example.com:80", "Shop.Example.Com:80", "shop.example.com"]
    {
        for _ in 0..3 {
            let answer = get(lb, host_header).await?;
            assert_eq!(answer.status, 200, "{host_header}: {answer:?}");
            assert_eq!(answer.header("x-shard"), Some(SHARD), "{host_header}: {answer:?}");
            assert_eq!(answer.header("x-served-by"), Some(node.as_str()), "{host_header} moved to another node");
        }
    }

    // Stickiness is per site: with enough sites both nodes serve some, each site always the same one.
    let sites: Vec<String> = (0..16).map(|i| format!("site-{i}.example.com")).collect();
    let entries = sites.iter().map(|fqdn| pb::BindEntry { fqdn: fqdn.clone(), shard: SHARD.into() }).collect();
    let version = client.write(Kind::BindBatch(pb::BindBatch { cluster: fleet.cluster.clone(), entries })).await?;
    fleet.wait_applied(&client, version.version).await?;
    let mut served_by = Vec::new();
    for site in &sites {
        served_by.push(routed(lb, site).await?);
    }
    for (site, node) in sites.iter().zip(&served_by) {
        let answer = get(lb, &site.to_uppercase()).await?;
        assert_eq!(answer.header("x-served-by"), Some(node.as_str()), "{site}: {answer:?}");
    }
    let mut nodes = served_by.clone();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes, ["node-0", "node-1"], "16 sites all hashed to one node: {served_by:?}");

    fleet.unbind(&client, "shop.example.com").await?;
    for host_header in ["shop.example.com", "SHOP.example.com:80"] {
        let answer = get(lb, host_header).await?;
        assert_eq!((answer.status, answer.body.as_str()), (404, "no such site\n"), "{host_header}: {answer:?}");
    }
    assert_eq!(get(lb, "never-bound.example.com").await?.status, 404);
    assert_eq!(get(lb, "site-3.example.com").await?.status, 200, "other sites keep routing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edits_show_in_lb_show_are_repaired_and_restarts_keep_routing() -> anyhow::Result<()> {
    if !docker_available() {
        return Ok(());
    }
    // lb-b reconciles only on connect and after a container restart, so a hand edit stays visible there.
    let slow = AgentOptions { reconcile_interval: 3600.0, ..AgentOptions::default() };
    let mut fleet = fleet("drift", &[("lb-a", AgentOptions::default()), ("lb-b", slow)]).await?;
    let client = fleet.client().await?;
    fleet.add_nodes(&client, SHARD, &["node-0"]).await?;
    let sites = ["a.example.com", "b.example.com", "c.example.com"];
    for site in sites {
        fleet.bind(&client, site, SHARD).await?;
    }
    for host in &fleet.hosts {
        for site in sites {
            routed(&host.lb, site).await?;
        }
    }

    // A `del map` typed by hand on lb-b: `lb show` marks the key as missing there, and only there.
    let lb_b = &fleet.host("lb-b").lb;
    let answer = lb_b.admin(&format!("del map {MAP_PATH} a.example.com")).await?;
    assert!(!lb_b.holds("a.example.com").await?, "del map answered {answer:?}");
    assert_eq!(get(lb_b, "a.example.com").await?.status, 404);
    let state = client.lb_state(&fleet.cluster, None).await?;
    let host = |id: &str| state.hosts.iter().find(|h| h.host == id).expect("host in lb show").clone();
    let (a, b) = (host("lb-a"), host("lb-b"));
    assert!(a.has_map && b.has_map, "{state:?}");
    assert!(a.differences.is_empty(), "lb-a: {:?}", a.differences);
    let marked: Vec<(&str, &str, &str)> = b
        .differences
        .iter()
        .map(|d| (d.fqdn.as_str(), d.desired_backend.as_str(), d.actual_backend.as_str()))
        .collect();
    assert_eq!(marked, [("a.example.com", BACKEND, "")]);
    assert_eq!(b.actual_entries, 2);

    // Restarting the containers: HAProxy comes back from the map file the agents wrote, with every binding.
    let containers: Vec<String> = fleet.hosts.iter().map(|h| h.lb.container.clone()).collect();
    let mut restart = vec!["restart", "-t", "2"];
    restart.extend(containers.iter().map(String::as_str));
    docker(&restart)?;
    for host in &fleet.hosts {
        for site in sites {
            routed(&host.lb, site).await?;
        }
    }

    // A `del map` on lb-a (reconcile every 0.5 s) is repaired and reported as drift.
    let lb_a = &fleet.host("lb-a").lb;
    lb_a.admin(&format!("del map {MAP_PATH} b.example.com")).await?;
    routed(lb_a, "b.example.com").await?;
    let drift = wait_for("lb-a to report the drift it repaired", READY, || async {
        let status = client.status().await.ok()?;
        let agent = status.agents.into_iter().find(|a| a.host == "lb-a")?;
        let drift = agent.report?.last_drift?;
        drift.examples.iter().any(|e| e == "missing b.example.com").then_some(drift)
    })
    .await?;
    assert!(drift.repaired, "{drift:?}");
    assert_eq!((drift.missing, drift.wrong, drift.extra, drift.duplicates), (1, 0, 0, 0), "{drift:?}");
    assert!(count(&fleet.host("lb-a").agent.log(), "drift repaired") >= 1, "{}", fleet.agent_logs());
    let state = client.lb_state(&fleet.cluster, Some("lb-a")).await?;
    assert!(state.hosts.iter().all(|h| h.has_map && h.differences.is_empty()), "{state:?}");

    for host in &mut fleet.hosts {
        assert!(host.agent.is_running(), "agent {} exited", host.id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_keeps_routing_while_the_coordinator_is_down_and_the_agent_reconnects() -> anyhow::Result<()> {
    if !docker_available() {
        return Ok(());
    }
    let mut fleet = fleet("outage", &[("lb-a", AgentOptions::default())]).await?;
    let client = fleet.client().await?;
    fleet.add_nodes(&client, SHARD, &["node-0"]).await?;
    let mut sites = vec!["one.example.com".to_owned(), "two.example.com".to_owned()];
    for site in &sites {
        fleet.bind(&client, site, SHARD).await?;
        routed(&fleet.host("lb-a").lb, site).await?;
    }
    drop(client);
    let connects = count(&fleet.host("lb-a").agent.log(), "connected to coordinator");

    fleet.coordinators.terminate(0);
    let ended = count(&fleet.host("lb-a").agent.log(), "coordinator stream ended");
    wait_for("the agent to retry twice", READY, || async {
        (count(&fleet.host("lb-a").agent.log(), "coordinator stream ended") >= ended + 2).then_some(())
    })
    .await?;
    let host = fleet.host_mut("lb-a");
    assert!(host.agent.is_running(), "the agent exited without its coordinator:\n{}", host.agent.log());
    for site in &sites {
        let answer = get(&host.lb, site).await?;
        assert_eq!((answer.status, answer.header("x-shard")), (200, Some(SHARD)), "{site}: {answer:?}");
    }
    // It keeps HAProxy right from the state it holds, coordinator or not.
    host.lb.admin(&format!("del map {MAP_PATH} one.example.com")).await?;
    routed(&host.lb, "one.example.com").await?;

    fleet.coordinators.restart(0)?;
    let client = fleet.client().await?;
    wait_for("the agent to reconnect", READY, || async {
        let logged = count(&fleet.host("lb-a").agent.log(), "connected to coordinator") > connects;
        let status = client.status().await.ok()?;
        (logged && status.agents.iter().any(|a| a.host == "lb-a" && a.connected)).then_some(())
    })
    .await?;
    sites.push("three.example.com".to_owned());
    fleet.bind(&client, &sites[2], SHARD).await?;
    for site in &sites {
        routed(&fleet.host("lb-a").lb, site).await?;
    }
    Ok(())
}

/// Opens an agent stream with `tls` and says hello as `host_id`; the first message back, or the refusal.
async fn open_stream(
    endpoint: &str,
    tls: std::sync::Arc<Credentials>,
    host_id: &str,
) -> anyhow::Result<Result<pb::CoordinatorMessage, tonic::Status>> {
    let channel = lbfleet_proto::transport::channel(endpoint, &tls)?;
    let hello: pb::AgentMessage =
        AgentKind::Hello(pb::Hello { host_id: host_id.into(), ..pb::Hello::default() }).into();
    // The stream stays open after the hello, as an agent's does.
    let outbound = futures::stream::iter([hello]).chain(futures::stream::pending());
    let mut client = AgentStreamClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let mut inbound = match client.session(outbound).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    Ok(match inbound.message().await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(tonic::Status::aborted("stream closed without a message")),
        Err(status) => Err(status),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_opens_only_its_own_hosts_stream() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(1)?;
    add_agent_certs(&lbfleet_binary(), &cluster.tls_dir, &["lb-a", "lb-b"])?;
    let client = cluster.client().await?;
    client
        .write(Kind::CreateCluster(pb::CreateCluster { name: "c1".into(), haproxy_container: String::new() }))
        .await?;
    for host in ["lb-a", "lb-b"] {
        let add = pb::AddHost { id: host.into(), cluster: "c1".into(), ..pb::AddHost::default() };
        client.write(Kind::AddHost(add)).await?;
    }
    let tls = TlsDir::new(&cluster.tls_dir);
    let lb_a = Credentials::client(&tls, &Identity::new(Role::Agent, "lb-a")?)?;
    let admin = Credentials::client(&tls, &tls.admin_identity(None)?)?;
    let endpoint = cluster.endpoint(0);

    // lb-a's certificate saying hello as lb-b, which is registered: refused.
    let refused = open_stream(&endpoint, lb_a.clone(), "lb-b").await?.expect_err("lb-a opened lb-b's stream");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("lb-b"), "{refused:?}");

    // The same certificate for its own host gets the host's full state.
    let first = open_stream(&endpoint, lb_a.clone(), "lb-a").await?.expect("lb-a opens its own stream");
    assert!(matches!(first.kind, Some(CoordinatorKind::Full(ref full)) if full.version > 0), "{first:?}");

    // An operator certificate is not an agent.
    let refused = open_stream(&endpoint, admin, "lb-a").await?.expect_err("an admin certificate opened a stream");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // And an agent certificate calls nothing else.
    let channel = lbfleet_proto::transport::channel(&endpoint, &lb_a)?;
    let refused = pb::admin_client::AdminClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .expect_err("an agent certificate called Admin.Status");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    Ok(())
}
