//! The CLI's connection to the coordinator group: finds a reachable node, then the leader.
//!
//! Every call runs under a deadline the client enforces itself (`transport::within`), so a
//! coordinator that accepts connections and never answers fails the call in time.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lbfleet_proto::backoff::Backoff;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::pb::admin_client::AdminClient;
use lbfleet_proto::tls::TlsDir;
use lbfleet_proto::transport;
use lbfleet_proto::transport::AddressError;
use tonic::transport::Channel;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use super::bindings::BindingsReader;

/// The longest the CLI waits for an endpoint to prove it answers.
const PROBE_DEADLINE: Duration = Duration::from_secs(3);
/// Once a follower answered, how long the other endpoints get to answer as the leader.
const LEADER_GRACE: Duration = Duration::from_millis(300);
/// How long one attempt of a small write may take before its node counts as failed.
const WRITE_ATTEMPT_DEADLINE: Duration = Duration::from_secs(2);
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
    /// Every attempt of a write failed or timed out until `--timeout` ran out. Whether it
    /// committed is unknown: a leader cut off from its majority cannot commit, and one that
    /// stopped answering may have.
    #[error(
        "write not acknowledged within {:.1}s (last attempt: {}): no leader with a majority answered; \
         it may still be applied, so read it back or resend it",
        .within.as_secs_f64(),
        .last.message()
    )]
    NotAcknowledged {
        within: Duration,
        #[source]
        last: Status,
    },
    /// A stream broke its own promises (one version, order, the count it announced).
    #[error("{endpoint} sent a broken bindings stream: {reason}")]
    BrokenStream { endpoint: String, reason: String },
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

/// A client of the coordinator group: talks to one node (the leader when it could be found)
/// and moves to another when that node stops answering.
pub struct Client {
    /// Every endpoint given, where a new leader is looked for.
    endpoints: Vec<String>,
    tls: Arc<Credentials>,
    timeout: Duration,
    node: Mutex<Node>,
    /// Writes apply only to the state at this version (`--if-version`).
    if_version: Option<u64>,
}

/// The node a client talks to.
#[derive(Clone)]
struct Node {
    endpoint: String,
    admin: AdminClient<Channel>,
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
        let tls = Self::credentials(tls_dir, identity)?;
        let node = Self::find_leader(endpoints, &tls, timeout).await?;
        Ok(Client { endpoints: endpoints.to_vec(), tls, timeout, node: Mutex::new(node), if_version: None })
    }

    /// The leader if it can be found, else the first endpoint (in the order given) that answered.
    /// The whole search, both rounds, stays within `timeout`.
    async fn find_leader(endpoints: &[String], tls: &Arc<Credentials>, timeout: Duration) -> Result<Node, ClientError> {
        let deadline = Instant::now() + timeout;
        let (node, status) = Self::probe_all(endpoints, tls, timeout).await?;
        // The leader may be known only by the address its peers use; talk to it when we can,
        // followers would forward anyway. A listed leader already failed its probe.
        let named = status.has_leader && !status.leader_address.is_empty();
        let unprobed = !endpoints.contains(&status.leader_address);
        let left = deadline.saturating_duration_since(Instant::now());
        if named && unprobed && status.current_leader != status.node_id && !left.is_zero() {
            if let Ok((leader, _)) = Self::probe(&status.leader_address, tls, left).await {
                return Ok(leader);
            }
        }
        Ok(node)
    }

    /// Asks every endpoint at once and settles for the first leader that answers, so a frozen
    /// or dead node costs nothing wherever it stands in the list. Once some node answered, the
    /// others get [`LEADER_GRACE`] to turn out to be the leader; then the first endpoint in the
    /// given order that answered is taken (a follower forwards to the leader).
    async fn probe_all(
        endpoints: &[String],
        tls: &Arc<Credentials>,
        timeout: Duration,
    ) -> Result<(Node, pb::StatusReply), ClientError> {
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
        loop {
            let next = if answers.is_empty() {
                pending.next().await
            } else {
                tokio::time::timeout(LEADER_GRACE, pending.next()).await.unwrap_or(None)
            };
            let Some((position, answer)) = next else { break };
            match answer {
                Ok((node, status)) if status.has_leader && status.current_leader == status.node_id => {
                    return Ok((node, status));
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

    /// Credentials of the admin identity in `tls_dir` (or the one named).
    pub fn credentials(tls_dir: &TlsDir, identity: Option<&str>) -> Result<Arc<Credentials>, ClientError> {
        let admin = tls_dir.admin_identity(identity)?;
        Ok(Credentials::client(tls_dir, &admin)?)
    }

    /// Connects to the first endpoint that answers, in the order given.
    pub async fn first_reachable(
        endpoints: &[String],
        tls: &Arc<Credentials>,
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
    pub async fn open(endpoint: &str, tls: &Arc<Credentials>, timeout: Duration) -> Result<Client, EndpointFailure> {
        let (node, _) = Self::probe(endpoint, tls, timeout).await?;
        Ok(Client {
            endpoints: vec![endpoint.to_string()],
            tls: tls.clone(),
            timeout,
            node: Mutex::new(node),
            if_version: None,
        })
    }

    /// The status of the node at `endpoint`, from the one call that also proves it answers.
    pub async fn status_of(
        endpoint: &str,
        tls: &Arc<Credentials>,
        timeout: Duration,
    ) -> Result<pb::StatusReply, EndpointFailure> {
        Ok(Self::probe(endpoint, tls, timeout).await?.1)
    }

    /// Opens `endpoint` and returns its status with it.
    async fn probe(
        endpoint: &str,
        tls: &Arc<Credentials>,
        timeout: Duration,
    ) -> Result<(Node, pb::StatusReply), EndpointFailure> {
        let admin = transport::admin_client(transport::channel(endpoint, tls)?);
        let node = Node { endpoint: endpoint.to_string(), admin };
        let deadline = timeout.min(PROBE_DEADLINE);
        match node.call(pb::StatusRequest {}, deadline, |mut admin, r| async move { admin.status(r).await }).await {
            Ok(status) => Ok((node, status)),
            Err(status) => Err(EndpointFailure::Status { endpoint: endpoint.to_string(), status }),
        }
    }

    /// The TLS settings this client authenticates with.
    pub fn tls(&self) -> &Arc<Credentials> {
        &self.tls
    }

    /// The endpoint this client talks to now.
    pub fn endpoint(&self) -> String {
        self.node().endpoint
    }

    fn node(&self) -> Node {
        self.node.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// One call to the current node that gives up after `deadline`, whatever the node does.
    async fn call<Req, Reply, Call, Fut>(&self, message: Req, deadline: Duration, call: Call) -> Result<Reply, Status>
    where
        Call: FnOnce(AdminClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Reply>, Status>>,
    {
        self.node().call(message, deadline, call).await
    }

    /// Looks for the leader again after the current node failed; keeps the current node when
    /// no other answers.
    async fn move_on(&self, left: Duration) {
        if let Ok(node) = Self::find_leader(&self.endpoints, &self.tls, left.min(self.timeout)).await {
            *self.node.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = node;
        }
    }

    /// Commits one command. It is sent again while the group answers that nothing was written,
    /// and, for binds, when the node failed under it: a bind sent twice is a bind ("already
    /// bound"), so a leader that died or froze mid-write costs a retry, not an error.
    pub async fn write(&self, kind: pb::command::Kind) -> Result<pb::WriteReply, ClientError> {
        // Setting an admin state twice leaves it set, as a bind sent twice is a bind.
        let resend_when_unsure = matches!(
            kind,
            pb::command::Kind::Bind(_) | pb::command::Kind::BindBatch(_) | pb::command::Kind::SetNodeState(_)
        );
        // A bulk batch may take long to commit; anything else answers in milliseconds unless its node failed.
        let attempt_cap = match kind {
            pb::command::Kind::BindBatch(_) => self.timeout,
            _ => WRITE_ATTEMPT_DEADLINE,
        };
        let request = pb::WriteRequest {
            command: Some(kind.into()),
            if_version: self.if_version.unwrap_or(0),
            has_if_version: self.if_version.is_some(),
        };
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = left.min(attempt_cap);
            let status =
                match self.call(request.clone(), attempt, |mut admin, r| async move { admin.write(r).await }).await {
                    Ok(reply) => return Ok(reply),
                    Err(status) if transport::is_retryable(&status) => status,
                    Err(status) if resend_when_unsure && node_failed(&status) => {
                        self.move_on(deadline.saturating_duration_since(Instant::now())).await;
                        status
                    }
                    Err(status) => return Err(status.into()),
                };
            let pause = backoff.next_delay();
            if Instant::now() + pause >= deadline {
                return Err(ClientError::NotAcknowledged { within: self.timeout, last: status });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Makes every write of this client conditional on the state still being at `version`.
    pub fn with_if_version(self, version: Option<u64>) -> Client {
        Client { if_version: version, ..self }
    }

    /// A linearizable view of one cluster.
    pub async fn cluster(&self, cluster: &str, host: Option<&str>) -> Result<pb::ClusterView, ClientError> {
        self.get_cluster(cluster, host, false).await
    }

    /// A linearizable view of one cluster's topology, without its bindings: small at any map size.
    pub async fn topology(&self, cluster: &str, host: Option<&str>) -> Result<pb::ClusterView, ClientError> {
        self.get_cluster(cluster, host, true).await
    }

    async fn get_cluster(
        &self,
        cluster: &str,
        host: Option<&str>,
        without_bindings: bool,
    ) -> Result<pb::ClusterView, ClientError> {
        let request = pb::GetClusterRequest {
            cluster: cluster.to_string(),
            host: host.unwrap_or_default().to_string(),
            without_bindings,
        };
        Ok(self.call(request, self.timeout, |mut admin, r| async move { admin.get_cluster(r).await }).await?)
    }

    /// A linearizable read of one cluster's bindings, streamed in FQDN order; each chunk
    /// gets `--timeout` to arrive.
    pub async fn bindings(&self, cluster: &str) -> Result<BindingsReader, ClientError> {
        let request = pb::ClusterBindingsRequest { cluster: cluster.to_string() };
        let stream =
            self.call(request, self.timeout, |mut admin, r| async move { admin.cluster_bindings(r).await }).await?;
        Ok(BindingsReader::new(stream, format!("coordinator {}", self.endpoint()), self.timeout))
    }

    /// The recorded changes, as the node this client talks to holds them, in chunks.
    pub async fn history(&self, request: pb::HistoryRequest) -> Result<Streaming<pb::HistoryChunk>, ClientError> {
        Ok(self.call(request, self.timeout, |mut admin, r| async move { admin.history(r).await }).await?)
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
        self.wait(pb::WaitAppliedRequest { cluster: cluster.to_string(), version, ..Default::default() }, timeout).await
    }

    /// Waits until every LB host of `cluster` acknowledged `version` and served `fqdn` from
    /// `shard` in its end-to-end probe (`bind --verify`).
    pub async fn wait_verified(
        &self,
        cluster: &str,
        version: u64,
        fqdn: &str,
        shard: &str,
        timeout: Duration,
    ) -> Result<pb::WaitAppliedReply, ClientError> {
        let request = pb::WaitAppliedRequest {
            cluster: cluster.to_string(),
            version,
            verify_fqdn: fqdn.to_string(),
            verify_shard: shard.to_string(),
            ..Default::default()
        };
        self.wait(request, timeout).await
    }

    /// Asks the node to wait up to `timeout` as `request` says.
    async fn wait(
        &self,
        mut request: pb::WaitAppliedRequest,
        timeout: Duration,
    ) -> Result<pb::WaitAppliedReply, ClientError> {
        request.timeout_ms = timeout.as_millis() as u64;
        // The node answers when its own wait ends; the margin covers the answer's way back.
        let deadline = timeout + Duration::from_secs(5);
        Ok(self.call(request, deadline, |mut admin, r| async move { admin.wait_applied(r).await }).await?)
    }

    /// What each LB host holds compared with the desired map; the desired view comes without
    /// its bindings (read them with [`Client::bindings`]).
    pub async fn lb_state(&self, cluster: &str, host: Option<&str>) -> Result<pb::LbStateReply, ClientError> {
        let request = pb::LbStateRequest {
            cluster: cluster.to_string(),
            host: host.unwrap_or_default().to_string(),
            without_bindings: true,
        };
        Ok(self.call(request, self.timeout, |mut admin, r| async move { admin.lb_state(r).await }).await?)
    }

    /// A node's server on every LB host of its cluster, from a fresh report of each agent;
    /// the agents get `agents_within` to answer.
    pub async fn node_sessions(
        &self,
        node: &str,
        agents_within: Duration,
    ) -> Result<pb::NodeSessionsReply, ClientError> {
        let request = pb::NodeSessionsRequest { node: node.to_string(), timeout_ms: agents_within.as_millis() as u64 };
        // The node answers once its agents did or their time ran out; the margin covers the way back.
        let deadline = agents_within + Duration::from_secs(2);
        Ok(self.call(request, deadline, |mut admin, r| async move { admin.node_sessions(r).await }).await?)
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

impl Node {
    /// One call to this node that gives up after `deadline`, whatever the node does.
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
}

/// Whether `status` says the node failed under the call (down, frozen, cut off), so whether
/// the call took effect is unknown.
fn node_failed(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown | tonic::Code::Cancelled
    )
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
