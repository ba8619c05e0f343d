//! Client side of the Raft transport: openraft RPCs as postcard payloads over mTLS gRPC.

use std::sync::Arc;

use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb::raft_client::RaftClient;
use lbfleet_proto::pb::RaftPayload;
use lbfleet_proto::transport;
use lbfleet_proto::transport::AddressError;
use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::codec;
use super::Member;
use super::NodeId;
use super::TypeConfig;

/// Creates one connection per peer, authenticated with this node's coordinator certificate.
#[derive(Clone)]
pub struct Network {
    credentials: Arc<Credentials>,
}

impl Network {
    /// A factory whose connections present this node's certificate, as renewed.
    pub fn new(credentials: Arc<Credentials>) -> Network {
        Network { credentials }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection {
        let client = transport::channel(&node.addr, &self.credentials).map(transport::raft_client).map_err(Arc::new);
        Connection { target, address: node.addr.clone(), client }
    }
}

/// A connection to one peer.
pub struct Connection {
    target: NodeId,
    address: String,
    client: Result<RaftClient<Channel>, Arc<AddressError>>,
}

/// A Raft RPC the peer did not answer, or answered with a transport error.
#[derive(Debug, thiserror::Error)]
#[error("raft RPC to node {target} at {address} failed")]
struct RpcFailed {
    target: NodeId,
    address: String,
    #[source]
    status: tonic::Status,
}

impl Connection {
    /// Sends one request and decodes the peer's `Result<Reply, E>`, giving up after the RPC's hard TTL.
    async fn call<Req, Reply, E>(
        &mut self,
        kind: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, Member, E>>
    where
        Req: Serialize,
        Reply: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(error) => return Err(RPCError::Unreachable(Unreachable::new(error.as_ref()))),
        };
        let data = codec::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let deadline = option.hard_ttl();
        let grpc_request = transport::request(RaftPayload { data }, deadline);
        let endpoint = format!("node {} at {}", self.target, self.address);
        let reply = match kind {
            Rpc::AppendEntries => transport::within(&endpoint, deadline, client.append_entries(grpc_request)).await,
            Rpc::InstallSnapshot => transport::within(&endpoint, deadline, client.install_snapshot(grpc_request)).await,
            Rpc::Vote => transport::within(&endpoint, deadline, client.vote(grpc_request)).await,
        };
        let reply = reply.map_err(|status| {
            let code = status.code();
            let failed = RpcFailed { target: self.target, address: self.address.clone(), status };
            match code {
                // The peer is down, frozen or unreachable: openraft backs off instead of retrying hot.
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded => {
                    RPCError::Unreachable(Unreachable::new(&failed))
                }
                _ => RPCError::Network(NetworkError::new(&failed)),
            }
        })?;
        let result: Result<Reply, E> =
            codec::decode(&reply.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

enum Rpc {
    AppendEntries,
    InstallSnapshot,
    Vote,
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(Rpc::AppendEntries, &request, &option).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(Rpc::InstallSnapshot, &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &request, &option).await
    }
}
