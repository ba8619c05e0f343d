//! The agents' stream: the leader sends each host its state and deltas, and records acks and reports.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use futures::StreamExt;
use lbfleet_proto::identity::authorize;
use lbfleet_proto::identity::peer_certified;
use lbfleet_proto::identity::Certified;
use lbfleet_proto::pb;
use lbfleet_proto::pb::agent_message::Kind as AgentKind;
use lbfleet_proto::pb::coordinator_message::Kind as CoordinatorKind;
use lbfleet_proto::transport;
use lbfleet_proto::Role;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;
use tracing::info;
use tracing::warn;

use super::desired;
use super::registry::AgentRegistry;
use super::registry::ReportAsk;
use super::registry::SessionHandle;
use crate::raft::state_machine::SharedState;
use crate::raft::Raft;

/// The coordinator sends a heartbeat this often.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// An agent silent for this long is considered gone and its stream closed.
pub const AGENT_TTL: Duration = Duration::from_secs(10);
/// How long an agent has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

/// Serves `AgentStream` on this node; only the leader accepts streams.
pub struct AgentStreamService {
    raft: Raft,
    shared: Arc<SharedState>,
    registry: Arc<AgentRegistry>,
}

impl AgentStreamService {
    /// Serves agents from the applied state, recording their progress in `registry`.
    pub fn new(raft: Raft, shared: Arc<SharedState>, registry: Arc<AgentRegistry>) -> AgentStreamService {
        AgentStreamService { raft, shared, registry }
    }

    /// Turns the agent away to the leader when this node is not it.
    fn require_leader(&self) -> Result<(), Status> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader == Some(metrics.id) {
            return Ok(());
        }
        let leader =
            metrics.current_leader.and_then(|id| metrics.membership_config.membership().get_node(&id).cloned());
        Err(match leader {
            Some(node) => {
                transport::redirect_to_leader(format!("not the leader; the leader is at {}", node.addr), &node.addr)
            }
            None => transport::retryable_error("no leader elected yet"),
        })
    }
}

#[tonic::async_trait]
impl pb::agent_stream_server::AgentStream for AgentStreamService {
    type SessionStream = OutStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let identity = authorize(&request, &[Role::Agent])?;
        // The handshake refused certificates revoked before it; this catches a connection opened earlier.
        let certified = peer_certified(&request)?;
        if let Some(reason) = self.shared.read().state.revocations.refusal(&certified) {
            return Err(Status::permission_denied(format!("{identity}: {reason}")));
        }
        self.require_leader()?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello from the agent"))??;
        let Some(pb::AgentMessage { kind: Some(AgentKind::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("the first message of a session must be hello"));
        };
        // A certificate opens its own host's stream and no other.
        if hello.host_id != identity.name {
            return Err(Status::permission_denied(format!(
                "{identity} may not open the stream of host {:?}",
                hello.host_id
            )));
        }
        let cluster = {
            let applied = self.shared.read();
            let host = applied.state.hosts.get(&hello.host_id).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "host {:?} is not registered; add it with `lbfleet host add {} --cluster NAME`",
                    hello.host_id, hello.host_id
                ))
            })?;
            host.cluster.clone()
        };
        let (out, out_rx) = mpsc::channel(64);
        let (asks, asks_rx) = mpsc::channel(8);
        let handle = self.registry.connect(&hello.host_id, &cluster, asks);
        info!(host.id = %hello.host_id, version = hello.last_applied_version, "agent connected");
        let session = Session {
            handle,
            certified,
            shared: self.shared.clone(),
            registry: self.registry.clone(),
            raft: self.raft.clone(),
            out,
            sent_version: hello.last_applied_version,
            pending_asks: HashMap::new(),
            next_ask: 0,
        };
        tokio::spawn(session.run(inbound, asks_rx));
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

/// The task that owns one agent's stream.
struct Session {
    handle: SessionHandle,
    /// The agent's certificate, checked against every revocation applied while the stream is open.
    certified: Certified,
    shared: Arc<SharedState>,
    registry: Arc<AgentRegistry>,
    raft: Raft,
    out: mpsc::Sender<Result<pb::CoordinatorMessage, Status>>,
    /// The version the agent will hold once it applied everything sent so far.
    sent_version: u64,
    pending_asks: HashMap<u64, ReportAsk>,
    next_ask: u64,
}

/// Why a session ended.
enum End {
    AgentLeft,
    Closed(Status),
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::AgentMessage>, mut asks: mpsc::Receiver<ReportAsk>) {
        let mut versions = self.shared.subscribe();
        let mut metrics = self.raft.metrics();
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        let end = loop {
            // Bring the agent up to date before waiting: this also covers the first message.
            if let Err(end) = self.send_updates().await {
                break end;
            }
            tokio::select! {
                changed = versions.changed() => if changed.is_err() {
                    break End::Closed(Status::unavailable("coordinator shutting down"));
                },
                message = inbound.next() => match message {
                    Some(Ok(message)) => self.receive(message),
                    Some(Err(status)) => break End::Closed(status),
                    None => break End::AgentLeft,
                },
                Some(ask) = asks.recv() => {
                    if let Err(end) = self.ask(ask).await {
                        break end;
                    }
                }
                _ = heartbeat.tick() => {
                    if self.registry.silent_for(&self.handle).is_some_and(|silent| silent > AGENT_TTL) {
                        break End::Closed(Status::deadline_exceeded("agent silent for longer than its TTL"));
                    }
                    if let Err(end) = self.send(CoordinatorKind::Heartbeat(pb::Heartbeat {})).await {
                        break end;
                    }
                }
                _ = metrics.changed() => {
                    let m = metrics.borrow().clone();
                    if m.current_leader != Some(m.id) {
                        break End::Closed(Status::unavailable("leadership moved; reconnect to the new leader"));
                    }
                }
            }
        };
        match end {
            End::AgentLeft => info!(host.id = %self.handle.host, "agent stream closed"),
            End::Closed(status) => {
                warn!(host.id = %self.handle.host, error = %status.message(), "agent stream ended");
                let _ = self.out.send(Err(status)).await;
            }
        }
        self.registry.disconnect(&self.handle);
    }

    async fn send(&self, kind: CoordinatorKind) -> Result<(), End> {
        self.out.send(Ok(kind.into())).await.map_err(|_| End::AgentLeft)
    }

    /// Sends a delta (or the full state) when the applied version moved past what the agent has.
    async fn send_updates(&mut self) -> Result<(), End> {
        let message = {
            let applied = self.shared.read();
            let version = applied.version();
            if version == self.sent_version {
                return Ok(());
            }
            if let Some(reason) = applied.state.revocations.refusal(&self.certified) {
                return Err(End::Closed(Status::permission_denied(format!("stream closed: {reason}"))));
            }
            let Some(host) = applied.state.hosts.get(&self.handle.host) else {
                return Err(End::Closed(Status::not_found(format!("host {:?} was removed", self.handle.host))));
            };
            // An agent from the future (e.g. the coordinator lost its data) or too far behind gets everything.
            let delta = (self.sent_version < version && self.sent_version > 0)
                .then(|| desired::delta(&applied, host, self.sent_version))
                .flatten();
            self.sent_version = version;
            match delta {
                Some(delta) => CoordinatorKind::Delta(delta),
                None => CoordinatorKind::Full(desired::full_state(&applied, host)),
            }
        };
        self.send(message).await
    }

    fn receive(&mut self, message: pb::AgentMessage) {
        self.registry.seen(&self.handle);
        match message.kind {
            Some(AgentKind::Ack(ack)) => self.registry.ack(&self.handle, ack.version),
            Some(AgentKind::Nack(nack)) => {
                warn!(host.id = %self.handle.host, version = nack.version, error = %nack.error, "agent rejected a version");
                self.registry.nack(&self.handle, nack.version, nack.error);
            }
            Some(AgentKind::Report(report)) => {
                self.registry.report(&self.handle, &report);
                if let Some(ask) = self.pending_asks.remove(&report.request_id) {
                    let _ = ask.reply.send(report);
                }
            }
            Some(AgentKind::Heartbeat(_)) | Some(AgentKind::Hello(_)) | None => {}
        }
    }

    async fn ask(&mut self, ask: ReportAsk) -> Result<(), End> {
        self.next_ask += 1;
        let request =
            pb::ReportRequest { id: self.next_ask, include_map: ask.include_map, probe_fqdns: ask.probe_fqdns.clone() };
        // Askers that gave up leave their entries; drop those whose reply channel is closed.
        self.pending_asks.retain(|_, pending| !pending.reply.is_closed());
        self.pending_asks.insert(self.next_ask, ask);
        self.send(CoordinatorKind::ReportRequest(request)).await
    }
}
