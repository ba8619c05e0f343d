//! Starts one coordinator node: sled storage, openraft, and the mTLS gRPC listener.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;

use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::credentials::Gate;
use lbfleet_proto::ops_http;
use lbfleet_proto::tls::TlsDir;
use lbfleet_proto::tls_io;
use lbfleet_proto::transport;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;
use openraft::error::Fatal;
use openraft::error::InitializeError;
use openraft::error::RaftError;
use openraft::ConfigError;
use openraft::SnapshotPolicy;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::task::AbortOnDropHandle;
use tracing::info;
use tracing::warn;

use super::config::CoordinatorConfig;
use super::health;
use crate::agents::registry::AgentRegistry;
use crate::agents::service::AgentStreamService;
use crate::api::admin::AdminService;
use crate::api::forward::Forwarder;
use crate::http;
use crate::http::OpsSources;
use crate::metrics;
use crate::metrics::WriteMetrics;
use crate::raft::durable::DurableDb;
use crate::raft::durable::OpenError;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::service::RaftService;
use crate::raft::state_machine::SharedState;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::Member;
use crate::raft::NodeId;
use crate::raft::Raft;
use crate::raft::StorageError;

/// The sled database's directory inside the data dir.
pub const SLED_DIR: &str = "sled";

/// Why a coordinator could not start or bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// This node's certificate, its key or the CA cannot be loaded.
    #[error("TLS: {source}")]
    Tls {
        /// What is wrong with the TLS directory.
        #[from]
        source: lbfleet_proto::tls::TlsError,
    },
    /// The node id does not make a valid certificate identity.
    #[error("invalid node identity: {source}")]
    Identity {
        /// Why the name is refused.
        #[from]
        source: lbfleet_proto::identity::IdentityError,
    },
    /// The gRPC listener cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address asked for.
        address: SocketAddr,
        /// The bind error.
        source: io::Error,
    },
    /// The sled database in the data dir cannot be opened.
    #[error("cannot open data dir {}: {source}", path.display())]
    Storage {
        /// sled's directory.
        path: PathBuf,
        /// Why it cannot be opened.
        source: OpenError,
    },
    /// The operators' HTTP listener (`metrics_listen`) cannot be bound.
    #[error("cannot listen for metrics on {address}: {source}")]
    MetricsListen {
        /// The address asked for.
        address: SocketAddr,
        /// The bind error.
        source: io::Error,
    },
    /// The Raft log stored in the database cannot be read.
    #[error("cannot open the Raft log in {}: {source}", path.display())]
    Log {
        /// sled's directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// The state machine or its snapshot cannot be read back.
    #[error("cannot open the state machine in {}: {source}", path.display())]
    StateMachine {
        /// sled's directory.
        path: PathBuf,
        /// openraft's storage error.
        source: StorageError,
    },
    /// openraft refuses the Raft settings.
    #[error("invalid Raft settings: {source}")]
    RaftConfig {
        /// Which setting is wrong.
        #[from]
        source: ConfigError,
    },
    /// openraft stopped while starting, or while asked whether the storage is initialized.
    #[error("Raft failed to start: {source}")]
    RaftStart {
        /// openraft's fatal error.
        #[from]
        source: Fatal<NodeId>,
    },
    /// The new cluster could not be initialized with the members given.
    #[error("cannot bootstrap the cluster: {source}")]
    Bootstrap {
        /// openraft's error.
        #[from]
        source: RaftError<NodeId, InitializeError<NodeId, Member>>,
    },
    /// The API's own descriptors did not load into gRPC reflection (a build defect).
    #[error("gRPC reflection: {source}")]
    Reflection {
        /// tonic-reflection's error.
        #[from]
        source: tonic_reflection::server::Error,
    },
}

/// A running coordinator node.
pub struct Coordinator {
    /// This node's Raft handle.
    pub raft: Raft,
    /// The applied state, for in-process readers.
    pub shared: Arc<SharedState>,
    /// The address the gRPC listener is bound to (the real port when 0 was asked).
    pub local_addr: SocketAddr,
    /// The address peers and clients are told to use.
    pub advertise: String,
    /// The address the operators' HTTP listener is bound to, when it is on.
    pub metrics_addr: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Re-reads the certificates on change and SIGHUP for as long as the node runs.
    _watcher: AbortOnDropHandle<()>,
    /// Keeps `grpc.health.v1` in step with Raft's view of a leader.
    _health: AbortOnDropHandle<()>,
    /// Serves `/metrics`, `/healthz`, `/readyz` and the status page, when asked for.
    ops: Option<AbortOnDropHandle<()>>,
}

impl Coordinator {
    /// Opens storage, starts Raft and begins serving; does not bootstrap.
    pub async fn start(config: &CoordinatorConfig) -> Result<Coordinator, StartError> {
        let tls = TlsDir::new(&config.tls_dir);
        let identity = Identity::new(Role::Coordinator, &config.node_id.to_string())?;
        // The gate reads the revocations of the applied state, filled in once storage is open.
        let revocations: Arc<OnceLock<Arc<SharedState>>> = Arc::new(OnceLock::new());
        let credentials = Credentials::server(&tls, &identity, revocation_gate(revocations.clone()))?;
        // Re-reads the certificates on change and SIGHUP for as long as the node runs.
        let watcher = AbortOnDropHandle::new(credentials.watch());

        // Bind first: a node that cannot listen must fail before it locks its storage.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen { address: config.listen, source })?;
        let local_addr =
            listener.local_addr().map_err(|source| StartError::Listen { address: config.listen, source })?;
        let advertise = config.advertise.clone().unwrap_or_else(|| local_addr.to_string());
        let ops_listener = match config.metrics_listen {
            Some(address) => Some(
                ops_http::bind(&address.to_string())
                    .await
                    .map_err(|source| StartError::MetricsListen { address, source })?,
            ),
            None => None,
        };

        let sled_path = config.data_dir.join(SLED_DIR);
        let db =
            DurableDb::open(&sled_path).map_err(|source| StartError::Storage { path: sled_path.clone(), source })?;
        let log_store = LogStore::open(&db).map_err(|source| StartError::Log { path: sled_path.clone(), source })?;
        let committed = log_store.committed_index();
        let state_machine = StateMachineStore::open_with_change_log(&db, config.change_log_capacity)
            .map_err(|source| StartError::StateMachine { path: sled_path, source })?;
        let shared = state_machine.shared();
        let _ = revocations.set(shared.clone());

        let raft_config = openraft::Config {
            cluster_name: "lbfleet".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.keep_logs_behind_snapshot,
            max_payload_entries: 1_000,
            snapshot_max_chunk_size: 8 * 1024 * 1024,
            ..Default::default()
        }
        .validate()?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            Network::new(credentials.clone()),
            log_store,
            state_machine,
        )
        .await?;

        let agents = Arc::new(AgentRegistry::new(config.node_id));
        let writes = WriteMetrics::default();
        let admin = AdminService::new(
            raft.clone(),
            shared.clone(),
            Forwarder::new(credentials.clone()),
            committed.clone(),
            agents.clone(),
            writes.clone(),
        );
        let sources = OpsSources { raft: raft.clone(), committed, shared: shared.clone(), agents: agents.clone() };
        let agent_stream = AgentStreamService::new(raft.clone(), shared.clone(), agents);
        let (health, health_task) = health::health_service(&raft);
        let (stop, stopped) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            // Frozen peers and agents are noticed by their unanswered PINGs, not only by TTLs.
            .http2_keepalive_interval(Some(transport::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(transport::KEEPALIVE_TIMEOUT))
            .add_service(transport::raft_server(RaftService::new(raft.clone())))
            .add_service(transport::agent_stream_server(agent_stream))
            .add_service(transport::admin_server(admin))
            .add_service(health)
            .add_service(health::reflection_service()?);
        let server = tokio::spawn(router.serve_with_incoming_shutdown(
            tls_io::accept(listener, credentials.clone(), transport::CONNECT_TIMEOUT),
            async {
                let _ = stopped.await;
            },
        ));
        info!(node.id = config.node_id, %local_addr, %advertise, "coordinator listening");
        let (ops, metrics_addr) = match ops_listener {
            Some((listener, local_addr)) => {
                let registry = metrics::registry(
                    &writes,
                    sources.raft.clone(),
                    sources.committed.clone(),
                    sources.shared.clone(),
                    sources.agents.clone(),
                );
                let serving = ops_http::serve(listener, http::router(sources, registry));
                info!(%local_addr, "metrics listening");
                (Some(AbortOnDropHandle::new(serving)), Some(local_addr))
            }
            None => (None, None),
        };
        Ok(Coordinator {
            raft,
            shared,
            local_addr,
            advertise,
            metrics_addr,
            stop,
            server,
            _watcher: watcher,
            _health: AbortOnDropHandle::new(health_task),
            ops,
        })
    }

    /// A check that the node is not wedged: Raft's core runs a closure sent to it, and the applied
    /// state's lock can be taken. For the systemd watchdog; being a follower or leaderless is fine.
    pub fn liveness(
        &self,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + 'static {
        let (raft, shared) = (self.raft.clone(), self.shared.clone());
        move || {
            let (raft, shared) = (raft.clone(), shared.clone());
            Box::pin(async move {
                let core = raft.with_raft_state(|_| ()).await.is_ok();
                let state = tokio::task::spawn_blocking(move || drop(shared.read())).await.is_ok();
                core && state
            })
        }
    }

    /// Creates a new cluster with these members, unless this node's storage already belongs to one.
    pub async fn bootstrap(&self, members: &BTreeMap<NodeId, String>) -> Result<bool, StartError> {
        if self.raft.is_initialized().await? {
            info!("storage already initialized; --bootstrap ignored");
            return Ok(false);
        }
        let nodes: BTreeMap<NodeId, Member> =
            members.iter().map(|(id, addr)| (*id, Member::new(addr.clone()))).collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => {
                info!(members = members.len(), "bootstrapped a new cluster");
                Ok(true)
            }
            // Every member may be started with --bootstrap: a peer that initialized first may already
            // have asked for this node's vote, and the cluster then exists without us initializing it.
            Err(RaftError::APIError(InitializeError::NotAllowed(state))) => {
                info!(%state, "a peer bootstrapped the cluster first; joining it");
                Ok(false)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Stops serving and shuts Raft down, releasing the data dir.
    pub async fn shutdown(self) {
        // Probes must not see a node that is going away as ready.
        drop(self.ops);
        let _ = self.stop.send(());
        if let Err(error) = self.server.await {
            warn!(%error, "gRPC server task ended abnormally");
        }
        if let Err(error) = self.raft.shutdown().await {
            warn!(%error, "raft shutdown failed");
        }
    }
}

/// Refuses revoked client certificates at the handshake, by the state applied on this node.
fn revocation_gate(state: Arc<OnceLock<Arc<SharedState>>>) -> Gate {
    Arc::new(move |certified| match state.get() {
        Some(shared) => match shared.read().state.revocations.refusal(certified) {
            Some(reason) => Err(reason),
            None => Ok(()),
        },
        // Storage opens before the listener serves; nothing can be refused earlier.
        None => Ok(()),
    })
}

/// Runs a coordinator until SIGINT/SIGTERM.
pub async fn run(config: CoordinatorConfig) -> anyhow::Result<()> {
    let coordinator = Coordinator::start(&config).await?;
    if !config.bootstrap.is_empty() {
        let mut members = config.bootstrap.clone();
        // This node's own entry may carry its real port only now.
        members.entry(config.node_id).or_insert_with(|| coordinator.advertise.clone());
        coordinator.bootstrap(&members).await?;
    }
    // Under systemd (Type=notify): serving from now on, and watched while the node is live.
    let _watchdog = lbfleet_proto::systemd::ready_and_watch(coordinator.liveness()).map(AbortOnDropHandle::new);
    lbfleet_proto::process::shutdown_signal().await;
    info!("shutting down");
    coordinator.shutdown().await;
    Ok(())
}
