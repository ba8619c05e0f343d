//! The operator API. Handlers validate, then either serve on the leader or forward to it.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use lbfleet_proto::identity::authorize;
use lbfleet_proto::pb;
use lbfleet_proto::pb::change_membership_request::Change;
use lbfleet_proto::transport;
use lbfleet_proto::Role;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::bindings_stream;
use super::convert;
use super::forward;
use super::forward::Forwarder;
use super::forward::DEFAULT_FORWARD_DEADLINE;
use super::group_commit::GroupCommit;
use super::history;
use super::lb_state;
use super::node_sessions;
use super::snapshot;
use crate::agents::registry::AgentRegistry;
use crate::metrics::WriteMetrics;
use crate::raft::state_machine::SharedState;
use crate::raft::Member;
use crate::raft::NodeId;
use crate::raft::Raft;

/// Who may use the operator API.
const OPERATORS: &[Role] = &[Role::Admin, Role::Coordinator];

/// Serves the `Admin` gRPC service of one coordinator node.
pub struct AdminService {
    raft: Raft,
    shared: Arc<SharedState>,
    forwarder: Forwarder,
    committed: Arc<AtomicU64>,
    agents: Arc<AgentRegistry>,
    writes: GroupCommit,
    /// Copies of a cluster's map being streamed (`ClusterBindings`), each up to tens of MB.
    binding_streams: bindings_stream::Slots,
}

/// Where a request that needs the leader is served.
enum Route {
    Here,
    /// The leader's address.
    Leader(String),
}

impl AdminService {
    /// Serves the node whose Raft handle and applied state are given.
    pub fn new(
        raft: Raft,
        shared: Arc<SharedState>,
        forwarder: Forwarder,
        committed: Arc<AtomicU64>,
        agents: Arc<AgentRegistry>,
        metrics: WriteMetrics,
    ) -> AdminService {
        let writes = GroupCommit::spawn(raft.clone(), metrics);
        let binding_streams = bindings_stream::Slots::default();
        AdminService { raft, shared, forwarder, committed, agents, writes, binding_streams }
    }

    /// Serves here on the leader, or names the leader's channel; a forwarded request never hops twice.
    fn route<T>(&self, request: &Request<T>) -> Result<Route, Status> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader.ok_or_else(|| transport::retryable_error("no Raft leader elected yet"))?;
        if leader == metrics.id {
            return Ok(Route::Here);
        }
        if transport::is_forwarded(request) {
            return Err(transport::retryable_error(format!("node {} is not the leader any more", metrics.id)));
        }
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .ok_or_else(|| Status::unavailable(format!("leader {leader} has no known address")))?;
        Ok(Route::Leader(node.addr.clone()))
    }

    /// Waits until this leader may serve reads that reflect every acknowledged write.
    async fn linearizable(&self) -> Result<(), Status> {
        self.raft.ensure_linearizable().await.map_err(|e| Status::unavailable(format!("read barrier failed: {e}")))?;
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn write(&self, request: Request<pb::WriteRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let caller = forward::caller_identity(&request, OPERATORS)?;
        if let Route::Leader(leader) = self.route(&request)? {
            return self
                .forwarder
                .forward(&leader, request, |mut leader, r| async move { leader.write(r).await })
                .await;
        }
        let request = request.into_inner();
        let mut command = convert::command_from_pb(request.command)?;
        if request.has_if_version {
            command = crate::state::Command::Conditional { if_version: request.if_version, command: Box::new(command) };
        }
        // The caller and the leader's clock go into the entry: apply must not read either.
        command = crate::state::Command::By {
            by: caller.to_string(),
            at_unix_ms: crate::when::unix_now_ms(),
            command: Box::new(command),
        };
        let (version, result) = self.writes.write(command).await?;
        let response = result.map_err(convert::state_error_to_status)?;
        Ok(Response::new(convert::write_reply(version, &response)))
    }

    async fn get_cluster(&self, request: Request<pb::GetClusterRequest>) -> Result<Response<pb::ClusterView>, Status> {
        authorize(&request, OPERATORS)?;
        if let Route::Leader(leader) = self.route(&request)? {
            return self
                .forwarder
                .forward(&leader, request, |mut leader, r| async move { leader.get_cluster(r).await })
                .await;
        }
        self.linearizable().await?;
        let request = request.into_inner();
        Ok(Response::new(self.cluster_view(&request.cluster, &request.host, !request.without_bindings)?))
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ClusterList>, Status> {
        authorize(&request, OPERATORS)?;
        if let Route::Leader(leader) = self.route(&request)? {
            return self
                .forwarder
                .forward(&leader, request, |mut leader, r| async move { leader.list_clusters(r).await })
                .await;
        }
        self.linearizable().await?;
        let applied = self.shared.read();
        let clusters = applied.state.clusters.values().map(|c| convert::cluster_summary(&applied, c)).collect();
        Ok(Response::new(pb::ClusterList { version: applied.version(), clusters }))
    }

    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        authorize(&request, OPERATORS)?;
        Ok(Response::new(self.status_reply()))
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        authorize(&request, OPERATORS)?;
        if let Route::Leader(leader) = self.route(&request)? {
            return self
                .forwarder
                .forward(&leader, request, |mut leader, r| async move { leader.change_membership(r).await })
                .await;
        }
        let change =
            request.into_inner().change.ok_or_else(|| Status::invalid_argument("no membership change given"))?;
        let mut voters: BTreeSet<NodeId> =
            self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        let failed = |e: &dyn std::fmt::Display| Status::failed_precondition(format!("membership change failed: {e}"));
        match change {
            Change::Add(member) => {
                if member.address.is_empty() || member.address.chars().any(char::is_whitespace) {
                    return Err(Status::invalid_argument(format!("invalid member address {:?}", member.address)));
                }
                // Catch up as a learner first, so the new voter does not stall commits.
                self.raft.add_learner(member.id, Member::new(member.address), true).await.map_err(|e| failed(&e))?;
                voters.insert(member.id);
            }
            Change::Remove(id) => {
                if !voters.remove(&id) {
                    return Err(Status::not_found(format!("node {id} is not a voting member")));
                }
                if voters.is_empty() {
                    return Err(Status::failed_precondition("cannot remove the last voting member"));
                }
            }
        }
        self.raft.change_membership(voters, false).await.map_err(|e| failed(&e))?;
        Ok(Response::new(self.status_reply()))
    }

    async fn wait_applied(
        &self,
        request: Request<pb::WaitAppliedRequest>,
    ) -> Result<Response<pb::WaitAppliedReply>, Status> {
        authorize(&request, OPERATORS)?;
        if let Route::Leader(leader) = self.route(&request)? {
            return self
                .forwarder
                .forward(&leader, request, |mut leader, r| async move { leader.wait_applied(r).await })
                .await;
        }
        let request = request.into_inner();
        let hosts: Vec<String> = {
            let applied = self.shared.read();
            if !applied.state.clusters.contains_key(&request.cluster) {
                return Err(Status::not_found(format!("cluster {:?} not found", request.cluster)));
            }
            applied.state.hosts.values().filter(|h| h.cluster == request.cluster).map(|h| h.id.clone()).collect()
        };
        let timeout = std::time::Duration::from_millis(request.timeout_ms.clamp(1, 600_000));
        if !request.verify_fqdn.is_empty() && request.verify_shard.is_empty() {
            return Err(Status::invalid_argument("verify_fqdn needs verify_shard"));
        }
        let verify =
            (!request.verify_fqdn.is_empty()).then_some((request.verify_fqdn.as_str(), request.verify_shard.as_str()));
        let (done, hosts) = self.agents.wait_verified(&hosts, request.version, verify, timeout).await;
        Ok(Response::new(pb::WaitAppliedReply { done, hosts }))
    }

    async fn lb_state(&self, request: Request<pb::LbStateRequest>) -> Result<Response<pb::LbStateReply>, Status> {
        authorize(&request, OPERATORS)?;
        if let Route::Leader(leader) = self.route(&request)? {
            return self
                .forwarder
                .forward(&leader, request, |mut leader, r| async move { leader.lb_state(r).await })
                .await;
        }
        self.linearizable().await?;
        let request = request.into_inner();
        let mut desired = self.cluster_view(&request.cluster, &request.host, true)?;
        let hosts = lb_state::compare_hosts(&self.agents, &desired).await;
        if request.without_bindings {
            desired.bindings = Vec::new();
        }
        Ok(Response::new(pb::LbStateReply { desired: Some(desired), hosts }))
    }

    type SnapshotStream = snapshot::ChunkStream;

    /// Served by the leader after a read barrier, so the file holds every write acknowledged
    /// before the call; a follower's applied state may lag behind by any amount.
    async fn snapshot(&self, request: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        authorize(&request, OPERATORS)?;
        if let Route::Leader(leader) = self.route(&request)? {
            let deadline = transport::caller_deadline(&request).unwrap_or(DEFAULT_FORWARD_DEADLINE);
            let upstream = self
                .forwarder
                .forward(&leader, request, |mut leader, r| async move { leader.snapshot(r).await })
                .await?;
            return Ok(Response::new(snapshot::relay(upstream.into_inner(), leader, deadline)));
        }
        self.linearizable().await?;
        let node_id = self.raft.metrics().borrow().id;
        let file = snapshot::encode(self.shared.clone(), node_id).await?;
        Ok(Response::new(snapshot::stream(file)))
    }

    type ClusterBindingsStream = bindings_stream::BindingsStream;

    /// Served by the leader after a read barrier, like `snapshot`: every chunk comes from one
    /// copy of the cluster's bindings, so all of them are at one version.
    async fn cluster_bindings(
        &self,
        request: Request<pb::ClusterBindingsRequest>,
    ) -> Result<Response<Self::ClusterBindingsStream>, Status> {
        authorize(&request, OPERATORS)?;
        if let Route::Leader(leader) = self.route(&request)? {
            let deadline = transport::caller_deadline(&request).unwrap_or(DEFAULT_FORWARD_DEADLINE);
            let upstream = self
                .forwarder
                .forward(&leader, request, |mut leader, r| async move { leader.cluster_bindings(r).await })
                .await?;
            return Ok(Response::new(snapshot::relay(upstream.into_inner(), leader, deadline)));
        }
        let slot = self.binding_streams.take()?;
        self.linearizable().await?;
        let bindings = bindings_stream::read(self.shared.clone(), request.into_inner().cluster).await?;
        Ok(Response::new(bindings_stream::stream(bindings, slot)))
    }

    /// Served by the leader, which holds the agents' streams.
    async fn node_sessions(
        &self,
        request: Request<pb::NodeSessionsRequest>,
    ) -> Result<Response<pb::NodeSessionsReply>, Status> {
        authorize(&request, OPERATORS)?;
        if let Route::Leader(leader) = self.route(&request)? {
            return self
                .forwarder
                .forward(&leader, request, |mut leader, r| async move { leader.node_sessions(r).await })
                .await;
        }
        self.linearizable().await?;
        let request = request.into_inner();
        let target = node_sessions::NodeTarget::of(&self.shared.read(), &request.node)?;
        let timeout = node_sessions::agent_timeout(request.timeout_ms);
        Ok(Response::new(node_sessions::ask_hosts(&self.agents, &target, timeout).await))
    }

    type HistoryStream = history::HistoryStream;

    /// Answered by every node from its own applied state, which holds the replicated history.
    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<Self::HistoryStream>, Status> {
        authorize(&request, OPERATORS)?;
        let deadline = transport::caller_deadline(&request).unwrap_or(DEFAULT_FORWARD_DEADLINE);
        let filter = history::Filter::of(request.get_ref())?;
        let is_leader = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics.current_leader == Some(metrics.id)
        };
        if is_leader {
            self.linearizable().await?;
        } else {
            let committed = self.committed.load(std::sync::atomic::Ordering::Relaxed);
            history::applied_up_to(&self.shared, committed, deadline).await?;
        }
        let (records, kept, limit) = history::select(&self.shared.read().state, &filter);
        Ok(Response::new(history::stream(records, kept, limit)))
    }
}

impl AdminService {
    /// The applied view of one cluster, optionally limited to one of its hosts.
    fn cluster_view(&self, cluster: &str, host: &str, with_bindings: bool) -> Result<pb::ClusterView, Status> {
        let applied = self.shared.read();
        let cluster = applied
            .state
            .clusters
            .get(cluster)
            .ok_or_else(|| Status::not_found(format!("cluster {cluster:?} not found")))?;
        let host = (!host.is_empty()).then_some(host);
        if let Some(host) = host {
            if applied.state.hosts.get(host).is_none_or(|h| h.cluster != cluster.name) {
                return Err(Status::not_found(format!("host {host:?} not found in cluster {:?}", cluster.name)));
            }
        }
        if with_bindings {
            return Ok(convert::cluster_view(&applied, cluster, host));
        }
        // The topology alone: an empty map in place of the cluster's, nothing copied.
        let topology = crate::state::Cluster {
            name: cluster.name.clone(),
            config: cluster.config.clone(),
            bindings: Default::default(),
        };
        Ok(convert::cluster_view(&applied, &topology, host))
    }

    fn status_reply(&self) -> pb::StatusReply {
        status_reply(&self.raft, &self.committed, &self.agents, &self.shared)
    }
}

/// This node's Raft view, the members, the agents whose streams it serves and the revocations:
/// what `lbfleet status` prints and the status page shows.
pub fn status_reply(
    raft: &Raft,
    committed: &AtomicU64,
    agents: &AgentRegistry,
    shared: &SharedState,
) -> pb::StatusReply {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let replication = metrics.replication.clone().unwrap_or_default();
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let matched = replication.get(id).copied().flatten();
            pb::Member {
                id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: matched.map(|m| m.index).unwrap_or(0),
                has_matched: matched.is_some(),
            }
        })
        .collect();
    let leader_address =
        metrics.current_leader.and_then(|l| membership.get_node(&l)).map(|n| n.addr.clone()).unwrap_or_default();
    // One read guard for both: std's RwLock queues new readers behind a waiting writer, so a
    // second `read()` while the first guard lives deadlocks against apply.
    let (agents, revocations) = {
        let applied = shared.read();
        (agents.all(applied.version()), convert::revocations(&applied.state.revocations))
    };
    pb::StatusReply {
        node_id: metrics.id,
        state: format!("{:?}", metrics.state),
        current_leader: metrics.current_leader.unwrap_or(0),
        has_leader: metrics.current_leader.is_some(),
        term: metrics.current_term,
        last_log_index: metrics.last_log_index.unwrap_or(0),
        committed_index: committed.load(std::sync::atomic::Ordering::Relaxed),
        applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
        members,
        leader_address,
        agents,
        revocations,
    }
}
