//! Bind benchmark: a 3-node lbfleet cluster against a 3-node etcd 3.4 cluster, both durable on
//! loopback in the same run, driven by the same load generator (see tests/bench/README.md).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use clap::Parser;
use etcd_client::ConnectOptions;
use etcd_client::KvClient;
use etcd_client::StatusResponse;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_tests::measure::percentile;
use lbfleet_tests::process::free_ports;
use lbfleet_tests::process::tail;
use lbfleet_tests::process::target_dir;
use lbfleet_tests::process::ClusterOptions;
use lbfleet_tests::process::ProcessCluster;
use serde::Serialize;
use tempfile::TempDir;

/// The lbfleet cluster every bind goes to.
const CLUSTER: &str = "bench";
/// Per-request timeout of both clients.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster may take to elect a leader.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);

/// Measures bind commits on lbfleet against puts on etcd 3.4, same machine, same load.
#[derive(Debug, Parser)]
#[command(name = "bind_bench")]
struct Args {
    /// Concurrent clients, one measured run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    concurrency: Vec<usize>,
    /// Operations per run [default: max(2000, 200 x concurrency)].
    #[arg(long)]
    ops: Option<usize>,
    /// A measured run stops after this many seconds even if its operations are not done.
    #[arg(long, default_value_t = 30.0)]
    max_seconds: f64,
    /// Seconds of load before each measured run, not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Network connections per system; clients share them round-robin [default: one per client].
    #[arg(long)]
    connections: Option<usize>,
    /// Nodes in each cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The shard every FQDN is bound to (the etcd value).
    #[arg(long, default_value = "web-1")]
    shard: String,
    /// The lbfleet binary [default: the workspace's target/release/lbfleet].
    #[arg(long, env = "LBFLEET_BIN")]
    lbfleet_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// `LBFLEET_LOG` filter for the coordinators.
    #[arg(long)]
    lbfleet_log: Option<String>,
    /// Also write the figures to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Returning (rather than dying on the signal) drops the clusters, which kills their processes.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency.iter().all(|&c| c > 0), "--concurrency values must be at least 1");
    let binary = args.lbfleet_bin.clone().unwrap_or_else(|| target_dir().join("release/lbfleet"));
    anyhow::ensure!(
        binary.is_file(),
        "no lbfleet binary at {}: run `cargo build --release --bin lbfleet -p lbfleet-coordinator`",
        binary.display()
    );
    let etcd_version = etcd_version(&args.etcd_bin)?;
    println!("lbfleet: {} ({} nodes, mTLS, sled)", binary.display(), args.nodes);
    println!("etcd:    {etcd_version} ({} nodes, plaintext, default durability)", args.nodes);
    println!("data:    {}", std::env::temp_dir().display());

    let options = ClusterOptions {
        binary,
        snapshot_every: None,
        log_filter: args.lbfleet_log.clone(),
        metrics: false,
        env: Vec::new(),
    };
    let lbfleet = ProcessCluster::start_with(args.nodes, options)?;
    let mut etcd = EtcdCluster::start(&args.etcd_bin, args.nodes)?;
    let leader = lbfleet.client().await?;
    leader
        .write(Kind::CreateCluster(pb::CreateCluster { name: CLUSTER.into(), haproxy_container: String::new() }))
        .await?;
    leader.write(Kind::CreateShard(pb::CreateShard { name: args.shard.clone(), cluster: CLUSTER.into() })).await?;
    let lbfleet_leader = leader.endpoint();
    let etcd_leader = etcd.leader().await?;
    println!("leaders: lbfleet {lbfleet_leader}, etcd {etcd_leader}\n");

    let mut report = Report { etcd_version, nodes: args.nodes, runs: Vec::new(), targets: Vec::new() };
    let mut first_task = 0;
    for (round, &concurrency) in args.concurrency.iter().enumerate() {
        let ops = args.ops.unwrap_or((200 * concurrency).max(2_000));
        let connections = args.connections.unwrap_or(concurrency).clamp(1, concurrency);
        let load = Load {
            concurrency,
            first_task,
            ops,
            warmup: Duration::from_secs_f64(args.warmup_seconds),
            cap: Duration::from_secs_f64(args.max_seconds),
            shard: args.shard.clone(),
        };
        first_task += concurrency;
        // Alternate which system goes first so neither always runs on a fresher disk.
        let order = if round % 2 == 0 { [System::Lbfleet, System::Etcd] } else { [System::Etcd, System::Lbfleet] };
        let mut results = [None, None];
        for system in order {
            let conns = match system {
                System::Lbfleet => lbfleet_conns(&lbfleet, &lbfleet_leader, connections).await?,
                System::Etcd => etcd_conns(&etcd_leader, connections).await?,
            };
            let result = load.measure(system, &conns).await?;
            results[system as usize] = Some(result);
        }
        let [Some(lbfleet_result), Some(etcd_result)] = results else { unreachable!("both systems ran") };
        let run = RunReport::new(concurrency, connections, lbfleet_result, etcd_result);
        print!("{}", run.table());
        report.runs.push(run);
    }
    report.targets = targets(&report.runs);
    println!("targets (docs/architecture.md, \"Performance targets\"):");
    for target in &report.targets {
        println!("  {:<4} {}: {}", if target.pass { "PASS" } else { "MISS" }, target.name, target.detail);
    }
    if let Some(path) = &args.json {
        serde_json::to_writer_pretty(File::create(path)?, &report)?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

/// Which system a run measured; the index into a run's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Lbfleet = 0,
    Etcd = 1,
}

/// One client connection to either system.
#[derive(Clone)]
enum Conn {
    Lbfleet(Arc<Client>),
    // Boxed: etcd-client's KvClient holds its whole gRPC client inline, hundreds of bytes.
    Etcd(Box<KvClient>),
}

impl Conn {
    /// Binds `fqdn` to `shard` (lbfleet) or puts key `fqdn` = `shard` (etcd); returns once committed.
    async fn put(&mut self, fqdn: String, shard: &str) -> anyhow::Result<()> {
        match self {
            Conn::Lbfleet(client) => {
                client.write(Kind::Bind(pb::Bind { fqdn, shard: shard.to_string(), cluster: String::new() })).await?;
            }
            Conn::Etcd(kv) => {
                kv.put(fqdn, shard, None).await?;
            }
        }
        Ok(())
    }
}

async fn lbfleet_conns(cluster: &ProcessCluster, leader: &str, count: usize) -> anyhow::Result<Vec<Conn>> {
    let tls = cluster.tls();
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let client = Client::connect(&[leader.to_string()], &tls, None, REQUEST_TIMEOUT).await?;
        conns.push(Conn::Lbfleet(Arc::new(client)));
    }
    Ok(conns)
}

async fn etcd_conns(leader: &str, count: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let options = ConnectOptions::new().with_timeout(REQUEST_TIMEOUT).with_connect_timeout(REQUEST_TIMEOUT);
        let client = etcd_client::Client::connect([leader], Some(options)).await?;
        conns.push(Conn::Etcd(Box::new(client.kv_client())));
    }
    Ok(conns)
}

/// The shape of one measured run.
struct Load {
    concurrency: usize,
    /// Task numbers start here, so FQDNs never repeat across runs.
    first_task: usize,
    ops: usize,
    warmup: Duration,
    cap: Duration,
    shard: String,
}

/// What one system did in one measured run.
#[derive(Debug)]
struct Outcome {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Load {
    /// Warms up, then runs the measured operations.
    async fn measure(&self, system: System, conns: &[Conn]) -> anyhow::Result<Outcome> {
        let warmup = self.drive(conns, "w", usize::MAX, self.warmup).await;
        if warmup.latencies.is_empty() && warmup.errors > 0 {
            bail!("{system:?}: every warm-up operation failed: {}", warmup.first_error.unwrap_or_default());
        }
        let outcome = self.drive(conns, "b", self.ops, self.cap).await;
        if outcome.latencies.is_empty() {
            bail!("{system:?}: no operation succeeded: {}", outcome.first_error.unwrap_or_default());
        }
        Ok(outcome)
    }

    /// `concurrency` tasks each writing sequentially until `ops` are claimed or `cap` has passed.
    async fn drive(&self, conns: &[Conn], prefix: &'static str, ops: usize, cap: Duration) -> Outcome {
        let started = Instant::now();
        let deadline = started + cap;
        let claimed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(self.concurrency);
        for index in 0..self.concurrency {
            let mut conn = conns[index % conns.len()].clone();
            let claimed = claimed.clone();
            let shard = self.shard.clone();
            let task = self.first_task + index;
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut first_error = None;
                for i in 0.. {
                    if Instant::now() >= deadline || claimed.fetch_add(1, Ordering::Relaxed) >= ops {
                        break;
                    }
                    let fqdn = format!("{prefix}{task}-{i}.bench.example");
                    let sent = Instant::now();
                    match conn.put(fqdn, &shard).await {
                        Ok(()) => latencies.push(sent.elapsed()),
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| error.to_string());
                        }
                    }
                }
                (latencies, errors, first_error)
            }));
        }
        let mut outcome = Outcome { latencies: Vec::new(), errors: 0, first_error: None, elapsed: Duration::ZERO };
        for task in futures::future::join_all(tasks).await {
            match task {
                Ok((latencies, errors, first_error)) => {
                    outcome.latencies.extend(latencies);
                    outcome.errors += errors;
                    outcome.first_error = outcome.first_error.or(first_error);
                }
                Err(error) => {
                    outcome.errors += 1;
                    outcome.first_error.get_or_insert_with(|| format!("load task failed: {error}"));
                }
            }
        }
        outcome.elapsed = started.elapsed();
        outcome
    }
}

/// Figures of one system in one run.
#[derive(Debug, Serialize)]
struct Figures {
    ops: usize,
    errors: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
    seconds: f64,
    ops_per_sec: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Figures {
    fn new(mut outcome: Outcome) -> Figures {
        outcome.latencies.sort_unstable();
        let seconds = outcome.elapsed.as_secs_f64();
        let ms = |p: f64| percentile(&outcome.latencies, p).as_secs_f64() * 1_000.0;
        Figures {
            ops: outcome.latencies.len(),
            errors: outcome.errors,
            first_error: outcome.first_error,
            seconds,
            ops_per_sec: outcome.latencies.len() as f64 / seconds,
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            max_ms: ms(1.0),
        }
    }
}

/// Both systems at one concurrency.
#[derive(Debug, Serialize)]
struct RunReport {
    concurrency: usize,
    connections: usize,
    lbfleet: Figures,
    etcd: Figures,
    /// lbfleet ops/s over etcd's.
    throughput_ratio: f64,
    /// lbfleet p50 over etcd's (below 1 is better).
    p50_ratio: f64,
}

impl RunReport {
    fn new(concurrency: usize, connections: usize, lbfleet: Outcome, etcd: Outcome) -> RunReport {
        let (lbfleet, etcd) = (Figures::new(lbfleet), Figures::new(etcd));
        RunReport {
            concurrency,
            connections,
            throughput_ratio: lbfleet.ops_per_sec / etcd.ops_per_sec,
            p50_ratio: lbfleet.p50_ms / etcd.p50_ms,
            lbfleet,
            etcd,
        }
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "concurrency {} ({} connections per system)", self.concurrency, self.connections);
        let _ = writeln!(
            out,
            "  {:<8} {:>7} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "system", "ops", "errors", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for (name, f) in [("lbfleet", &self.lbfleet), ("etcd", &self.etcd)] {
            let _ = writeln!(
                out,
                "  {:<8} {:>7} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                name, f.ops, f.errors, f.ops_per_sec, f.p50_ms, f.p90_ms, f.p99_ms, f.max_ms
            );
            if let Some(error) = &f.first_error {
                let _ = writeln!(out, "           first error: {error}");
            }
        }
        let _ = writeln!(out, "  lbfleet/etcd: throughput {:.2}x, p50 {:.2}x\n", self.throughput_ratio, self.p50_ratio);
        out
    }
}

/// One target of docs/architecture.md ("Performance targets") checked against a run.
#[derive(Debug, Serialize)]
struct Target {
    name: String,
    pass: bool,
    detail: String,
}

/// The whole benchmark, as written by `--json`.
#[derive(Debug, Serialize)]
struct Report {
    etcd_version: String,
    nodes: usize,
    runs: Vec<RunReport>,
    targets: Vec<Target>,
}

/// The throughput lbfleet must reach at 64 and more clients, as a multiple of etcd's.
const THROUGHPUT_TARGET: f64 = 2.0;

fn targets(runs: &[RunReport]) -> Vec<Target> {
    let mut targets = Vec::new();
    for run in runs {
        if run.concurrency == 1 {
            targets.push(Target {
                name: "1-client bind p50 below etcd's".into(),
                pass: run.lbfleet.p50_ms < run.etcd.p50_ms,
                detail: format!("lbfleet {:.2} ms, etcd {:.2} ms", run.lbfleet.p50_ms, run.etcd.p50_ms),
            });
        }
        if run.concurrency >= 64 {
            targets.push(Target {
                name: format!("{}-client bind throughput >= {THROUGHPUT_TARGET}x etcd's", run.concurrency),
                pass: run.throughput_ratio >= THROUGHPUT_TARGET,
                detail: format!(
                    "{:.2}x (lbfleet {:.0} ops/s, etcd {:.0} ops/s)",
                    run.throughput_ratio, run.lbfleet.ops_per_sec, run.etcd.ops_per_sec
                ),
            });
        }
    }
    targets
}

fn etcd_version(binary: &Path) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {} (tests/bench/setup-etcd.sh installs it)", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().next().unwrap_or_default().trim_start_matches("etcd Version: ").to_string())
}

/// One etcd member process.
struct EtcdMember {
    name: String,
    client_url: String,
    log_path: PathBuf,
    child: Child,
}

/// An etcd cluster of child processes on loopback, statically bootstrapped; dropping it kills them.
struct EtcdCluster {
    members: Vec<EtcdMember>,
    dir: TempDir,
}

impl EtcdCluster {
    fn start(binary: &Path, size: usize) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::Builder::new().prefix("etcd-cluster-").tempdir()?;
        let ports = free_ports(2 * size)?;
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial_cluster = (0..size).map(|i| format!("e{}={}", i + 1, peer_url(i))).collect::<Vec<_>>().join(",");
        let mut cluster = EtcdCluster { members: Vec::with_capacity(size), dir };
        for i in 0..size {
            let name = format!("e{}", i + 1);
            let client_url = format!("http://127.0.0.1:{}", ports[2 * i]);
            let log_path = cluster.dir.path().join(format!("{name}.log"));
            let log = File::create(&log_path)?;
            let child = Command::new(binary)
                .arg(format!("--name={name}"))
                .arg(format!("--data-dir={}", cluster.dir.path().join(&name).display()))
                .arg(format!("--listen-client-urls={client_url}"))
                .arg(format!("--advertise-client-urls={client_url}"))
                .arg(format!("--listen-peer-urls={}", peer_url(i)))
                .arg(format!("--initial-advertise-peer-urls={}", peer_url(i)))
                .arg(format!("--initial-cluster={initial_cluster}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=lbfleet-bench")
                .arg("--logger=zap")
                .arg("--log-outputs=stderr")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {}", binary.display()))?;
            cluster.members.push(EtcdMember { name, client_url, log_path, child });
        }
        Ok(cluster)
    }

    /// The client URL of the leader, once one is elected.
    async fn leader(&mut self) -> anyhow::Result<String> {
        let deadline = Instant::now() + LEADER_DEADLINE;
        let mut last = String::from("no attempt made");
        loop {
            for member in &mut self.members {
                if let Some(status) = member.child.try_wait()? {
                    let log = std::fs::read_to_string(&member.log_path).unwrap_or_default();
                    bail!("etcd {} exited ({status}):\n{}", member.name, tail(&log, 30));
                }
            }
            for member in &self.members {
                let options = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(1))
                    .with_timeout(Duration::from_secs(2));
                let status = match etcd_client::Client::connect([&member.client_url], Some(options)).await {
                    Ok(mut client) => client.status().await,
                    Err(error) => Err(error),
                };
                match status {
                    Ok(status) if is_leader(&status) => {
                        return Ok(member.client_url.clone());
                    }
                    Ok(status) => last = format!("{} reports leader {:x}", member.name, status.leader()),
                    Err(error) => last = format!("{}: {error}", member.name),
                }
            }
            if Instant::now() >= deadline {
                bail!("etcd elected no leader within {LEADER_DEADLINE:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether the member that answered names itself as the leader.
fn is_leader(status: &StatusResponse) -> bool {
    status.leader() != 0 && status.header().is_some_and(|h| h.member_id() == status.leader())
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.child.kill();
            let _ = member.child.wait();
        }
    }
}
