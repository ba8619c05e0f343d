//! Client side of the Raft transport: openraft RPCs as postcard payloads over mTLS gRPC.

use lbfleet_proto::pb::raft_client::RaftClient;
use lbfleet_proto::pb::RaftPayload;
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
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;

use super::codec;
use super::Member;
use super::NodeId;
use super::TypeConfig;

/// Largest gRPC message on any lbfleet connection: bulk imports and snapshots are big.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Builds a lazily connecting mTLS channel to a coordinator's gRPC address.
pub fn channel(address: &str, tls: &ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("https://{address}"))?
        .tls_config(tls.clone())?
        .tcp_nodelay(true)
        .connect_timeout(std::time::Duration::from_secs(3))
        .http2_keep_alive_interval(std::time::Duration::from_secs(10))
        .connect_lazy())
}

/// Creates one connection per peer, authenticated with this node's coordinator certificate.
#[derive(Clone)]
pub struct Network {
    tls: ClientTlsConfig,
}

impl Network {
    /// A factory whose connections present `tls`'s client certificate.
    pub fn new(tls: ClientTlsConfig) -> Network {
        Network { tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection {
        let client = channel(&node.addr, &self.tls).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        Connection { target, client: client.map_err(|e| e.to_string()) }
    }
}

/// A connection to one peer.
pub struct Connection {
    target: NodeId,
    client: Result<RaftClient<Channel>, String>,
}

impl Connection {
    /// Sends one request and decodes the peer's `Result<Reply, E>`.
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
            Err(reason) => return Err(RPCError::Unreachable(Unreachable::new(&TransportError(reason.clone())))),
        };
        let data = codec::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut grpc_request = tonic::Request::new(RaftPayload { data });
        grpc_request.set_timeout(option.hard_ttl());
        let reply = match kind {
            Rpc::AppendEntries => client.append_entries(grpc_request).await,
            Rpc::InstallSnapshot => client.install_snapshot(grpc_request).await,
            Rpc::Vote => client.vote(grpc_request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            // The peer is down or unreachable: openraft backs off instead of retrying hot.
            tonic::Code::Unavailable | tonic::Code::Unknown => {
                RPCError::Unreachable(Unreachable::new(&TransportError(status.to_string())))
            }
            _ => RPCError::Network(NetworkError::new(&TransportError(status.to_string()))),
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

#[derive(Debug, thiserror::Error)]
#[error("raft transport: {0}")]
struct TransportError(String);

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
