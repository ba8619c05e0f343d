//! Server side of the Raft transport; only coordinator certificates may call it.

use lbfleet_proto::identity::authorize;
use lbfleet_proto::pb;
use lbfleet_proto::pb::RaftPayload;
use lbfleet_proto::Role;
use serde::Serialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::codec;
use super::Raft;

/// Hands incoming Raft RPCs to the local openraft instance.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    /// Serves `raft`.
    pub fn new(raft: Raft) -> RaftService {
        RaftService { raft }
    }
}

fn decode<T: serde::de::DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    authorize(&request, &[Role::Coordinator])?;
    codec::decode(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("malformed raft payload: {e}")))
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftPayload>, Status> {
    let data = codec::encode(result).map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let request = decode(request)?;
        reply(&self.raft.append_entries(request).await)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let request = decode(request)?;
        reply(&self.raft.install_snapshot(request).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let request = decode(request)?;
        reply(&self.raft.vote(request).await)
    }
}
