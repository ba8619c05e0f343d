//! In-process coordinator clusters: each node on its own runtime, listeners on 127.0.0.1:0,
//! a temp dir per node, and waits on conditions instead of sleeps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::poll::wait_for;
use anyhow::Context;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_coordinator::daemon::config::CoordinatorConfig;
use lbfleet_coordinator::daemon::server::Coordinator;
use lbfleet_coordinator::pki;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::tls::TlsDir;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;
use tempfile::TempDir;
use tokio::runtime::Runtime;

/// Node ids the test PKI has certificates for.
pub const MAX_NODES: u64 = 5;
/// How long a test waits for a condition before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// One node: its runtime, its running coordinator (if up) and its fixed address.
struct TestNode {
    runtime: Option<Runtime>,
    coordinator: Option<Coordinator>,
    config: CoordinatorConfig,
}

/// A coordinator group running inside the test process.
pub struct TestCluster {
    /// Holds every node's data and the PKI; removed on drop.
    pub dir: TempDir,
    /// The cluster's PKI (coordinators 1..=MAX_NODES, admin `test`, agents `lb-a` and `lb-b`).
    pub tls: TlsDir,
    nodes: BTreeMap<u64, TestNode>,
    snapshot_every: u64,
}

impl TestCluster {
    /// Starts `size` nodes and bootstraps them as one group.
    pub async fn start(size: u64, snapshot_every: u64) -> anyhow::Result<TestCluster> {
        let dir = tempfile::tempdir()?;
        let tls_path = dir.path().join("tls");
        let mut identities: Vec<Identity> =
            (1..=MAX_NODES).map(|id| Identity::new(Role::Coordinator, &id.to_string())).collect::<Result<_, _>>()?;
        identities.push(Identity::new(Role::Admin, "test")?);
        identities.push(Identity::new(Role::Agent, "lb-a")?);
        identities.push(Identity::new(Role::Agent, "lb-b")?);
        pki::init(&tls_path, &identities)?;
        let mut cluster = TestCluster { dir, tls: TlsDir::new(tls_path), nodes: BTreeMap::new(), snapshot_every };
        for id in 1..=size {
            cluster.spawn(id, "127.0.0.1:0".parse()?).await?;
        }
        let members: BTreeMap<u64, String> = cluster.nodes.iter().map(|(id, n)| (*id, n.address())).collect();
        cluster.coordinator(1).bootstrap(&members).await?;
        cluster.leader().await?;
        Ok(cluster)
    }

    fn node_config(&self, id: u64, listen: SocketAddr) -> CoordinatorConfig {
        CoordinatorConfig {
            node_id: id,
            listen,
            advertise: None,
            data_dir: self.dir.path().join(format!("node-{id}")),
            tls_dir: self.tls.path().to_path_buf(),
            bootstrap: BTreeMap::new(),
            snapshot_every: self.snapshot_every,
            keep_logs_behind_snapshot: 0,
            metrics_listen: None,
            change_log_capacity: lbfleet_coordinator::state::changelog::DEFAULT_CAPACITY,
        }
    }

    /// Starts node `id` on its own runtime; it joins nothing by itself.
    pub async fn spawn(&mut self, id: u64, listen: SocketAddr) -> anyhow::Result<String> {
        let mut config = self.node_config(id, listen);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("node-{id}"))
            .enable_all()
            .build()?;
        // The data dir of a node stopped a moment ago may still be locked while its runtime winds down.
        let coordinator = wait_for("the node's storage to open", WAIT, || {
            let config = config.clone();
            let handle = runtime.spawn(async move { Coordinator::start(&config).await });
            async move { handle.await.ok().and_then(Result::ok) }
        })
        .await
        .with_context(|| format!("starting node {id}"))?;
        config.listen = coordinator.local_addr;
        let address = coordinator.advertise.clone();
        self.nodes.insert(id, TestNode { runtime: Some(runtime), coordinator: Some(coordinator), config });
        Ok(address)
    }

    /// The running coordinator of node `id`.
    pub fn coordinator(&self, id: u64) -> &Coordinator {
        self.nodes[&id].coordinator.as_ref().expect("node is running")
    }

    /// Node `id`'s gRPC address.
    pub fn address(&self, id: u64) -> String {
        self.nodes[&id].address()
    }

    /// Ids of the nodes currently running.
    pub fn running(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.coordinator.is_some()).map(|(id, _)| *id).collect()
    }

    /// Waits until every running node agrees on one running leader, and returns it.
    pub async fn leader(&self) -> anyhow::Result<u64> {
        wait_for("a leader all running nodes agree on", WAIT, || async {
            let running = self.running();
            let leaders: Vec<Option<u64>> =
                running.iter().map(|id| self.coordinator(*id).raft.metrics().borrow().current_leader).collect();
            let first = leaders.first().copied().flatten()?;
            (running.contains(&first) && leaders.iter().all(|l| *l == Some(first))).then_some(first)
        })
        .await
    }

    /// A CLI client bound to node `id` exactly (no leader discovery).
    pub async fn client_of(&self, id: u64) -> anyhow::Result<Client> {
        let admin = self.tls.admin_identity(None)?;
        let tls = Credentials::client(&self.tls, &admin)?;
        Ok(Client::first_reachable(&[self.address(id)], &tls, Duration::from_secs(10)).await?)
    }

    /// A client as the CLI makes one: any endpoint, then the leader.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let endpoints: Vec<String> = self.running().iter().map(|id| self.address(*id)).collect();
        Ok(Client::connect(&endpoints, &self.tls, None, Duration::from_secs(10)).await?)
    }

    /// Gracefully stops node `id`, keeping its data dir.
    pub async fn stop(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(coordinator) = node.coordinator.take() {
            coordinator.shutdown().await;
        }
        if let Some(runtime) = node.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Kills node `id` abruptly: its runtime is dropped with every task in flight.
    pub fn crash(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let coordinator = node.coordinator.take();
        if let Some(runtime) = node.runtime.take() {
            runtime.shutdown_background();
        }
        drop(coordinator);
    }

    /// Starts a stopped node again from its data dir, on its old address.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let listen = self.nodes[&id].config.listen;
        self.spawn(id, listen).await.map(|_| ())
    }

    /// Where node `id` keeps its data.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.nodes[&id].config.data_dir.clone()
    }
}

impl TestNode {
    fn address(&self) -> String {
        self.config.listen.to_string()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            node.coordinator.take();
            if let Some(runtime) = node.runtime.take() {
                runtime.shutdown_background();
            }
        }
    }
}
