//! Every outbound call gives up on its own. A listener that accepts connections and never reads
//! them behaves like a frozen coordinator (a stopped process, a half-open connection): the CLI,
//! a follower forwarding to the leader, a Raft RPC and the agent's stream must each fail within
//! their deadline, with a message that names the endpoint.

use std::time::Duration;
use std::time::Instant;

use lbfleet_coordinator::api::forward::Forwarder;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_coordinator::raft::network::Network;
use lbfleet_coordinator::raft::Member;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::transport;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;
use lbfleet_tests::frozen::FrozenPeer;
use lbfleet_tests::inproc::TestCluster;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::VoteRequest;
use openraft::Vote;

/// Slack for scheduling on a busy machine; a hang would take forever, not this.
const SLACK: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_gives_up_on_a_frozen_coordinator_and_moves_on() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, 10_000).await?;
    let frozen = FrozenPeer::start().await?;
    let timeout = Duration::from_secs(2);

    let started = Instant::now();
    let error = match Client::connect(std::slice::from_ref(&frozen.address), &cluster.tls, None, timeout).await {
        Ok(_) => panic!("a frozen coordinator answered"),
        Err(error) => error.to_string(),
    };
    assert!(started.elapsed() < timeout + SLACK, "the CLI waited {:?}", started.elapsed());
    assert!(error.contains(&frozen.address) && error.contains("did not answer"), "{error}");

    // Endpoints are asked at once: a frozen node first in --endpoints does not hold up the leader's answer.
    let endpoints = [frozen.address.clone(), cluster.address(1)];
    let started = Instant::now();
    let client = Client::connect(&endpoints, &cluster.tls, None, timeout).await?;
    assert_eq!(client.endpoint(), cluster.address(1));
    assert!(started.elapsed() < timeout, "finding the leader took {:?}", started.elapsed());
    client.status().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_to_a_frozen_leader_fails_within_the_callers_deadline() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, 10_000).await?;
    let frozen = FrozenPeer::start().await?;
    let tls = Credentials::client(&cluster.tls, &Identity::new(Role::Coordinator, "1")?)?;
    let forwarder = Forwarder::new(tls);
    let deadline = Duration::from_secs(1);

    let started = Instant::now();
    let request = transport::request(pb::StatusRequest {}, deadline);
    let result = forwarder.forward(&frozen.address, request, |mut leader, r| async move { leader.status(r).await });
    let status = result.await.expect_err("a frozen leader answered");
    assert!(started.elapsed() < deadline + SLACK, "forwarding waited {:?}", started.elapsed());
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert!(status.message().contains(&frozen.address), "{}", status.message());

    // A request without a deadline of its own still gets the default one, not forever.
    assert!(transport::caller_deadline(&tonic::Request::new(())).is_none());
    assert!(lbfleet_coordinator::api::forward::DEFAULT_FORWARD_DEADLINE < Duration::from_secs(60));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_rpc_to_a_frozen_peer_fails_within_its_ttl() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, 10_000).await?;
    let frozen = FrozenPeer::start().await?;
    let tls = Credentials::client(&cluster.tls, &Identity::new(Role::Coordinator, "1")?)?;
    let mut connection = Network::new(tls).new_client(2, &Member::new(frozen.address.clone())).await;
    let ttl = Duration::from_secs(1);

    let started = Instant::now();
    let error = connection
        .vote(VoteRequest::new(Vote::new(1, 1), None), RPCOption::new(ttl))
        .await
        .expect_err("a frozen peer voted");
    assert!(started.elapsed() < ttl + SLACK, "the vote waited {:?}", started.elapsed());
    let error = format!("{error}");
    assert!(error.contains(&frozen.address), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_stream_gives_up_on_a_frozen_coordinator() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, 10_000).await?;
    let frozen = FrozenPeer::start().await?;
    let tls = Credentials::client(&cluster.tls, &Identity::new(Role::Agent, "lb-a")?)?;
    let hello = pb::Hello { host_id: "lb-a".into(), ..Default::default() };

    let started = Instant::now();
    let error = lbfleet_agent::session::open_stream(&frozen.address, &tls, hello).await.expect_err("stream opened");
    let deadline = lbfleet_agent::session::OPEN_DEADLINE;
    assert!(started.elapsed() < deadline + SLACK, "the agent waited {:?}", started.elapsed());
    // The TLS handshake timeout or the stream's own deadline, whichever comes first.
    let error = error.to_string();
    let timed_out = error.contains("no answer within") || error.contains("did not answer");
    assert!(error.contains(&frozen.address) && timed_out, "{error}");
    Ok(())
}
