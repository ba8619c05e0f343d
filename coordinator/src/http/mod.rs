//! The coordinator's HTTP listener for operators (`--metrics-listen`): the shared `/metrics`,
//! `/healthz` and `/readyz`, and the fleet status page at `/`.

pub mod page;
pub mod readiness;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Html;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use lbfleet_proto::ops_http;
use lbfleet_proto::ops_http::OpsState;
use prometheus_client::registry::Registry;
use tracing::warn;

use crate::agents::registry::AgentRegistry;
use crate::raft::state_machine::SharedState;
use crate::raft::Raft;

/// What the listener reads: the node's Raft handle, committed index, applied state and agents.
#[derive(Clone)]
pub struct OpsSources {
    pub raft: Raft,
    pub committed: Arc<AtomicU64>,
    pub shared: Arc<SharedState>,
    pub agents: Arc<AgentRegistry>,
}

/// The routes of the listener: the shared ones with this node's metrics and readiness, and `/`.
pub fn router(sources: OpsSources, registry: Registry) -> Router {
    let state = OpsState {
        registry: Arc::new(registry),
        readiness: readiness::readiness(sources.raft.clone(), sources.committed.clone()),
    };
    ops_http::router(state).route("/", get(move || status_page(sources.clone())))
}

async fn status_page(sources: OpsSources) -> Response {
    match page::render(&sources) {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            warn!(%error, "cannot render the status page");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render the status page: {error}\n")).into_response()
        }
    }
}
