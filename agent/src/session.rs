//! The agent's one stream to the coordinator leader: find the leader, resume from the held
//! version, apply what arrives, answer with acks, nacks and reports, and move on when the leader
//! dies or falls silent.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::OptionFuture;
use futures::FutureExt;
use lbfleet_proto::backoff::Backoff;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::pb::agent_message::Kind as AgentKind;
use lbfleet_proto::pb::coordinator_message::Kind as CoordinatorKind;
use lbfleet_proto::tls::TlsDir;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;
use tokio::sync::mpsc;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tonic::Status;
use tracing::info;
use tracing::warn;

use crate::applier::Applier;
use crate::applier::ApplyError;
use crate::applier::MapFileGuard;
use crate::config::AgentConfig;
use crate::haproxy::MapFileWrite;
use crate::leader;
pub use crate::leader::open_stream;
pub use crate::leader::OpenError;
use crate::leader::Opened;
pub use crate::leader::OPEN_DEADLINE;
use crate::observers::Observers;
use crate::probe::sample::SampleCursor;
use crate::probe::Trigger;
use crate::ready::ReadyState;

/// The agent sends a heartbeat this often.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Silence from the coordinator for this long (two of its 2 s heartbeats) starts a look for
/// another leader, with the stream still open: a frozen leader's successor is found long before the TTL.
const SUSPECT_AFTER: Duration = Duration::from_secs(4);
/// Silence from the coordinator for this long means the stream is dead, leader found or not.
const COORDINATOR_TTL: Duration = Duration::from_secs(10);
/// The longest a message may wait for room on the stream: a frozen coordinator stops reading.
const SEND_DEADLINE: Duration = COORDINATOR_TTL;
/// Backoff bounds before a new stream, after one that ended soon after it opened.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A stream that lasted this long is replaced at once when it ends.
const STABLE_STREAM: Duration = Duration::from_secs(30);

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
    /// While this coordinator was silent, the leader accepted a new stream: go on with that one.
    Moved(Opened),
    /// Anything else: find the leader again.
    Failed(StreamError),
    /// Our state does not fit the coordinator's deltas: start over from the full state.
    Resync(ApplyError),
}

/// Why a stream ended that the agent will reopen.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    /// The coordinator ended the stream with an error.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// The coordinator ended the stream without an error.
    #[error("the coordinator closed the stream")]
    ClosedByCoordinator,
    /// Our side of the stream is gone (the connection dropped).
    #[error("the stream closed")]
    Closed,
    /// Nothing arrived for longer than the coordinator's TTL: it is frozen or cut off.
    #[error("the coordinator was silent for longer than {COORDINATOR_TTL:?}")]
    Silent,
    /// Our certificate was renewed: the stream is reopened on a connection that presents it.
    #[error("the certificate was renewed; reconnecting with it")]
    Renewed,
    /// Our messages found no room for [`SEND_DEADLINE`]: the coordinator stopped reading.
    #[error("the coordinator stopped reading the stream")]
    Stalled,
}

/// Runs the agent until the process is stopped.
pub async fn run(config: AgentConfig) -> Result<(), StartError> {
    let observers = Observers::new(&config);
    run_with(config, observers).await
}

/// `run`, reporting to `observers` (which the operator listener serves).
pub async fn run_with(config: AgentConfig, observers: Observers) -> Result<(), StartError> {
    let identity = Identity::new(Role::Agent, &config.host_id)?;
    let tls = Credentials::client(&TlsDir::new(&config.tls_dir), &identity)?;
    // Renewed certificates are used from the next connection on.
    let _watcher = AbortOnDropHandle::new(tls.watch());
    let mut applier = Applier::with_observers(config.clone(), observers.clone()).await;
    let mut sampling = SampleCursor::default();
    let mut streams = 0u64;
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut pause = Duration::ZERO;
    let mut moved = None;
    loop {
        let opened = match moved.take() {
            Some(opened) => opened,
            None => {
                let search = leader::find(&config.endpoints, &tls, hello(&config, &applier), None);
                let paused_search = async {
                    tokio::time::sleep(pause).await;
                    search.await
                };
                reconciling(&mut applier, config.reconcile_interval, paused_search).await
            }
        };
        let endpoint = opened.endpoint.clone();
        let opened_at = Instant::now();
        pause = Duration::ZERO;
        observers.metrics.stream(true, streams > 0);
        streams += 1;
        let ended = stream(opened, &tls, &config, &mut applier, &observers, &mut sampling).await;
        observers.metrics.stream(false, false);
        match ended {
            Ended::Moved(opened) => {
                info!(from = %endpoint, to = %opened.endpoint, "coordinator silent; moved to the new leader");
                moved = Some(opened);
                continue;
            }
            Ended::Resync(reason) => {
                warn!(%reason, "state out of step with the coordinator; asking for the full state");
                applier.forget();
                continue;
            }
            Ended::Failed(reason) => warn!(%endpoint, %reason, "coordinator stream ended"),
        }
        // A stream that lasted is replaced at once; one that ended soon after it opened waits, longer each time.
        if opened_at.elapsed() > STABLE_STREAM {
            backoff.reset();
        } else {
            pause = backoff.next_delay();
        }
    }
}

/// This host's hello: the version and map it holds, so the leader can resume from them.
fn hello(config: &AgentConfig, applier: &Applier) -> pb::Hello {
    let (digest, entries) = applier.map_summary();
    pb::Hello {
        host_id: config.host_id.clone(),
        last_applied_version: applier.version(),
        map_digest: digest,
        map_entries: entries,
    }
}

/// Waits for `future` while no stream is open, reconciling every `every` meanwhile: HAProxy
/// keeps routing while we are away, and we keep repairing it from the state we hold.
async fn reconciling<T>(applier: &mut Applier, every: Duration, future: impl Future<Output = T>) -> T {
    tokio::pin!(future);
    let mut reconcile = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        let reload_due = applier.reload_due();
        tokio::select! {
            output = &mut future => return output,
            _ = reconcile.tick() => {
                reconcile_now(applier).await;
            }
            // A config change received before the stream ended still goes into service.
            _ = sleep_until_due(reload_due), if reload_due.is_some() => {
                let _ = applier.reload_if_due().await;
            }
        }
    }
}

/// Sleeps until `due` (forever when `None`; such a branch is disabled anyway).
async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Runs the pending reload if it is due; a failed reload rejects the version held (its config
/// is not in service). The caller acknowledges what went live.
async fn reload_when_due(applier: &mut Applier, out: &mpsc::Sender<pb::AgentMessage>) -> Result<(), Ended> {
    match applier.reload_if_due().await {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(error)) if applier.live_version() < applier.version() => {
            let nack = AgentKind::Nack(pb::Nack { version: applier.version(), error: error.to_string() });
            send(out, nack).await
        }
        Some(Err(_)) => Ok(()),
    }
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

/// One stream's life, from the leader's acceptance to its end.
async fn stream(
    opened: Opened,
    tls: &Arc<Credentials>,
    config: &AgentConfig,
    applier: &mut Applier,
    observers: &Observers,
    sampling: &mut SampleCursor,
) -> Ended {
    let Opened { endpoint, out, mut inbound } = opened;
    info!(%endpoint, version = applier.version(), "connected to coordinator");
    // Heartbeats go out from their own task, so a long apply does not make the coordinator drop us.
    let beating = out.clone();
    let (queue, file_queue) = mpsc::channel(1);
    let files = FileWriter {
        queue,
        busy: Arc::new(AtomicBool::new(false)),
        idle: Arc::new(Notify::new()),
        ready: observers.ready.clone(),
    };
    // Not aborted with the stream: a queued write still reaches the disk, only its ack is lost.
    let (busy, idle) = (files.busy.clone(), files.idle.clone());
    let written = Written { out: out.clone(), observers: observers.clone() };
    tokio::spawn(map_file_writer(file_queue, applier.map_file_guard(), written, busy, idle));
    let _heartbeats = AbortOnDropHandle::new(tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tick.tick().await;
            if beating.send(pb::AgentMessage::from(AgentKind::Heartbeat(pb::Heartbeat {}))).await.is_err() {
                return;
            }
        }
    }));
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut reconcile = tokio::time::interval(config.reconcile_interval);
    let mut report = tokio::time::interval(config.report_interval);
    // The first sample waits a whole interval: the bind probes cover what changes meanwhile.
    let mut sample = tokio::time::interval_at(Instant::now() + config.probe_interval, config.probe_interval);
    let mut last_heard = Instant::now();
    // While the coordinator is silent, the leader it was may be gone: look for another one. Any
    // message from this coordinator calls the search off.
    let mut search = None;
    // A fresh connection starts with a reconcile: HAProxy may have changed while we were away.
    let mut reconcile_soon = true;
    // Renewed certificates are presented on a new connection, so the coordinators see them now.
    let mut renewals = tls.renewals();
    loop {
        if reconcile_soon {
            reconcile_soon = false;
            let live = applier.live_version();
            let drifted = reconcile_now(applier).await;
            // A reload it made may have put a held-back version into service.
            if applier.live_version() != live {
                if let Err(ended) = files.start(applier, &out).await {
                    return ended;
                }
            }
            if drifted {
                let report = applier.report(0, false).await;
                if let Err(ended) = send(&out, AgentKind::Report(report)).await {
                    return ended;
                }
            }
        }
        let reload_due = applier.reload_due();
        tokio::select! {
            received = inbound.message() => match received {
                Ok(Some(received)) => {
                    last_heard = Instant::now();
                    search = None;
                    let Some(kind) = received.kind else { continue };
                    match kind {
                        CoordinatorKind::Heartbeat(_) => {}
                        CoordinatorKind::ReportRequest(request) => {
                            let report = applier.answer(&request).await;
                            if let Err(ended) = send(&out, AgentKind::Report(report)).await {
                                return ended;
                            }
                        }
                        update => {
                            if let Err(ended) = apply_burst(applier, update, &mut inbound, &out, &files).await {
                                return ended;
                            }
                            observers.prober.spawn(applier.take_new_binds(), applier.version(), Trigger::Bind);
                            last_heard = Instant::now();
                        }
                    }
                }
                Ok(None) => return Ended::Failed(StreamError::ClosedByCoordinator),
                Err(status) => return Ended::Failed(status.into()),
            },
            _ = tokio::time::sleep_until(last_heard + SUSPECT_AFTER), if search.is_none() => {
                info!(%endpoint, "coordinator silent; looking for another leader");
                let hello = hello(config, applier);
                search = Some(Box::pin(leader::find(&config.endpoints, tls, hello, Some(&endpoint))));
            }
            Some(opened) = OptionFuture::from(search.as_mut()) => return Ended::Moved(opened),
            _ = tokio::time::sleep_until(last_heard + COORDINATOR_TTL) => return Ended::Failed(StreamError::Silent),
            Ok(()) = renewals.changed() => return Ended::Failed(StreamError::Renewed),
            _ = heartbeat.tick() => {
                // A restarted HAProxy container holds only its map file, a stopped one serves nothing; repair at once.
                if applier.container_restarted().await {
                    info!("HAProxy container restarted or stopped; reconciling");
                    reconcile_soon = true;
                }
            },
            _ = reconcile.tick() => reconcile_soon = true,
            // Coalesced config changes: their reload is due now.
            _ = sleep_until_due(reload_due), if reload_due.is_some() => {
                if let Err(ended) = reload_when_due(applier, &out).await {
                    return ended;
                }
                if let Err(ended) = files.start(applier, &out).await {
                    return ended;
                }
                // A restart can outlast the TTL; what arrived meanwhile is read next, as after a long apply.
                last_heard = Instant::now();
            }
            // The last file write finished: write what deltas changed meanwhile, in one go.
            _ = files.idle.notified() => {
                if let Err(ended) = files.start(applier, &out).await {
                    return ended;
                }
            }
            _ = report.tick() => {
                let report = applier.report(0, false).await;
                if let Err(ended) = send(&out, AgentKind::Report(report)).await {
                    return ended;
                }
            },
            _ = sample.tick() => {
                let targets = applier.probe_sample(sampling, config.probe_sample);
                observers.prober.spawn(targets, applier.version(), Trigger::Sample);
            }
            // Probes finished: the coordinator learns at once (`bind --verify` waits for it).
            _ = observers.prober.finished() => {
                let report = applier.report(0, false).await;
                if let Err(ended) = send(&out, AgentKind::Report(report)).await {
                    return ended;
                }
            }
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
    let mut applied = None;
    let mut next = Some(first);
    let mut ended = None;
    while let Some(update) = next.take() {
        let offered = version_of(&update);
        match applier.apply(update).await {
            Ok(version) => applied = Some(version),
            Err(error) if error.needs_resync() => return Err(Ended::Resync(error)),
            Err(error) => {
                warn!(version = offered, %error, "could not apply version");
                let nack = AgentKind::Nack(pb::Nack { version: offered, error: error.to_string() });
                send(out, nack).await?;
            }
        }
        // Only what is already here: never wait for more.
        match inbound.message().now_or_never() {
            None | Some(Ok(Some(pb::CoordinatorMessage { kind: None }))) => {}
            Some(Ok(Some(pb::CoordinatorMessage { kind: Some(kind) }))) => match kind {
                CoordinatorKind::Heartbeat(_) => {}
                CoordinatorKind::ReportRequest(request) => {
                    let report = applier.answer(&request).await;
                    send(out, AgentKind::Report(report)).await?;
                }
                update => next = Some(update),
            },
            Some(Ok(None)) => ended = Some(Ended::Failed(StreamError::ClosedByCoordinator)),
            Some(Err(status)) => ended = Some(Ended::Failed(status.into())),
        }
    }
    if applied.is_some() {
        // The first config change after a quiet period goes into service before the ack.
        reload_when_due(applier, out).await?;
        files.start(applier, out).await?;
    }
    ended.map_or(Ok(()), Err)
}

/// Hands map file writes (an fsync of the whole map) to a task of their own, one at a time:
/// deltas that arrive during a write are covered by the next one. Each carries the version it
/// writes and the version to acknowledge once it is on disk (lower while a reload is pending).
struct FileWriter {
    queue: mpsc::Sender<QueuedWrite>,
    busy: Arc<AtomicBool>,
    idle: Arc<Notify>,
    ready: ReadyState,
}

impl FileWriter {
    /// Starts the write the applier owes, unless one is running (it then follows when that ends);
    /// with nothing to write, acknowledges the live version at once.
    async fn start(&self, applier: &mut Applier, out: &mpsc::Sender<pb::AgentMessage>) -> Result<(), Ended> {
        let closed = || Ended::Failed(StreamError::Closed);
        if self.busy.load(Ordering::Acquire) {
            return Ok(());
        }
        let version = applier.version();
        // Acks say "live": a version whose config waits for its reload is not.
        let live = applier.live_version();
        match applier.pending_map_file() {
            Ok(Some((written, write, received))) => {
                self.busy.store(true, Ordering::Release);
                let queued = QueuedWrite { version: written, ack: live.min(written), write, received };
                self.queue.send(queued).await.map_err(|_| closed())
            }
            Ok(None) => {
                send(out, AgentKind::Ack(pb::Ack { version: live })).await?;
                self.ready.acked(live);
                Ok(())
            }
            Err(error) => {
                let nack = AgentKind::Nack(pb::Nack { version, error: error.to_string() });
                send(out, nack).await
            }
        }
    }
}

/// A map file write handed to `map_file_writer`.
struct QueuedWrite {
    /// The version of the map it writes (orders writes, see `MapFileGuard`).
    version: u64,
    /// The version acknowledged once it is on disk.
    ack: u64,
    write: MapFileWrite,
    /// When the oldest delta it covers arrived.
    received: Option<Instant>,
}

/// Where `map_file_writer` says what it wrote: the stream, readiness and metrics.
struct Written {
    out: mpsc::Sender<pb::AgentMessage>,
    observers: Observers,
}

/// Writes the map files handed over by `FileWriter` and acknowledges the version each covers:
/// acknowledged means on disk too.
async fn map_file_writer(
    mut queue: mpsc::Receiver<QueuedWrite>,
    guard: MapFileGuard,
    written: Written,
    busy: Arc<AtomicBool>,
    idle: Arc<Notify>,
) {
    let Written { out, observers } = written;
    while let Some(QueuedWrite { version, ack, write, received }) = queue.recv().await {
        let answer = match guard.write(version, write).await {
            Ok(()) => {
                if let Some(received) = received {
                    observers.metrics.applied("file", received.elapsed());
                }
                AgentKind::Ack(pb::Ack { version: ack })
            }
            Err(error) => {
                warn!(version, %error, "map file not written");
                observers.ready.file_failed(format!("map file: {error}"));
                AgentKind::Nack(pb::Nack { version, error: format!("map file: {error}") })
            }
        };
        let acked = match answer {
            AgentKind::Ack(pb::Ack { version }) => Some(version),
            _ => None,
        };
        // A frozen coordinator must not keep the next write waiting; the stream ends on its own.
        if send(&out, answer).await.is_ok() {
            if let Some(version) = acked {
                observers.ready.acked(version);
            }
        }
        busy.store(false, Ordering::Release);
        idle.notify_one();
    }
}

/// Queues `kind` on the stream, ending the session when the coordinator stopped taking messages.
async fn send(out: &mpsc::Sender<pb::AgentMessage>, kind: AgentKind) -> Result<(), Ended> {
    match tokio::time::timeout(SEND_DEADLINE, out.send(kind.into())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ended::Failed(StreamError::Closed)),
        Err(_) => Err(Ended::Failed(StreamError::Stalled)),
    }
}

fn version_of(kind: &CoordinatorKind) -> u64 {
    match kind {
        CoordinatorKind::Full(full) => full.version,
        CoordinatorKind::Delta(delta) => delta.version,
        _ => 0,
    }
}
