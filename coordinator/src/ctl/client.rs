//! The CLI's connection to the coordinator group: finds a reachable node, then the leader.

use std::time::Duration;
use std::time::Instant;

use lbfleet_proto::pb;
use lbfleet_proto::pb::admin_client::AdminClient;
use lbfleet_proto::tls::TlsDir;
use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;

use crate::api::admin::RETRY_HINT;
use crate::raft::network::channel;
use crate::raft::network::MAX_MESSAGE_BYTES;

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no coordinator reachable (tried {})", .tried.join("; "))]
    Unreachable { tried: Vec<String> },
    #[error("no endpoints given: set --endpoints or LBFLEET_ENDPOINTS")]
    NoEndpoints,
    #[error(transparent)]
    Tls(#[from] lbfleet_proto::tls::TlsError),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
}

/// A client connected to one coordinator node, the leader when it could be found.
pub struct Client {
    admin: AdminClient<Channel>,
    tls: ClientTlsConfig,
    /// The endpoint this client talks to.
    pub endpoint: String,
    timeout: Duration,
}

impl Client {
    /// Connects with the admin identity found in `tls_dir` (or the one named).
    pub async fn connect(
        endpoints: &[String],
        tls_dir: &TlsDir,
        identity: Option<&str>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let admin = tls_dir.admin_identity(identity)?;
        let tls = tls_dir.client_config(&admin)?;
        let mut client = Self::first_reachable(endpoints, &tls, timeout).await?;
        // Talk to the leader directly when we can; followers would forward anyway.
        if let Ok(status) = client.status().await {
            if status.has_leader && !status.leader_address.is_empty() && status.leader_address != client.endpoint {
                if let Ok(leader) = Self::open(&status.leader_address, &tls, timeout).await {
                    client = leader;
                }
            }
        }
        Ok(client)
    }

    /// Connects to the first endpoint that answers, in the order given.
    pub async fn first_reachable(
        endpoints: &[String],
        tls: &ClientTlsConfig,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let mut tried = Vec::new();
        for endpoint in endpoints {
            match Self::open(endpoint, tls, timeout).await {
                Ok(client) => return Ok(client),
                Err(error) => tried.push(format!("{endpoint}: {error}")),
            }
        }
        Err(ClientError::Unreachable { tried })
    }

    async fn open(endpoint: &str, tls: &ClientTlsConfig, timeout: Duration) -> Result<Client, String> {
        let lazy = channel(endpoint, tls).map_err(|e| e.to_string())?;
        let mut admin = AdminClient::new(lazy)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        // A status call proves the TLS handshake and authorization, not just TCP.
        let mut probe = tonic::Request::new(pb::StatusRequest {});
        probe.set_timeout(timeout.min(Duration::from_secs(3)));
        admin.status(probe).await.map_err(|status| describe(&status))?;
        Ok(Client { admin, tls: tls.clone(), endpoint: endpoint.to_string(), timeout })
    }

    /// The TLS settings this client authenticates with.
    pub fn tls(&self) -> &ClientTlsConfig {
        &self.tls
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Commits one command, retrying while the group has no leader.
    pub async fn write(&self, kind: pb::command::Kind) -> Result<pb::WriteReply, ClientError> {
        let request = pb::WriteRequest { command: Some(pb::Command { kind: Some(kind) }) };
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.admin.clone().write(self.request(request.clone())).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if retryable(&status) && Instant::now() + backoff < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// A linearizable view of one cluster.
    pub async fn cluster(&self, cluster: &str, host: Option<&str>) -> Result<pb::ClusterView, ClientError> {
        let request =
            pb::GetClusterRequest { cluster: cluster.to_string(), host: host.unwrap_or_default().to_string() };
        Ok(self.admin.clone().get_cluster(self.request(request)).await?.into_inner())
    }

    /// A linearizable list of the clusters.
    pub async fn clusters(&self) -> Result<pb::ClusterList, ClientError> {
        Ok(self.admin.clone().list_clusters(self.request(pb::ListClustersRequest {})).await?.into_inner())
    }

    /// The Raft status of the node this client talks to.
    pub async fn status(&self) -> Result<pb::StatusReply, ClientError> {
        Ok(self.admin.clone().status(self.request(pb::StatusRequest {})).await?.into_inner())
    }

    /// Waits until every LB host of `cluster` acknowledged `version`.
    pub async fn wait_applied(
        &self,
        cluster: &str,
        version: u64,
        timeout: Duration,
    ) -> Result<pb::WaitAppliedReply, ClientError> {
        let request =
            pb::WaitAppliedRequest { cluster: cluster.to_string(), version, timeout_ms: timeout.as_millis() as u64 };
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout + Duration::from_secs(5));
        Ok(self.admin.clone().wait_applied(request).await?.into_inner())
    }

    /// The desired map of a cluster next to what each LB host holds.
    pub async fn lb_state(&self, cluster: &str, host: Option<&str>) -> Result<pb::LbStateReply, ClientError> {
        let request = pb::LbStateRequest { cluster: cluster.to_string(), host: host.unwrap_or_default().to_string() };
        Ok(self.admin.clone().lb_state(self.request(request)).await?.into_inner())
    }

    /// Adds or removes a Raft member.
    pub async fn change_membership(
        &self,
        change: pb::change_membership_request::Change,
    ) -> Result<pb::StatusReply, ClientError> {
        let request = pb::ChangeMembershipRequest { change: Some(change) };
        Ok(self.admin.clone().change_membership(self.request(request)).await?.into_inner())
    }
}

/// Whether a failed write certainly did not reach the log, so sending it again is safe.
fn retryable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.message().ends_with(RETRY_HINT)
}

/// One line for a failed connection attempt.
fn describe(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unavailable => format!("unavailable ({})", status.message()),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            format!("refused our certificate: {}", status.message())
        }
        _ => status.message().to_string(),
    }
}
