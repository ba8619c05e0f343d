//! The standard gRPC services on real coordinator processes: `grpc.health.v1` SERVING on every
//! node of a group with a leader, NOT_SERVING on a node left without one, unknown services
//! refused; reflection listing every service on the port.

use std::sync::Arc;
use std::time::Duration;

use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::transport;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::ProcessCluster;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// How long a node may take to notice that its leader is gone (election timeouts are 400-800 ms).
const NOTICE: Duration = Duration::from_secs(15);

/// `Health/Check` of `service` on `endpoint`, as any gRPC health client asks it.
async fn check(endpoint: &str, tls: &Arc<Credentials>, service: &str) -> Result<ServingStatus, tonic::Status> {
    let channel = transport::channel(endpoint, tls).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = HealthCheckRequest { service: service.to_owned() };
    let reply = HealthClient::new(channel).check(request).await?.into_inner();
    Ok(reply.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_with_a_leader_not_serving_without() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3)?;
    let client = cluster.client().await?;
    let leader = cluster.leader_index(&client).await?;
    let tls_dir = cluster.tls();
    let tls = Credentials::client(&tls_dir, &tls_dir.admin_identity(None)?)?;

    for index in 0..cluster.size() {
        let endpoint = cluster.endpoint(index);
        // A follower may learn of the leader a moment after the leader itself.
        wait_for(&format!("node {index} to report SERVING"), NOTICE, || async {
            (check(&endpoint, &tls, "").await.ok()? == ServingStatus::Serving).then_some(())
        })
        .await?;
        assert_eq!(check(&endpoint, &tls, "lbfleet.v1.Admin").await?, ServingStatus::Serving);
        let unknown = check(&endpoint, &tls, "no.such.Service").await.expect_err("an unknown service is refused");
        assert_eq!(unknown.code(), tonic::Code::NotFound);
    }

    // Two of three gone: the last node can elect no leader and must say so.
    let survivor = (leader + 1) % cluster.size();
    for index in (0..cluster.size()).filter(|i| *i != survivor) {
        cluster.kill(index);
    }
    let endpoint = cluster.endpoint(survivor);
    wait_for("the survivor to report NOT_SERVING", NOTICE, || async {
        (check(&endpoint, &tls, "").await.ok()? == ServingStatus::NotServing).then_some(())
    })
    .await?;
    assert_eq!(check(&endpoint, &tls, "lbfleet.v1.Admin").await?, ServingStatus::NotServing);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service_on_the_port() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(1)?;
    cluster.client().await?;
    let tls_dir = cluster.tls();
    let tls = Credentials::client(&tls_dir, &tls_dir.admin_identity(None)?)?;
    let channel = transport::channel(&cluster.endpoint(0), &tls)?;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies =
        ServerReflectionClient::new(channel).server_reflection_info(tokio_stream::iter([request])).await?.into_inner();
    let reply = replies.message().await?.expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        anyhow::bail!("not a service list: {:?}", reply.message_response);
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for expected in ["grpc.health.v1.Health", "lbfleet.v1.Admin", "lbfleet.v1.AgentStream", "lbfleet.v1.Raft"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    Ok(())
}
