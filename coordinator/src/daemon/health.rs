//! `grpc.health.v1` on the coordinator's gRPC port: SERVING while this node knows a leader (it
//! can then take reads and writes, forwarding them), NOT_SERVING while it does not. Load
//! balancers and orchestrators probe it with any standard gRPC health client.

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
