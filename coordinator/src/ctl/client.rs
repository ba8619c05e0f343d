//! The CLI's connection to the coordinator group: finds a reachable node, then the leader.
//!
//! Every call runs under a deadline the client enforces itself (`transport::within`), so a
//! coordinator that accepts connections and never answers fails the call in time.

use std::future::Future;
use std::time::Duration;
use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lbfleet_proto::backoff::Backoff;
use lbfleet_proto::pb;
use lbfleet_proto::pb::admin_client::AdminClient;
use lbfleet_proto::tls::TlsDir;
use lbfleet_proto::transport;
use lbfleet_proto::transport::AddressError;
use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;
use tonic::Request;
use tonic::Response;
use tonic::Status;

/// The longest the CLI waits for an endpoint to prove it answers.
const PROBE_DEADLINE: Duration = Duration::from_secs(3);
/// Bounds of the pause between resends of a write that was certainly not written.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No endpoint answered the probe.
    #[error("no coordinator reachable (tried {})", list(.tried))]
    Unreachable { tried: Vec<EndpointFailure> },
    /// `--endpoints` was empty.
    #[error("no endpoints given: set --endpoints or LBFLEET_ENDPOINTS")]
    NoEndpoints,
    /// The TLS directory cannot give the admin's configuration.
    #[error(transparent)]
    Tls(#[from] lbfleet_proto::tls::TlsError),
    /// One endpoint did not answer.
    #[error(transparent)]
    Endpoint(#[from] EndpointFailure),
    /// The node answered with an error (or did not answer in time).
    #[error("{}", .0.message())]
    Status(#[from] Status),
}

/// One endpoint that did not answer the probe, and what happened.
#[derive(Debug, thiserror::Error)]
pub enum EndpointFailure {
    /// The address is not one tonic can dial.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The node refused, failed, or did not answer in time.
    #[error("{endpoint}: {}", describe(.status))]
    Status {
        endpoint: String,
        #[source]
        status: Status,
    },
}

fn list(failures: &[EndpointFailure]) -> String {
    failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
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
    /// Connects with the admin identity found in `tls_dir` (or the one named), to the leader
    /// when it can be found, else to the first endpoint that answers.
    pub async fn connect(
        endpoints: &[String],
        tls_dir: &TlsDir,
        identity: Option<&str>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let admin = tls_dir.admin_identity(identity)?;
        let tls = tls_dir.client_config(&admin)?;
        let (client, status) = Self::probe_all(endpoints, &tls, timeout).await?;
        // The leader may be known only by the address its peers use; talk to it when we can,
        // followers would forward anyway. A listed leader already failed its probe.
        let named = status.has_leader && !status.leader_address.is_empty();
        let unprobed = !endpoints.contains(&status.leader_address);
        if named && unprobed && status.current_leader != status.node_id {
            if let Ok((leader, _)) = Self::probe(&status.leader_address, &tls, timeout).await {
                return Ok(leader);
            }
        }
        Ok(client)
    }

    /// Asks every endpoint at once and settles for the first leader that answers, so a frozen
    /// or dead node costs nothing wherever it stands in the list; without a leader, the first
    /// endpoint in the given order that answered.
    async fn probe_all(
        endpoints: &[String],
        tls: &ClientTlsConfig,
        timeout: Duration,
    ) -> Result<(Client, pb::StatusReply), ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let mut pending: FuturesUnordered<_> = endpoints
            .iter()
            .enumerate()
            .map(|(position, endpoint)| async move { (position, Self::probe(endpoint, tls, timeout).await) })
            .collect();
        let mut answers = Vec::new();
        let mut tried = Vec::new();
        while let Some((position, answer)) = pending.next().await {
            match answer {
                Ok((client, status)) if status.has_leader && status.current_leader == status.node_id => {
                    return Ok((client, status));
                }
                Ok(answered) => answers.push((position, answered)),
                Err(failure) => tried.push((position, failure)),
            }
        }
        answers.sort_by_key(|(position, _)| *position);
        if let Some((_, answered)) = answers.into_iter().next() {
            return Ok(answered);
        }
        tried.sort_by_key(|(position, _)| *position);
        Err(ClientError::Unreachable { tried: tried.into_iter().map(|(_, failure)| failure).collect() })
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
                Err(failure) => tried.push(failure),
            }
        }
        Err(ClientError::Unreachable { tried })
    }

    /// Opens `endpoint` and proves it answers: a status call checks the TLS handshake and
    /// authorization, not just TCP.
    pub async fn open(endpoint: &str, tls: &ClientTlsConfig, timeout: Duration) -> Result<Client, EndpointFailure> {
        Ok(Self::probe(endpoint, tls, timeout).await?.0)
    }

    /// Opens `endpoint` and returns its status with it.
    async fn probe(
        endpoint: &str,
        tls: &ClientTlsConfig,
        timeout: Duration,
    ) -> Result<(Client, pb::StatusReply), EndpointFailure> {
        let admin = transport::admin_client(transport::channel(endpoint, tls)?);
        let client = Client { admin, tls: tls.clone(), endpoint: endpoint.to_string(), timeout };
        let deadline = timeout.min(PROBE_DEADLINE);
        match client.call(pb::StatusRequest {}, deadline, |mut admin, r| async move { admin.status(r).await }).await {
            Ok(status) => Ok((client, status)),
            Err(status) => Err(EndpointFailure::Status { endpoint: endpoint.to_string(), status }),
        }
    }

    /// The TLS settings this client authenticates with.
    pub fn tls(&self) -> &ClientTlsConfig {
        &self.tls
    }

    /// One call to this client's node that gives up after `deadline`, whatever the node does.
    async fn call<Req, Reply, Call, Fut>(&self, message: Req, deadline: Duration, call: Call) -> Result<Reply, Status>
    where
        Call: FnOnce(AdminClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Reply>, Status>>,
    {
        let request = transport::request(message, deadline);
        let endpoint = format!("coordinator {}", self.endpoint);
        let reply = transport::within(&endpoint, deadline, call(self.admin.clone(), request)).await?;
        Ok(reply.into_inner())
    }

    /// Commits one command, resending it while the group answers that nothing was written.
    pub async fn write(&self, kind: pb::command::Kind) -> Result<pb::WriteReply, ClientError> {
        let request = pb::WriteRequest { command: Some(kind.into()) };
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = self.call(request.clone(), left, |mut admin, r| async move { admin.write(r).await }).await;
            match attempt {
                Ok(reply) => return Ok(reply),
                Err(status) if transport::is_retryable(&status) => {
                    let pause = backoff.next_delay();
                    if Instant::now() + pause >= deadline {
                        return Err(status.into());
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// A linearizable view of one cluster.
    pub async fn cluster(&self, cluster: &str, host: Option<&str>) -> Result<pb::ClusterView, ClientError> {
        let request =
            pb::GetClusterRequest { cluster: cluster.to_string(), host: host.unwrap_or_default().to_string() };
        Ok(self.call(request, self.timeout, |mut admin, r| async move { admin.get_cluster(r).await }).await?)
    }

    /// A linearizable list of the clusters.
    pub async fn clusters(&self) -> Result<pb::ClusterList, ClientError> {
        let request = pb::ListClustersRequest {};
        Ok(self.call(request, self.timeout, |mut admin, r| async move { admin.list_clusters(r).await }).await?)
    }

    /// The Raft status of the node this client talks to.
    pub async fn status(&self) -> Result<pb::StatusReply, ClientError> {
        Ok(self.call(pb::StatusRequest {}, self.timeout, |mut admin, r| async move { admin.status(r).await }).await?)
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
        // The node answers when its own wait ends; the margin covers the answer's way back.
        let deadline = timeout + Duration::from_secs(5);
        Ok(self.call(request, deadline, |mut admin, r| async move { admin.wait_applied(r).await }).await?)
    }

    /// The desired map of a cluster next to what each LB host holds.
    pub async fn lb_state(&self, cluster: &str, host: Option<&str>) -> Result<pb::LbStateReply, ClientError> {
        let request = pb::LbStateRequest { cluster: cluster.to_string(), host: host.unwrap_or_default().to_string() };
        Ok(self.call(request, self.timeout, |mut admin, r| async move { admin.lb_state(r).await }).await?)
    }

    /// Adds or removes a Raft member.
    pub async fn change_membership(
        &self,
        change: pb::change_membership_request::Change,
    ) -> Result<pb::StatusReply, ClientError> {
        let request: pb::ChangeMembershipRequest = change.into();
        Ok(self.call(request, self.timeout, |mut admin, r| async move { admin.change_membership(r).await }).await?)
    }
}

/// One line for a failed connection attempt.
fn describe(status: &Status) -> String {
    match status.code() {
        tonic::Code::Unavailable => format!("unavailable ({})", status.message()),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            format!("refused our certificate: {}", status.message())
        }
        _ => status.message().to_string(),
    }
}
