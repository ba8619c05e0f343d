//! Owns this host's desired state and applies it to HAProxy: versions from the coordinator,
//! reconciliation against what HAProxy really holds, and the reports about it.

use std::sync::Arc;
use std::time::SystemTime;

use lbfleet_proto::map_diff;
use lbfleet_proto::map_diff::KeyDiff;
use lbfleet_proto::map_diff::MapDiff;
use lbfleet_proto::pb;
use lbfleet_proto::MapDigest;
use tokio::time::Instant;
use tracing::info;
use tracing::warn;

use crate::admin::admin_changes;
use crate::admin::admin_states_differ;
use crate::config::AgentConfig;
use crate::desired::Backend;
use crate::desired::DesiredState;
use crate::desired::MapChange;
use crate::desired::MapEntries;
use crate::desired::Server;
use crate::desired::Topology;
use crate::docker::DockerHost;
use crate::haproxy::Haproxy;
use crate::haproxy::HaproxyTarget;
use crate::haproxy::MapFileWrite;
use crate::haproxy::ReloadMode;
use crate::haproxy::RuntimeChange;
use crate::metrics::ReloadKind;
use crate::observers::Observers;
use crate::probe::host;
use crate::probe::sample::BindTargets;
use crate::probe::ProbeTarget;
use crate::probe::Trigger;
use crate::reload;
use crate::reload::Coalescer;

/// Drift larger than this is repaired by replacing the whole runtime map instead of key by key.
const BULK_REPAIR_THRESHOLD: usize = 1_000;
/// Drifted keys quoted in a report.
const DRIFT_EXAMPLES: usize = 10;

/// Serializes map file writes and skips those older than what is already on disk, so a
/// background write can never put back an older map over a newer one.
#[derive(Clone, Default)]
pub struct MapFileGuard {
    written: Arc<tokio::sync::Mutex<u64>>,
}

impl MapFileGuard {
    /// Runs `write` for `version` unless a write of that version or a newer one already happened.
    pub async fn write(&self, version: u64, write: MapFileWrite) -> Result<(), crate::haproxy::HaproxyError> {
        let mut written = self.written.lock().await;
        if version < *written {
            return Ok(());
        }
        write.run().await?;
        *written = version;
        Ok(())
    }
}

/// Why a version could not be applied; the agent NACKs it.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A delta that does not start at the version held (or arrives before any full state).
    #[error("delta from version {from} does not follow the held version {held}")]
    OutOfOrder { from: u64, held: u64 },
    /// A message with neither a full state nor a delta, or a full state without topology.
    #[error("the message carries no state")]
    Empty,
    /// HAProxy did not take the state.
    #[error(transparent)]
    Haproxy {
        #[from]
        source: crate::haproxy::HaproxyError,
    },
}

impl ApplyError {
    /// Whether the agent must ask for the full state again (its own state no longer fits).
    pub fn needs_resync(&self) -> bool {
        matches!(self, ApplyError::OutOfOrder { .. } | ApplyError::Empty)
    }
}

/// What this agent holds and what it last saw in HAProxy.
pub struct Applier {
    config: AgentConfig,
    docker: Option<DockerHost>,
    haproxy: Option<Haproxy>,
    desired: Option<DesiredState>,
    /// The highest version fully applied to HAProxy.
    applied_version: u64,
    digest: MapDigest,
    last_drift: Option<pb::DriftReport>,
    drift_repairs: u64,
    last_error: Option<String>,
    container_started_at: Option<String>,
    /// Deltas reached HAProxy's runtime map but not yet the map file.
    map_file_stale: bool,
    map_file_guard: MapFileGuard,
    /// The config rendered for the desired topology.
    desired_config: Option<String>,
    /// What HAProxy runs, once known: the version, topology and config last put into service.
    in_service: Option<InService>,
    /// Config changes waiting for their reload, and the reload rate limit.
    reloads: Coalescer,
    last_reload: Option<pb::ReloadReport>,
    reload_count: u64,
    config_changes: u64,
    observers: Observers,
    /// FQDNs bound by deltas since the last bind probes.
    binds: BindTargets,
    /// When the first delta not yet in the map file arrived.
    stale_since: Option<Instant>,
}

/// The config HAProxy runs, as the agent put it into service.
#[derive(Debug, Clone)]
struct InService {
    version: u64,
    topology: Topology,
    config: String,
}

impl Applier {
    /// An applier with no state yet; Docker is optional (the socket path works without it).
    pub async fn new(config: AgentConfig) -> Applier {
        let observers = Observers::new(&config);
        Applier::with_observers(config, observers).await
    }

    /// `new`, reporting to `observers`.
    pub async fn with_observers(config: AgentConfig, observers: Observers) -> Applier {
        let docker = match DockerHost::connect(config.docker_socket.as_deref()).await {
            Ok(docker) => Some(docker),
            Err(error) => {
                warn!(%error, "Docker engine not reachable; config reloads and the exec fallback are unavailable");
                None
            }
        };
        Applier {
            docker,
            haproxy: None,
            desired: None,
            applied_version: 0,
            digest: MapDigest::default(),
            last_drift: None,
            drift_repairs: 0,
            last_error: None,
            container_started_at: None,
            map_file_stale: false,
            map_file_guard: MapFileGuard::default(),
            desired_config: None,
            in_service: None,
            reloads: Coalescer::new(config.reload_min_interval, config.reconcile_interval),
            last_reload: None,
            reload_count: 0,
            config_changes: 0,
            config,
            observers,
            binds: BindTargets::default(),
            stale_since: None,
        }
    }

    /// The version of the desired state held (0: none yet).
    pub fn version(&self) -> u64 {
        self.desired.as_ref().map(|d| d.version).unwrap_or(0)
    }

    /// Drops the desired state so the next stream asks for the full state; HAProxy keeps routing meanwhile.
    pub fn forget(&mut self) {
        self.desired = None;
        self.digest = MapDigest::default();
    }

    /// Digest and size of the desired map.
    pub fn map_summary(&self) -> (u64, u64) {
        (self.digest.value(), self.desired.as_ref().map(|d| d.map.len() as u64).unwrap_or(0))
    }

    /// Applies a full state or a delta; returns the version now applied.
    pub async fn apply(&mut self, message: pb::coordinator_message::Kind) -> Result<u64, ApplyError> {
        use pb::coordinator_message::Kind;
        let received = Instant::now();
        let result = match message {
            Kind::Full(full) => self.apply_full(full).await,
            Kind::Delta(delta) => self.apply_delta(delta, received).await,
            _ => return Err(ApplyError::Empty),
        };
        match &result {
            Ok(version) => {
                self.applied_version = *version;
                self.last_error = None;
                self.observers.metrics.applied("runtime", received.elapsed());
            }
            Err(error) => self.last_error = Some(error.to_string()),
        }
        self.observe_state();
        result
    }

    async fn apply_full(&mut self, full: pb::FullState) -> Result<u64, ApplyError> {
        let topology = full.topology.ok_or(ApplyError::Empty)?;
        let map: MapEntries = full.map.into_iter().map(|e| (e.fqdn, e.backend)).collect();
        self.digest = MapDigest::of(map.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // The state is ours even if HAProxy refuses it now: reconcile keeps converging towards it.
        self.desired = Some(DesiredState {
            version: full.version,
            container: self.config.container.clone().unwrap_or(topology.container.clone()),
            topology: topology_from_pb(&topology),
            map,
        });
        // The file first: a reload or restart from here on loads the new map.
        self.write_map_file_now().await?;
        self.topology_set(full.version).await?;
        let (haproxy, desired) = self.driver();
        let replaced = haproxy.replace_runtime_map(&desired.map).await;
        self.observers.metrics.map_replaced(replaced.is_ok());
        replaced?;
        let (_, desired) = self.driver();
        info!(version = desired.version, entries = desired.map.len(), "applied full state");
        let version = desired.version;
        self.map_file_stale = false;
        self.sync_admin_states().await?;
        Ok(version)
    }

    /// Renders the config for the desired topology, newly set at `version`, and decides whether
    /// it waits for a reload: only when it differs from the one in service.
    async fn topology_set(&mut self, version: u64) -> Result<(), ApplyError> {
        let desired = self.desired.as_ref().expect("a desired state is held");
        let rendered = Haproxy::render_config(&desired.topology)?;
        if self.in_service.is_none() {
            // First state since the agent started: HAProxy may already run exactly this config.
            let (haproxy, _) = self.driver();
            if haproxy.read_config().await?.as_deref() == Some(rendered.as_str()) {
                let topology = self.desired.as_ref().expect("held").topology.clone();
                self.in_service = Some(InService { version, topology, config: rendered.clone() });
            }
        }
        let in_service = self.in_service.as_ref().is_some_and(|s| s.config == rendered);
        if self.desired_config.as_deref() != Some(rendered.as_str()) && !in_service {
            self.config_changes += 1;
            self.observers.metrics.config_changed();
        }
        if in_service {
            self.reloads.settled();
        } else if self.desired_config.as_deref() != Some(rendered.as_str()) || self.reloads.pending().is_none() {
            self.reloads.config_changed(version, Instant::now());
        }
        self.desired_config = Some(rendered);
        Ok(())
    }

    async fn apply_delta(&mut self, delta: pb::Delta, received: Instant) -> Result<u64, ApplyError> {
        let held = self.version();
        let Some(desired) = self.desired.as_mut() else {
            return Err(ApplyError::OutOfOrder { from: delta.from_version, held });
        };
        if delta.from_version != held {
            return Err(ApplyError::OutOfOrder { from: delta.from_version, held });
        }
        // Only keys whose value really changes become runtime commands.
        let mut runtime = Vec::new();
        let mut changes = Vec::new();
        for entry in delta.upserts {
            // Every upsert is probed, a bind to the shard already held too (`bind --verify` waits for it).
            self.binds.bound(&entry.fqdn, &entry.backend);
            match desired.map.get(&entry.fqdn) {
                Some(current) if *current == entry.backend => {}
                Some(current) => {
                    self.digest.toggle(&entry.fqdn, current);
                    self.digest.toggle(&entry.fqdn, &entry.backend);
                    runtime.push(RuntimeChange::Set { fqdn: entry.fqdn.clone(), backend: entry.backend.clone() });
                    changes.push(MapChange::Upsert { fqdn: entry.fqdn, backend: entry.backend });
                }
                None => {
                    self.digest.toggle(&entry.fqdn, &entry.backend);
                    runtime.push(RuntimeChange::Add { fqdn: entry.fqdn.clone(), backend: entry.backend.clone() });
                    changes.push(MapChange::Upsert { fqdn: entry.fqdn, backend: entry.backend });
                }
            }
        }
        for fqdn in delta.removals {
            if let Some(current) = desired.map.get(&fqdn) {
                self.digest.toggle(&fqdn, current);
                self.binds.unbound(&fqdn);
                runtime.push(RuntimeChange::Del { fqdn: fqdn.clone() });
                changes.push(MapChange::Remove { fqdn });
            }
        }
        desired.apply_changes(&changes);
        desired.version = delta.version;
        let mut admin_changed = false;
        if let Some(topology) = &delta.topology {
            let topology = topology_from_pb(topology);
            admin_changed = admin_states_differ(&desired.topology, &topology);
            desired.topology = topology;
        }
        if !runtime.is_empty() {
            self.map_file_stale = true;
            self.stale_since.get_or_insert(received);
        }
        if delta.topology.is_some() {
            // The reload, if one is needed, follows on its schedule (`reload_if_due`).
            self.topology_set(delta.version).await?;
        }
        if admin_changed {
            self.sync_admin_states().await?;
        }
        if !runtime.is_empty() {
            // Live first; the map file follows in `persist`, once for a burst of deltas.
            let report = self.apply_runtime(&runtime).await?;
            if !report.errors.is_empty() {
                warn!(errors = ?report.errors, "runtime API refused some changes; reconcile will repair");
            }
        }
        Ok(self.version())
    }

    /// `Haproxy::apply_runtime`, counted in the metrics.
    async fn apply_runtime(&mut self, changes: &[RuntimeChange]) -> Result<crate::haproxy::RuntimeReport, ApplyError> {
        let metrics = self.observers.metrics.clone();
        let (haproxy, _) = self.driver();
        let result = haproxy.apply_runtime(changes).await;
        metrics.runtime_applied(changes, result.as_ref().map_err(|_| ()));
        Ok(result?)
    }

    /// The FQDNs bound since the last call (at most `sample::MAX_BIND_PROBES`), to probe.
    pub fn take_new_binds(&mut self) -> Vec<ProbeTarget> {
        self.binds.take()
    }

    /// The next periodic sample of `n` bound FQDNs, walking the map.
    pub fn probe_sample(&mut self, cursor: &mut crate::probe::sample::SampleCursor, n: usize) -> Vec<ProbeTarget> {
        match &self.desired {
            Some(desired) => cursor.next(&desired.map, n),
            None => Vec::new(),
        }
    }

    /// Passes the version held, the driver and the last error on to readiness and the metrics.
    fn observe_state(&mut self) {
        let error = self.last_error.clone();
        let entries = self.desired.as_ref().map(|d| d.map.len()).unwrap_or(0);
        self.observers.metrics.state(self.version(), entries);
        let driver = self.desired.is_some().then(|| self.driver().0.clone());
        self.observers.ready.applied(self.live_version(), driver, error);
    }

    /// The map file write owed for deltas applied since the file was last written, if any,
    /// with the version it covers. Run it (see `MapFileGuard`) before acknowledging that version
    /// (or `live_version`, if lower).
    /// Also returns when the oldest delta it covers arrived.
    pub fn pending_map_file(&mut self) -> Result<Option<(u64, MapFileWrite, Option<Instant>)>, ApplyError> {
        if !self.map_file_stale || self.desired.is_none() {
            return Ok(None);
        }
        let (haproxy, desired) = self.driver();
        let write = haproxy.prepare_map_file(&desired.map)?;
        let version = desired.version;
        self.map_file_stale = false;
        Ok(Some((version, write, self.stale_since.take())))
    }

    /// The highest version in service, which acks may name: the held one, unless a config
    /// change waits for its reload (then the version before it).
    pub fn live_version(&self) -> u64 {
        self.reloads.live_version(self.version())
    }

    /// When the pending reload is due; `None` when no config change waits.
    pub fn reload_due(&self) -> Option<Instant> {
        self.desired.as_ref()?;
        self.reloads.due_at()
    }

    /// Reloads HAProxy when a reload is pending and due; returns its report (with `error` set
    /// when it failed; the changes then stay pending and are retried).
    pub async fn reload_if_due(&mut self) -> Option<Result<pb::ReloadReport, ApplyError>> {
        if self.desired.is_none() || !self.reloads.is_due(Instant::now()) {
            return None;
        }
        Some(self.reload_now().await)
    }

    /// Why the pending reload happens: what changed since the config in service.
    fn pending_reason(&self) -> String {
        let Some(desired) = self.desired.as_ref() else {
            return String::new();
        };
        let Some(pending) = self.reloads.pending() else {
            return String::new();
        };
        let changes = match &self.in_service {
            Some(in_service) => reload::topology_changes(&in_service.topology, &desired.topology),
            None => vec!["agent start: HAProxy runs a config other than the one rendered for this state".to_owned()],
        };
        let changes = match &pending.forced {
            Some(forced) => std::iter::once(forced.clone()).chain(changes).collect(),
            None => changes,
        };
        reload::describe(&changes, reload::REASON_LIMIT, "rendered config changed")
    }

    /// Puts the desired config into service now: map file, `haproxy -c`, server state, reload
    /// (or restart), then the admin states again. Logged and kept as the last reload.
    async fn reload_now(&mut self) -> Result<pb::ReloadReport, ApplyError> {
        let reason = self.pending_reason();
        let kind = match (&self.in_service, self.reloads.pending().and_then(|p| p.forced.as_ref())) {
            (_, Some(_)) => ReloadKind::Drift,
            (None, None) => ReloadKind::AgentStart,
            (Some(_), None) => ReloadKind::Topology,
        };
        let changes = self.reloads.pending().map(|p| p.changes).unwrap_or(0);
        let from_version = self.in_service.as_ref().map(|s| s.version).unwrap_or(0);
        let mode = match self.config.reload {
            ReloadMode::Hitless => "hitless",
            ReloadMode::Restart => "restart",
        };
        let started = Instant::now();
        let result = async {
            // A reload rereads the map file, so it must hold the desired map first.
            self.write_map_file_now().await?;
            let (haproxy, desired) = self.driver();
            haproxy.put_config_in_service(&desired.topology).await?;
            Ok::<_, ApplyError>(())
        }
        .await;
        let desired = self.desired.as_ref().expect("a desired state is held");
        let to_version = desired.version;
        let duration_ms = started.elapsed().as_millis() as u64;
        self.observers.metrics.reloaded(kind, result.is_ok(), started.elapsed());
        let mut report = pb::ReloadReport {
            at_unix_ms: unix_ms(),
            reason,
            duration_ms,
            error: String::new(),
            mode: mode.to_owned(),
            from_version,
            to_version,
            changes,
        };
        let result = match result {
            Ok(()) => {
                let topology = desired.topology.clone();
                let config = self.desired_config.clone().unwrap_or_default();
                self.in_service = Some(InService { version: to_version, topology, config });
                self.reloads.reloaded(Instant::now());
                self.reload_count += 1;
                info!(reason = %report.reason, duration_ms, mode, from_version, to_version, changes, "HAProxy reloaded");
                // The state file carried them over; the replicated states win all the same.
                if let Err(error) = self.sync_admin_states().await {
                    warn!(%error, "admin states not applied after the reload; reconcile will retry");
                }
                Ok(report.clone())
            }
            Err(error) => {
                self.reloads.failed(Instant::now());
                report.error = error.to_string();
                self.last_error = Some(report.error.clone());
                warn!(%error, reason = %report.reason, duration_ms, mode, from_version, to_version, changes, "HAProxy reload failed");
                Err(error)
            }
        };
        self.last_reload = Some(report);
        self.observe_state();
        result
    }

    /// Brings HAProxy's forced admin states to the desired ones; returns how many changed.
    async fn sync_admin_states(&mut self) -> Result<usize, ApplyError> {
        let (haproxy, desired) = self.driver();
        let held = haproxy.servers_state().await?;
        let changes = admin_changes(&desired.topology, &held);
        if changes.is_empty() {
            return Ok(0);
        }
        let refused = haproxy.set_admin_states(&changes).await?;
        for (change, answer) in &refused {
            warn!(backend = %change.backend, server = %change.server, state = %change.state, %answer, "admin state refused");
        }
        let applied: Vec<String> = changes
            .iter()
            .filter(|c| !refused.iter().any(|(r, _)| r == *c))
            .map(|c| format!("{}/{} {}", c.backend, c.server, c.state))
            .collect();
        info!(changes = ?applied, "admin states applied");
        Ok(applied.len())
    }

    /// Orders map file writes made here with those run in the background.
    pub fn map_file_guard(&self) -> MapFileGuard {
        self.map_file_guard.clone()
    }

    /// Writes the desired map file now (full state, config change, repair), ahead of any queued write.
    async fn write_map_file_now(&mut self) -> Result<(), ApplyError> {
        let guard = self.map_file_guard.clone();
        let (haproxy, desired) = self.driver();
        let write = haproxy.prepare_map_file(&desired.map)?;
        guard.write(desired.version, write).await?;
        Ok(())
    }

    /// The driver for the desired container (rebuilt when the coordinator names another one),
    /// and the desired state. Only called once a desired state is held.
    fn driver(&mut self) -> (&Haproxy, &DesiredState) {
        let desired = self.desired.as_ref().expect("a desired state is held");
        let target = HaproxyTarget {
            container: desired.container.clone(),
            socket_dir: self.config.socket_dir.clone(),
            map_dir: self.config.map_dir.clone(),
            config_dir: self.config.config_dir.clone(),
            map_path: desired.topology.map_path.clone(),
            reload: self.config.reload,
        };
        if self.haproxy.as_ref().is_none_or(|h| h.target() != &target) {
            self.haproxy = Some(Haproxy::new(target, self.docker.clone(), self.config.runtime));
        }
        (self.haproxy.as_ref().expect("driver was just built"), desired)
    }

    /// Compares HAProxy's map and config with the desired state and repairs any drift.
    pub async fn reconcile(&mut self) -> Result<Option<pb::DriftReport>, ApplyError> {
        if self.desired.is_none() {
            return Ok(None);
        }
        // A stopped HAProxy serves nothing and can run neither `haproxy -c` nor runtime commands.
        self.start_if_stopped().await?;
        // The config too: a restarted container may have come back with an old file, or someone
        // edited it. A reload already pending puts the desired one back anyway.
        if self.reloads.pending().is_none() {
            let (haproxy, _) = self.driver();
            let file = haproxy.read_config().await?;
            if file.as_deref() != self.desired_config.as_deref() {
                let why = match file {
                    Some(_) => "reconcile: haproxy.cfg in the container differs from the rendered one",
                    None => "reconcile: haproxy.cfg missing in the container",
                };
                warn!(reason = why, "config drifted; reloading the rendered one");
                self.observers.metrics.config_drift();
                self.reloads.force(why.to_owned(), Instant::now());
            }
        }
        if let Some(reloaded) = self.reload_if_due().await {
            reloaded?;
        }
        self.sync_admin_states().await?;
        let (haproxy, desired) = self.driver();
        let actual = haproxy.show_map().await?;
        let diff = map_diff::diff(&desired.map, actual.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let Some(mut drift) = drift_report(&diff) else {
            return Ok(None);
        };
        let changed = diff.len();
        warn!(
            missing = drift.missing,
            wrong = drift.wrong,
            extra = drift.extra,
            duplicates = drift.duplicates,
            "HAProxy map drifted from the desired state; repairing"
        );
        let repairs = repairs(&diff);
        self.write_map_file_now().await?;
        if changed > BULK_REPAIR_THRESHOLD {
            let (haproxy, desired) = self.driver();
            let replaced = haproxy.replace_runtime_map(&desired.map).await;
            self.observers.metrics.map_replaced(replaced.is_ok());
            replaced?;
        } else {
            self.apply_runtime(&repairs).await?;
        }
        self.observers.metrics.map_drift(drift.missing, drift.wrong, drift.extra, drift.duplicates);
        drift.repaired = true;
        self.map_file_stale = false;
        self.drift_repairs += 1;
        self.last_drift = Some(drift.clone());
        Ok(Some(drift))
    }

    /// Starts the HAProxy container again when it is stopped, with the desired map file and config
    /// in place first, since HAProxy reads both at start.
    async fn start_if_stopped(&mut self) -> Result<(), ApplyError> {
        let (haproxy, _) = self.driver();
        if !haproxy.is_stopped().await? {
            return Ok(());
        }
        warn!(container = %haproxy.target().container, "HAProxy container is stopped; starting it again");
        // Without a shared map directory the file can only be written in a running container;
        // the repair after the start fills the runtime map then.
        if self.config.map_dir.is_some() {
            self.write_map_file_now().await?;
        }
        let (haproxy, desired) = self.driver();
        haproxy.start_stopped(&desired.topology).await?;
        Ok(())
    }

    /// Whether the HAProxy container needs a reconcile now: it started again since the last look
    /// (its map is then only the file), or it is stopped.
    pub async fn container_restarted(&mut self) -> bool {
        let (Some(docker), Some(desired)) = (&self.docker, &self.desired) else {
            return false;
        };
        let Ok(info) = docker.inspect(&desired.container).await else {
            return false;
        };
        let previous = self.container_started_at.replace(info.started_at.clone());
        !info.running || previous.is_some_and(|p| p != info.started_at)
    }

    /// Answers the coordinator's report request: starts the probes it asks for (their results
    /// follow in the report sent when they finish) and reports what holds now.
    pub async fn answer(&mut self, request: &pb::ReportRequest) -> pb::AgentReport {
        let targets = self.bound_targets(&request.probe_fqdns);
        self.observers.prober.spawn(targets, self.version(), Trigger::Verify);
        self.report(request.id, request.include_map).await
    }

    /// The FQDNs of `fqdns` this host's map binds, with their backends, at most `MAX_BIND_PROBES`.
    fn bound_targets(&self, fqdns: &[String]) -> Vec<ProbeTarget> {
        let Some(desired) = &self.desired else { return Vec::new() };
        fqdns
            .iter()
            .filter_map(|fqdn| {
                desired.map.get(fqdn).map(|backend| ProbeTarget { fqdn: fqdn.clone(), backend: backend.clone() })
            })
            .take(crate::probe::sample::MAX_BIND_PROBES)
            .collect()
    }

    /// A report of what HAProxy holds and how its backends are doing.
    pub async fn report(&mut self, request_id: u64, include_map: bool) -> pb::AgentReport {
        let (digest, entries) = self.map_summary();
        let mut report = pb::AgentReport {
            applied_version: self.reloads.live_version(self.applied_version),
            has_last_reload: self.last_reload.is_some(),
            last_reload: self.last_reload.clone(),
            reloads: self.reload_count,
            config_changes: self.config_changes,
            reload_pending: self.pending_reason(),
            map_digest: digest,
            map_entries: entries,
            docker_reachable: false,
            drift_repairs: self.drift_repairs,
            last_drift: self.last_drift.clone(),
            request_id,
            error: self.last_error.clone().unwrap_or_default(),
            ..Default::default()
        };
        if let Some(docker) = &self.docker {
            report.docker_reachable = docker.ping().await.is_ok();
        }
        let Some(container) = self.desired.as_ref().map(|d| d.container.clone()) else {
            return report;
        };
        let at = unix_ms();
        let mut container_check = host::container(&container, None, false, at);
        if let Some(docker) = &self.docker {
            report.container = Some(match docker.inspect(&container).await {
                Ok(info) => pb::ContainerState {
                    name: container.clone(),
                    found: true,
                    running: info.running,
                    started_at: info.started_at,
                },
                Err(_) => pb::ContainerState { name: container.clone(), ..Default::default() },
            });
            if let Some(state) = &report.container {
                container_check = host::container(&container, Some(state.found), state.running, at);
            }
        }
        let (haproxy, _) = self.driver();
        report.runtime_path = format!("{:?}", haproxy.runtime_path()).to_lowercase();
        let (admin_check, frontends_check) = match haproxy.show_servers_and_frontends().await {
            Ok((servers, frontends)) => {
                self.observers.metrics.servers(&servers);
                report.servers = servers
                    .into_iter()
                    .map(|s| pb::ServerHealth {
                        backend: s.backend,
                        server: s.server,
                        status: s.status,
                        check: s.check,
                        sessions: s.sessions,
                        admin: s.admin.as_str().to_owned(),
                    })
                    .collect();
                (host::passed(at), host::frontends(&frontends, at))
            }
            Err(error) => {
                report.error = format!("show stat: {error}");
                let why = format!("runtime API: {error}");
                (host::failed(why.clone(), at), host::failed(why, at))
            }
        };
        self.observers.prober.host_checks(container_check, admin_check, frontends_check);
        report.probes = Some(self.observers.prober.snapshot());
        report.has_probes = true;
        let (haproxy, _) = self.driver();
        if include_map {
            match haproxy.show_map().await {
                Ok(actual) => {
                    // What HAProxy really holds, duplicates included.
                    report.map_digest = MapDigest::of(actual.iter().map(|(k, v)| (k.as_str(), v.as_str()))).value();
                    report.map_entries = actual.len() as u64;
                    report.map = actual.into_iter().map(|(fqdn, backend)| pb::MapEntry { fqdn, backend }).collect();
                    report.has_map = true;
                }
                Err(error) => report.error = format!("show map: {error}"),
            }
        }
        report
    }
}

fn topology_from_pb(topology: &pb::AgentTopology) -> Topology {
    let mut backends: Vec<Backend> = topology
        .backends
        .iter()
        .map(|b| Backend {
            name: b.name.clone(),
            servers: b
                .servers
                .iter()
                .map(|s| Server { name: s.name.clone(), address: s.address.clone(), id: s.id, admin: s.admin().into() })
                .collect(),
        })
        .collect();
    backends.sort_by(|a, b| a.name.cmp(&b.name));
    Topology { map_path: topology.map_path.clone(), backends }
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The drift report for `diff`, with a few examples; `None` when nothing differs.
fn drift_report(diff: &MapDiff<'_>) -> Option<pb::DriftReport> {
    if diff.is_empty() {
        return None;
    }
    let counts = diff.counts();
    let examples = diff
        .iter()
        .take(DRIFT_EXAMPLES)
        .map(|difference| match difference {
            KeyDiff::Missing { key, .. } => format!("missing {key}"),
            KeyDiff::Duplicated { key, .. } => format!("duplicate {key}"),
            KeyDiff::Wrong { key, desired, held } => format!("{key} -> {held} instead of {desired}"),
            KeyDiff::Extra { key, .. } => format!("extra {key}"),
        })
        .collect();
    Some(pb::DriftReport {
        missing: counts.missing,
        wrong: counts.wrong,
        extra: counts.extra,
        duplicates: counts.duplicated,
        examples,
        found_at_unix_ms: unix_ms(),
        ..Default::default()
    })
}

/// Key-by-key runtime commands that fix every difference in `diff`.
fn repairs(diff: &MapDiff<'_>) -> Vec<RuntimeChange> {
    let mut changes = Vec::with_capacity(diff.len());
    for difference in diff {
        match *difference {
            KeyDiff::Missing { key, desired } => {
                changes.push(RuntimeChange::Add { fqdn: key.to_owned(), backend: desired.to_owned() })
            }
            // `del map` removes every copy, then one clean entry goes back.
            KeyDiff::Duplicated { key, desired, .. } => {
                changes.push(RuntimeChange::Del { fqdn: key.to_owned() });
                changes.push(RuntimeChange::Add { fqdn: key.to_owned(), backend: desired.to_owned() });
            }
            KeyDiff::Wrong { key, desired, .. } => {
                changes.push(RuntimeChange::Set { fqdn: key.to_owned(), backend: desired.to_owned() })
            }
            KeyDiff::Extra { key, .. } => changes.push(RuntimeChange::Del { fqdn: key.to_owned() }),
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> MapEntries {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn held(entries: &[(&str, &str)]) -> Vec<(String, String)> {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[tokio::test]
    async fn an_older_map_file_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let target = HaproxyTarget {
            container: "lb".into(),
            socket_dir: None,
            map_dir: Some(dir.path().to_path_buf()),
            config_dir: None,
            map_path: "/var/lib/haproxy/maps/fqdn-to-shard.map".into(),
            reload: crate::haproxy::ReloadMode::Hitless,
        };
        let haproxy = Haproxy::new(target, None, crate::haproxy::RuntimeMode::Socket);
        let guard = MapFileGuard::default();
        let newer = haproxy.prepare_map_file(&map(&[("new.com", "s1")])).unwrap();
        let older = haproxy.prepare_map_file(&map(&[("old.com", "s1")])).unwrap();
        guard.write(7, newer).await.unwrap();
        guard.write(6, older).await.unwrap();
        let file = std::fs::read_to_string(dir.path().join("fqdn-to-shard.map")).unwrap();
        assert_eq!(file, "new.com s1\n");
    }

    fn diff<'a>(desired: &'a MapEntries, actual: &'a [(String, String)]) -> MapDiff<'a> {
        map_diff::diff(desired, actual.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    #[test]
    fn drift_counts_each_kind() {
        let desired = map(&[("ok.com", "s1"), ("gone.com", "s1"), ("moved.com", "s1"), ("twice.com", "s1")]);
        let actual =
            held(&[("ok.com", "s1"), ("moved.com", "s2"), ("twice.com", "s1"), ("twice.com", "s1"), ("x.com", "s1")]);
        let drift = drift_report(&diff(&desired, &actual)).unwrap();
        assert_eq!((drift.missing, drift.wrong, drift.extra, drift.duplicates), (1, 1, 1, 1));
        assert_eq!(
            drift.examples,
            ["missing gone.com", "moved.com -> s2 instead of s1", "duplicate twice.com", "extra x.com"]
        );
        assert!(!drift.repaired);
        assert!(drift_report(&diff(&desired, &held(&[("ok.com", "s1")]))).is_some());
        let exact = held(&[("ok.com", "s1"), ("gone.com", "s1"), ("moved.com", "s1"), ("twice.com", "s1")]);
        assert!(drift_report(&diff(&desired, &exact)).is_none());
    }

    #[test]
    fn drift_quotes_a_bounded_number_of_examples() {
        let desired: MapEntries = (0..DRIFT_EXAMPLES + 5).map(|i| (format!("k{i:02}.com"), "s1".to_string())).collect();
        let drift = drift_report(&diff(&desired, &[])).unwrap();
        assert_eq!(drift.missing as usize, DRIFT_EXAMPLES + 5);
        assert_eq!(drift.examples.len(), DRIFT_EXAMPLES);
        assert_eq!(drift.examples[0], "missing k00.com");
    }

    #[test]
    fn repairs_fix_every_kind_of_drift() {
        let desired = map(&[("gone.com", "s1"), ("moved.com", "s1"), ("twice.com", "s1")]);
        let actual = held(&[("moved.com", "s2"), ("twice.com", "s1"), ("twice.com", "s1"), ("x.com", "s1")]);
        let changes = repairs(&diff(&desired, &actual));
        assert_eq!(
            changes,
            vec![
                RuntimeChange::Add { fqdn: "gone.com".into(), backend: "s1".into() },
                RuntimeChange::Set { fqdn: "moved.com".into(), backend: "s1".into() },
                RuntimeChange::Del { fqdn: "twice.com".into() },
                RuntimeChange::Add { fqdn: "twice.com".into(), backend: "s1".into() },
                RuntimeChange::Del { fqdn: "x.com".into() },
            ]
        );
    }
}
