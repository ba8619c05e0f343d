//! The agent's one stream to the coordinator: connect (following the leader), resume from the
//! held version, apply what arrives, answer with acks, nacks and reports, and reconnect with backoff.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use lbfleet_proto::pb;
use lbfleet_proto::pb::agent_message::Kind as AgentKind;
use lbfleet_proto::pb::agent_stream_client::AgentStreamClient;
use lbfleet_proto::pb::coordinator_message::Kind as CoordinatorKind;
use lbfleet_proto::tls::TlsDir;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;
use tokio::sync::mpsc;
use tokio::sync::Notify;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;
use tracing::info;
use tracing::warn;

use crate::applier::Applier;
use crate::applier::MapFileGuard;
use crate::config::AgentConfig;
use crate::haproxy::MapFileWrite;

/// Metadata key in which a follower names the leader's address.
const LEADER_METADATA: &str = "x-lbfleet-leader";
/// Largest message accepted: a full state of a million FQDNs is tens of MB.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// The agent sends a heartbeat this often.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Silence from the coordinator for this long means the stream is dead.
const COORDINATOR_TTL: Duration = Duration::from_secs(10);
/// Backoff bounds between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why the agent cannot start at all.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid host id: {0}")]
    Identity(#[from] lbfleet_proto::identity::IdentityError),
    #[error(transparent)]
    Tls(#[from] lbfleet_proto::tls::TlsError),
}

/// How one stream ended.
enum Ended {
    /// The coordinator named another node as leader.
    Redirect(String),
    /// Anything else: try the next endpoint after a backoff.
    Failed(String),
    /// Our state does not fit the coordinator's deltas: start over from the full state.
    Resync(String),
}

/// Runs the agent until the process is stopped.
pub async fn run(config: AgentConfig) -> Result<(), StartError> {
    let identity = Identity::new(Role::Agent, &config.host_id)?;
    let tls = TlsDir::new(&config.tls_dir).client_config(&identity)?;
    let mut applier = Applier::new(config.clone()).await;
    let mut endpoints = config.endpoints.clone();
    let mut next = 0;
    let mut backoff = BACKOFF_MIN;
    let mut reconcile = tokio::time::interval(config.reconcile_interval);
    loop {
        let endpoint = endpoints[next % endpoints.len()].clone();
        let connected_at = tokio::time::Instant::now();
        match stream(&endpoint, &tls, &config, &mut applier).await {
            Ended::Redirect(leader) => {
                info!(%leader, "following the coordinator leader");
                if !endpoints.contains(&leader) {
                    endpoints.push(leader.clone());
                }
                next = endpoints.iter().position(|e| *e == leader).unwrap_or(0);
                continue;
            }
            Ended::Resync(reason) => {
                warn!(%reason, "state out of step with the coordinator; asking for the full state");
                applier.forget();
                continue;
            }
            Ended::Failed(reason) => warn!(%endpoint, %reason, "coordinator stream ended"),
        }
        if connected_at.elapsed() > Duration::from_secs(30) {
            backoff = BACKOFF_MIN;
        }
        next += 1;
        // HAProxy keeps routing while we are away; keep repairing it from the state we hold.
        let pause = tokio::time::sleep(jitter(backoff));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                _ = reconcile.tick() => {
                    reconcile_now(&mut applier).await;
                }
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Spreads reconnects of many agents over time.
fn jitter(base: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// Reconciles once; true when drift was found (worth reporting at once).
async fn reconcile_now(applier: &mut Applier) -> bool {
    match applier.reconcile().await {
        Ok(Some(drift)) => {
            info!(missing = drift.missing, wrong = drift.wrong, extra = drift.extra, "drift repaired");
            true
        }
        Ok(None) => false,
        Err(error) => {
            warn!(%error, "reconcile failed");
            false
        }
    }
}

/// One stream's life, from connect to its end.
async fn stream(endpoint: &str, tls: &ClientTlsConfig, config: &AgentConfig, applier: &mut Applier) -> Ended {
    let channel = match Endpoint::from_shared(format!("https://{endpoint}"))
        .and_then(|e| e.tls_config(tls.clone()))
        .map(|e| e.tcp_nodelay(true).connect_timeout(Duration::from_secs(3)))
    {
        Ok(endpoint) => match endpoint.connect().await {
            Ok(channel) => channel,
            Err(error) => return Ended::Failed(format!("connect: {error}")),
        },
        Err(error) => return Ended::Failed(format!("bad endpoint: {error}")),
    };
    let mut client = AgentStreamClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (out, out_rx) = mpsc::channel::<pb::AgentMessage>(64);
    let (digest, entries) = applier.map_summary();
    let hello = pb::Hello {
        host_id: config.host_id.clone(),
        last_applied_version: applier.version(),
        map_digest: digest,
        map_entries: entries,
    };
    if out.send(message(AgentKind::Hello(hello))).await.is_err() {
        return Ended::Failed("stream closed before hello".into());
    }
    let mut inbound = match client.session(ReceiverStream::new(out_rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return ended_by(&status),
    };
    info!(%endpoint, version = applier.version(), "connected to coordinator");
    // Heartbeats go out from their own task, so a long apply does not make the coordinator drop us.
    let beating = out.clone();
    let (queue, file_queue) = mpsc::channel(1);
    let files = FileWriter { queue, busy: Arc::new(AtomicBool::new(false)), idle: Arc::new(Notify::new()) };
    // Not aborted with the stream: a queued write still reaches the disk, only its ack is lost.
    let (busy, idle) = (files.busy.clone(), files.idle.clone());
    tokio::spawn(map_file_writer(file_queue, applier.map_file_guard(), out.clone(), busy, idle));
    let _heartbeats = AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tick.tick().await;
            if beating.send(message(AgentKind::Heartbeat(pb::Heartbeat {}))).await.is_err() {
                return;
            }
        }
    }));
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut reconcile = tokio::time::interval(config.reconcile_interval);
    let mut report = tokio::time::interval(config.report_interval);
    let mut last_heard = tokio::time::Instant::now();
    // A fresh connection starts with a reconcile: HAProxy may have changed while we were away.
    let mut reconcile_soon = true;
    loop {
        if reconcile_soon {
            reconcile_soon = false;
            if reconcile_now(applier).await {
                let report = applier.report(0, false).await;
                if out.send(message(AgentKind::Report(report))).await.is_err() {
                    return Ended::Failed("stream closed".into());
                }
            }
        }
        tokio::select! {
            received = inbound.message() => match received {
                Ok(Some(received)) => {
                    last_heard = tokio::time::Instant::now();
                    let Some(kind) = received.kind else { continue };
                    match kind {
                        CoordinatorKind::Heartbeat(_) => {}
                        CoordinatorKind::ReportRequest(request) => {
                            let report = applier.report(request.id, request.include_map).await;
                            if out.send(message(AgentKind::Report(report))).await.is_err() {
                                return Ended::Failed("stream closed".into());
                            }
                        }
                        update => {
                            if let Err(ended) = apply_burst(applier, update, &mut inbound, &out, &files).await {
                                return ended;
                            }
                            last_heard = tokio::time::Instant::now();
                        }
                    }
                }
                Ok(None) => return Ended::Failed("coordinator closed the stream".into()),
                Err(status) => return ended_by(&status),
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > COORDINATOR_TTL {
                    return Ended::Failed("coordinator silent for longer than its TTL".into());
                }
                // A restarted HAProxy container holds only its map file; repair at once.
                if applier.container_restarted().await {
                    info!("HAProxy container restarted; reconciling");
                    reconcile_soon = true;
                }
            },
            _ = reconcile.tick() => reconcile_soon = true,
            // The last file write finished: write what deltas changed meanwhile, in one go.
            _ = files.idle.notified() => {
                if let Err(ended) = files.start(applier, &out).await {
                    return ended;
                }
            }
            _ = report.tick() => {
                let report = applier.report(0, false).await;
                if out.send(message(AgentKind::Report(report))).await.is_err() {
                    return Ended::Failed("stream closed".into());
                }
            },
        }
    }
}

/// Applies an update and every update that already arrived behind it, then writes the map file
/// once and acknowledges the newest version (or rejects the ones that failed).
async fn apply_burst(
    applier: &mut Applier,
    first: CoordinatorKind,
    inbound: &mut tonic::Streaming<pb::CoordinatorMessage>,
    out: &mpsc::Sender<pb::AgentMessage>,
    files: &FileWriter,
) -> Result<(), Ended> {
    let closed = || Ended::Failed("stream closed".into());
    let mut applied = None;
    let mut next = Some(first);
    let mut ended = None;
    while let Some(update) = next.take() {
        let offered = version_of(&update);
        match applier.apply(update).await {
            Ok(version) => applied = Some(version),
            Err(error) if error.needs_resync() => return Err(Ended::Resync(error.to_string())),
            Err(error) => {
                warn!(version = offered, %error, "could not apply version");
                let nack = AgentKind::Nack(pb::Nack { version: offered, error: error.to_string() });
                out.send(message(nack)).await.map_err(|_| closed())?;
            }
        }
        // Only what is already here: never wait for more.
        match inbound.message().now_or_never() {
            None | Some(Ok(Some(pb::CoordinatorMessage { kind: None }))) => {}
            Some(Ok(Some(pb::CoordinatorMessage { kind: Some(kind) }))) => match kind {
                CoordinatorKind::Heartbeat(_) => {}
                CoordinatorKind::ReportRequest(request) => {
                    let report = applier.report(request.id, request.include_map).await;
                    out.send(message(AgentKind::Report(report))).await.map_err(|_| closed())?;
                }
                update => next = Some(update),
            },
            Some(Ok(None)) => ended = Some(Ended::Failed("coordinator closed the stream".into())),
            Some(Err(status)) => ended = Some(ended_by(&status)),
        }
    }
    if applied.is_some() {
        files.start(applier, out).await?;
    }
    ended.map_or(Ok(()), Err)
}

/// Hands map file writes (an fsync of the whole map) to a task of their own, one at a time:
/// deltas that arrive during a write are covered by the next one.
struct FileWriter {
    queue: mpsc::Sender<(u64, MapFileWrite)>,
    busy: Arc<AtomicBool>,
    idle: Arc<Notify>,
}

impl FileWriter {
    /// Starts the write the applier owes, unless one is running (it then follows when that ends);
    /// with nothing to write, acknowledges the applied version at once.
    async fn start(&self, applier: &mut Applier, out: &mpsc::Sender<pb::AgentMessage>) -> Result<(), Ended> {
        let closed = || Ended::Failed("stream closed".into());
        if self.busy.load(Ordering::Acquire) {
            return Ok(());
        }
        let version = applier.version();
        match applier.pending_map_file() {
            Ok(Some(write)) => {
                self.busy.store(true, Ordering::Release);
                self.queue.send(write).await.map_err(|_| closed())
            }
            Ok(None) => out.send(message(AgentKind::Ack(pb::Ack { version }))).await.map_err(|_| closed()),
            Err(error) => {
                let nack = AgentKind::Nack(pb::Nack { version, error: error.to_string() });
                out.send(message(nack)).await.map_err(|_| closed())
            }
        }
    }
}

/// Writes the map files handed over by `FileWriter` and acknowledges the version each covers:
/// acknowledged means on disk too.
async fn map_file_writer(
    mut queue: mpsc::Receiver<(u64, MapFileWrite)>,
    guard: MapFileGuard,
    out: mpsc::Sender<pb::AgentMessage>,
    busy: Arc<AtomicBool>,
    idle: Arc<Notify>,
) {
    while let Some((version, write)) = queue.recv().await {
        let answer = match guard.write(version, write).await {
            Ok(()) => AgentKind::Ack(pb::Ack { version }),
            Err(error) => {
                warn!(version, %error, "map file not written");
                AgentKind::Nack(pb::Nack { version, error: format!("map file: {error}") })
            }
        };
        let _ = out.send(message(answer)).await;
        busy.store(false, Ordering::Release);
        idle.notify_one();
    }
}

/// How a stream error ends the session: a redirect when it names the leader.
fn ended_by(status: &tonic::Status) -> Ended {
    match status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()) {
        Some(leader) => Ended::Redirect(leader.to_string()),
        None => Ended::Failed(format!("{}: {}", status.code(), status.message())),
    }
}

/// Stops a spawned task when the session that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn message(kind: AgentKind) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(kind) }
}

fn version_of(kind: &CoordinatorKind) -> u64 {
    match kind {
        CoordinatorKind::Full(full) => full.version,
        CoordinatorKind::Delta(delta) => delta.version,
        _ => 0,
    }
}
