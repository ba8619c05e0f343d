//! An lbfleet coordinator cluster run as separate OS processes on loopback, for process-level
//! tests (kill, restart from the data dir) and benchmarks.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_proto::tls::TlsDir;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tempfile::TempDir;

/// The admin identity `ProcessCluster` creates certificates for.
pub const ADMIN: &str = "operator";

/// How long `client()` waits for a leader before giving up.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// How long `terminate()` waits for a graceful exit before SIGKILL.
const TERMINATE_DEADLINE: Duration = Duration::from_secs(10);
/// Per-request timeout of the clients handed out.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of a node's log quoted when it fails.
const LOG_TAIL_LINES: usize = 30;
/// Written to a node's log before each start.
const START_MARK: &str = "--- lbfleet-tests: starting node ";

/// The `lbfleet` binary to run: `LBFLEET_BIN`, else the newer of the workspace's release and debug builds.
pub fn lbfleet_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LBFLEET_BIN") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "LBFLEET_BIN={} is not a file", path.display());
        return path;
    }
    let target = target_dir();
    let candidates = [target.join("release/lbfleet"), target.join("debug/lbfleet")];
    candidates
        .iter()
        .filter_map(|path| Some((std::fs::metadata(path).ok()?.modified().ok()?, path)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path.clone())
        .unwrap_or_else(|| {
            panic!(
                "no lbfleet binary at {} or {}: run `cargo build --bin lbfleet -p lbfleet-coordinator` \
                 (add --release for benchmarks) or set LBFLEET_BIN",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// The `lbfleet-agent` binary to run: `LBFLEET_AGENT_BIN`, else the newer of the workspace's release and debug builds.
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LBFLEET_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let target = target_dir();
    [target.join("release/lbfleet-agent"), target.join("debug/lbfleet-agent")]
        .into_iter()
        .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path)
        .unwrap_or_else(|| panic!("no lbfleet-agent binary under {}: run `cargo build --bins`", target.display()))
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// Settings of a `ProcessCluster` beyond its size.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `lbfleet` binary to run.
    pub binary: PathBuf,
    /// Passed as `--snapshot-every` when set.
    pub snapshot_every: Option<u64>,
    /// `LBFLEET_LOG` for the nodes; `None` keeps the caller's environment (or the binary's default).
    pub log_filter: Option<String>,
    /// Starts every node with `--metrics-listen 127.0.0.1:0`; `metrics_addr` reads the port back.
    pub metrics: bool,
    /// More environment for the nodes (e.g. a service manager's NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            binary: lbfleet_binary(),
            snapshot_every: None,
            log_filter: None,
            metrics: false,
            env: Vec::new(),
        }
    }
}

/// One coordinator node: its fixed address and data dir, and its process while it runs.
struct NodeProcess {
    id: u64,
    address: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Mutex<Option<Child>>,
}

/// A coordinator cluster whose nodes are child processes; dropping it kills them all.
pub struct ProcessCluster {
    /// Holds the TLS material, data dirs and logs; removed on drop.
    pub dir: TempDir,
    /// Certificates of the CA, every node and the admin `ADMIN`.
    pub tls_dir: PathBuf,
    options: ClusterOptions,
    nodes: Vec<NodeProcess>,
}

impl ProcessCluster {
    /// Creates certificates, picks free loopback ports and starts `size` bootstrapping nodes.
    pub fn start(size: usize) -> anyhow::Result<ProcessCluster> {
        Self::start_with(size, ClusterOptions::default())
    }

    /// Like `start`, with explicit options.
    pub fn start_with(size: usize, options: ClusterOptions) -> anyhow::Result<ProcessCluster> {
        anyhow::ensure!(size > 0, "a cluster needs at least one node");
        let dir = tempfile::Builder::new().prefix("lbfleet-cluster-").tempdir()?;
        let tls_dir = dir.path().join("tls");
        let ids: Vec<String> = (1..=size).map(|id| id.to_string()).collect();
        let output = Command::new(&options.binary)
            .arg("pki")
            .arg("init")
            .arg("--dir")
            .arg(&tls_dir)
            .arg("--coordinator")
            .args(&ids)
            .arg("--admin")
            .arg(ADMIN)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", options.binary.display()))?;
        if !output.status.success() {
            bail!("lbfleet pki init failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
        }

        let nodes = free_ports(size)?
            .into_iter()
            .zip(1u64..)
            .map(|(port, id)| NodeProcess {
                id,
                address: format!("127.0.0.1:{port}"),
                data_dir: dir.path().join(format!("node-{id}")),
                log_path: dir.path().join(format!("node-{id}.log")),
                child: Mutex::new(None),
            })
            .collect();
        let mut cluster = ProcessCluster { dir, tls_dir, options, nodes };
        let bootstrap = cluster.nodes.iter().map(|n| format!("{}={}", n.id, n.address)).collect::<Vec<_>>().join(",");
        for index in 0..size {
            cluster.spawn(index, Some(&bootstrap))?;
        }
        Ok(cluster)
    }

    /// The nodes' gRPC addresses, in node-id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address.clone()).collect()
    }

    /// The gRPC address of the node at `index` (node id `index + 1`).
    pub fn endpoint(&self, index: usize) -> String {
        self.nodes[index].address.clone()
    }

    /// The Raft node id of the node at `index`.
    pub fn node_id(&self, index: usize) -> u64 {
        self.nodes[index].id
    }

    /// The number of nodes, running or not.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// The TLS directory as the client library takes it.
    pub fn tls(&self) -> TlsDir {
        TlsDir::new(&self.tls_dir)
    }

    /// The data dir of the node at `index`.
    pub fn data_dir(&self, index: usize) -> &Path {
        &self.nodes[index].data_dir
    }

    /// The OS process id of the node at `index`, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.nodes[index].child.lock().expect("child lock").as_ref().map(Child::id)
    }

    /// Whether the node at `index` was started and has not exited.
    pub fn is_running(&self, index: usize) -> bool {
        let mut child = self.nodes[index].child.lock().expect("child lock");
        child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// A client connected to the leader, once the running nodes have elected one.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let deadline = Instant::now() + LEADER_DEADLINE;
        let endpoints = self.running_endpoints();
        anyhow::ensure!(!endpoints.is_empty(), "no coordinator of this cluster is running");
        let tls = self.tls();
        loop {
            self.check_alive()?;
            let last = match Client::connect(&endpoints, &tls, None, CLIENT_TIMEOUT).await {
                Ok(client) => match client.status().await {
                    // `connect` moves to the leader only if one was known when it asked.
                    Ok(status) if status.has_leader && status.current_leader == status.node_id => return Ok(client),
                    Ok(status) => {
                        format!("{} reports leader {} ({})", client.endpoint(), status.current_leader, status.state)
                    }
                    Err(error) => format!("{}: {error}", client.endpoint()),
                },
                Err(error) => error.to_string(),
            };
            if Instant::now() >= deadline {
                bail!("no leader within {LEADER_DEADLINE:?}: {last}\n{}", self.log_tails());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The index of the leader as `client` sees it, once it knows one: a busy machine may hold a
    /// second election right after the first.
    pub async fn leader_index(&self, client: &Client) -> anyhow::Result<usize> {
        let leader = crate::poll::wait_for("a leader", LEADER_DEADLINE, || async {
            let status = client.status().await.ok()?;
            status.has_leader.then_some(status.current_leader)
        })
        .await?;
        (0..self.size())
            .find(|&i| self.node_id(i) == leader)
            .ok_or_else(|| anyhow::anyhow!("leader {leader} is not a member of this cluster"))
    }

    /// Kills the node at `index` with SIGKILL and reaps it; its data dir stays.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.get_mut().expect("child lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the node at `index` with SIGSTOP: it keeps its sockets and answers nothing.
    pub fn freeze(&self, index: usize) {
        self.signal(index, Signal::SIGSTOP);
    }

    /// Lets a frozen node at `index` go on (SIGCONT).
    pub fn thaw(&self, index: usize) {
        self.signal(index, Signal::SIGCONT);
    }

    /// Sends SIGHUP to the node at `index`: it re-reads its certificates.
    pub fn hang_up(&self, index: usize) {
        self.signal(index, Signal::SIGHUP);
    }

    fn signal(&self, index: usize, signal: Signal) {
        if let Some(pid) = self.pid(index).and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
    }

    /// Stops the node at `index` with SIGTERM, falling back to SIGKILL after a deadline.
    pub fn terminate(&mut self, index: usize) {
        let Some(mut child) = self.nodes[index].child.get_mut().expect("child lock").take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + TERMINATE_DEADLINE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the stopped node at `index` again from its data dir, without `--bootstrap`.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(child) = self.nodes[index].child.get_mut().expect("child lock") {
            if child.try_wait()?.is_none() {
                bail!("node {} is still running; kill or terminate it first", self.nodes[index].id);
            }
        }
        self.spawn(index, None)
    }

    /// The address of the operators' HTTP listener of the node at `index` (started with
    /// `ClusterOptions::metrics`), from its log since it was last started.
    pub async fn metrics_addr(&self, index: usize) -> anyhow::Result<SocketAddr> {
        anyhow::ensure!(self.options.metrics, "the cluster was started without ClusterOptions::metrics");
        let found = crate::poll::wait_for("the node to log its metrics address", LEADER_DEADLINE, || async {
            let log = self.log(index);
            let since_start = log.rsplit(START_MARK).next().unwrap_or_default();
            logged_metrics_addr(since_start)
        })
        .await;
        found.with_context(|| format!("node {}:\n{}", self.nodes[index].id, tail(&self.log(index), LOG_TAIL_LINES)))
    }

    /// Everything the node at `index` has logged, across restarts.
    pub fn log(&self, index: usize) -> String {
        std::fs::read(&self.nodes[index].log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn spawn(&mut self, index: usize, bootstrap: Option<&str>) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        let mut log = OpenOptions::new().create(true).append(true).open(&node.log_path)?;
        writeln!(log, "{START_MARK}{} (bootstrap: {}) ---", node.id, bootstrap.is_some())?;
        let mut command = Command::new(&self.options.binary);
        command
            .args(["coordinator", "run", "--node-id", &node.id.to_string(), "--listen", &node.address])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--tls-dir")
            .arg(&self.tls_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(members) = bootstrap {
            command.args(["--bootstrap", members]);
        }
        if let Some(every) = self.options.snapshot_every {
            command.args(["--snapshot-every", &every.to_string()]);
        }
        if self.options.metrics {
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        command.envs(self.options.env.iter().map(|(key, value)| (key, value)));
        if let Some(filter) = &self.options.log_filter {
            command.env("LBFLEET_LOG", filter);
        }
        let child = command.spawn().with_context(|| format!("cannot start {}", self.options.binary.display()))?;
        *self.nodes[index].child.get_mut().expect("child lock") = Some(child);
        Ok(())
    }

    fn running_endpoints(&self) -> Vec<String> {
        self.nodes.iter().filter(|n| n.child.lock().expect("child lock").is_some()).map(|n| n.address.clone()).collect()
    }

    /// Fails, quoting its log, if a node that should be running has exited.
    fn check_alive(&self) -> anyhow::Result<()> {
        for (index, node) in self.nodes.iter().enumerate() {
            let mut slot = node.child.lock().expect("child lock");
            if let Some(child) = slot.as_mut() {
                if let Some(status) = child.try_wait()? {
                    *slot = None;
                    drop(slot);
                    bail!("coordinator {} exited ({status}):\n{}", node.id, tail(&self.log(index), LOG_TAIL_LINES));
                }
            }
        }
        Ok(())
    }

    fn log_tails(&self) -> String {
        (0..self.nodes.len())
            .map(|index| format!("--- node {} ---\n{}", self.nodes[index].id, tail(&self.log(index), LOG_TAIL_LINES)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}

/// Distinct free loopback ports; all are held until every one is chosen so none repeats.
pub fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    Ok(listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<Vec<_>, _>>()?)
}

/// The address of the `metrics listening` line in a daemon's log (plain or coloured).
pub fn logged_metrics_addr(log: &str) -> Option<SocketAddr> {
    let line = log.lines().map(strip_ansi).find(|line| line.contains("metrics listening"))?;
    let value = line.split("local_addr=").nth(1)?;
    value.split_whitespace().next()?.parse().ok()
}

/// `line` without ANSI colour sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_address_is_read_from_plain_and_coloured_logs() {
        let plain = "2026-11-28T00:40:00Z  INFO lbfleet_coordinator::daemon::server: metrics listening local_addr=127.0.0.1:41234\n";
        assert_eq!(logged_metrics_addr(plain), Some("127.0.0.1:41234".parse().unwrap()));
        let coloured = "\u{1b}[32m INFO\u{1b}[0m \u{1b}[2mserver\u{1b}[0m: metrics listening \u{1b}[3mlocal_addr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:5\n";
        assert_eq!(logged_metrics_addr(coloured), Some("127.0.0.1:5".parse().unwrap()));
        assert_eq!(logged_metrics_addr("coordinator listening local_addr=127.0.0.1:7\n"), None);
    }
}
