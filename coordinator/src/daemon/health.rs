//! The standard gRPC services beside lbfleet's own on the coordinator's port: `grpc.health.v1`,
//! SERVING while this node knows a leader (it can then take reads and writes, forwarding them)
//! and NOT_SERVING while it does not, for load balancers and orchestrators; and reflection, for
//! generic clients.

use lbfleet_proto::pb;
use tokio::task::JoinHandle;
use tonic_health::server::health_reporter;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::raft::Raft;

/// The names health is reported under: the whole server ("") and the operator API.
const SERVICES: [&str; 2] = ["", pb::admin_server::SERVICE_NAME];

/// The health service to serve, and the task that keeps it in step with Raft's view of a leader.
pub fn health_service(
    raft: &Raft,
) -> (tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>, JoinHandle<()>) {
    let (reporter, service) = health_reporter();
    let task = tokio::spawn(follow_leadership(raft.clone(), reporter));
    (service, task)
}

/// Reports SERVING when a leader is known and NOT_SERVING when not, at every change; ends with Raft.
async fn follow_leadership(raft: Raft, reporter: HealthReporter) {
    let mut metrics = raft.metrics();
    let mut reported = None;
    loop {
        let status = match metrics.borrow_and_update().current_leader {
            Some(_) => ServingStatus::Serving,
            None => ServingStatus::NotServing,
        };
        if reported != Some(status) {
            for service in SERVICES {
                reporter.set_service_status(service, status).await;
            }
            reported = Some(status);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// gRPC reflection (v1): lists and describes the services on this port, so generic clients
/// such as grpcurl need no copy of the .proto files.
pub fn reflection_service() -> Result<
    tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<
        impl tonic_reflection::pb::v1::server_reflection_server::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}
