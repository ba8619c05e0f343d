//! Agent benchmark: bind -> live on two LB hosts, bulk import -> live, runtime apply rate and a
//! one-million-entry full resync, each next to the seed's `docker exec ... socat` path measured
//! in the same run (see tests/bench/README.md).
#![forbid(unsafe_code)]

use std::io::Read;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use clap::Parser;
use lbfleet_agent::desired::MapEntries;
use lbfleet_agent::haproxy::Haproxy;
use lbfleet_agent::haproxy::ReloadMode;
use lbfleet_agent::haproxy::RuntimeChange;
use lbfleet_agent::haproxy::RuntimeMode;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_coordinator::ctl::import;
use lbfleet_proto::names::lb_backend;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_tests::bench::release_binaries;
use lbfleet_tests::bench::until_interrupted;
use lbfleet_tests::bench::write_json;
use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::AgentOptions;
use lbfleet_tests::docker_lab::Fleet;
use lbfleet_tests::docker_lab::HaproxyBox;
use lbfleet_tests::docker_lab::Lab;
use lbfleet_tests::docker_lab::Mounts;
use lbfleet_tests::docker_lab::MAP_PATH;
use lbfleet_tests::measure::ms;
use lbfleet_tests::measure::per_second;
use lbfleet_tests::measure::percentiles;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::ClusterOptions;
use serde::Serialize;

/// The shard every benchmark FQDN is bound to.
const SHARD: &str = "web-1";
/// The two LB hosts.
const HOSTS: [&str; 2] = ["lb-a", "lb-b"];
/// A bind not live on both hosts after this long counts as failed.
const LIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Binds before the measured ones, not counted.
const WARMUP_BINDS: usize = 20;
/// Bindings per Raft log entry in the import (the CLI's default).
const IMPORT_BATCH: usize = 10_000;

/// Measures how fast bindings go live in HAProxy through lbfleet, against the seed's path.
#[derive(Debug, Parser)]
#[command(name = "agent_bench")]
struct Args {
    /// Binds measured from acknowledgement to live on both hosts.
    #[arg(long, default_value_t = 1000)]
    binds: usize,
    /// Binds measured the same way after the import, with the import's entries in the map.
    #[arg(long, default_value_t = 200)]
    binds_after_import: usize,
    /// Changes measured through the seed's path (`docker exec ... socat`, one per change).
    #[arg(long, default_value_t = 100)]
    seed_changes: usize,
    /// FQDNs in the bulk import.
    #[arg(long, default_value_t = 100_000)]
    import: usize,
    /// Changes sent pipelined through the shared admin socket for the apply rate.
    #[arg(long, default_value_t = 50_000)]
    pipelined: usize,
    /// Entries of the full resync.
    #[arg(long, default_value_t = 1_000_000)]
    resync: usize,
    /// Each phase stops after this many seconds, counting what it measured so far.
    #[arg(long, default_value_t = 120.0)]
    max_seconds: f64,
    /// The lbfleet binary [default: the workspace's target/release/lbfleet].
    #[arg(long, env = "LBFLEET_BIN")]
    lbfleet_bin: Option<PathBuf>,
    /// The lbfleet-agent binary [default: the workspace's target/release/lbfleet-agent].
    #[arg(long, env = "LBFLEET_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// `LBFLEET_LOG` filter for the agents (`debug` logs every map file write with its duration).
    #[arg(long, default_value = "info")]
    agent_log: String,
    /// Copy the agents' logs into this directory at the end.
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Also write the figures to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Latency figures in milliseconds.
#[derive(Debug, Default, Clone, Serialize)]
struct Latency {
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(samples: &mut [Duration]) -> Latency {
        let (p50, p99) = percentiles(samples);
        let total: Duration = samples.iter().sum();
        Latency {
            samples: samples.len(),
            p50_ms: ms(p50),
            p99_ms: ms(p99),
            mean_ms: if samples.is_empty() { 0.0 } else { ms(total) / samples.len() as f64 },
            max_ms: samples.iter().max().map(|d| ms(*d)).unwrap_or(0.0),
        }
    }
}

/// The seed's path: one `docker exec ... socat` per change, on one HAProxy.
#[derive(Debug, Serialize)]
struct SeedPath {
    latency: Latency,
    ops_per_second: f64,
}

/// (a) bind acknowledged -> live in both HAProxies.
#[derive(Debug, Serialize)]
struct BindToLive {
    /// Entries in each HAProxy's map before the first measured bind.
    map_entries: usize,
    /// `client.write(Bind)` sent -> acknowledged.
    commit: Latency,
    /// Acknowledged -> the key answered by `get map` on both hosts.
    ack_to_live: Latency,
    /// Sent -> live on both hosts.
    send_to_live: Latency,
    failures: usize,
}

/// (b) bulk import -> live on both hosts.
#[derive(Debug, Serialize)]
struct ImportToLive {
    fqdns: usize,
    batches: u64,
    committed_seconds: f64,
    acked_seconds: f64,
    live_seconds: f64,
    seed_extrapolated_seconds: f64,
    seed_measured_changes: usize,
}

/// (c) runtime API changes per second.
#[derive(Debug, Serialize)]
struct ApplyRate {
    changes: usize,
    socket_pipelined_ops_per_second: f64,
    exec_pipelined_ops_per_second: f64,
    socket_one_per_session: Latency,
    seed_ops_per_second: f64,
}

/// (d) full resync by the agent's driver.
#[derive(Debug, Serialize)]
struct FullResync {
    entries: usize,
    map_file_seconds: f64,
    replace_runtime_map_seconds: f64,
    total_seconds: f64,
    show_map_seconds: f64,
}

/// One target of docs/architecture.md ("Performance targets") and whether this run met it.
#[derive(Debug, Serialize)]
struct Target {
    what: String,
    target: String,
    measured: String,
    met: bool,
}

/// Everything `--json` writes.
#[derive(Debug, Serialize)]
struct Report {
    seed_path: SeedPath,
    bind_to_live: BindToLive,
    import_to_live: ImportToLive,
    bind_to_live_after_import: BindToLive,
    apply_rate: ApplyRate,
    full_resync: FullResync,
    targets: Vec<Target>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !docker_available() {
        bail!("the agent benchmark needs Docker and the lbfleet images (docker/build-images.sh)");
    }
    let (lbfleet, agent) = release_binaries(args.lbfleet_bin.clone(), args.agent_bin.clone())?;
    let report = until_interrupted(run(&args, &lbfleet, &agent)).await?;
    print_report(&args, &report);
    write_json(args.json.as_deref(), &report)
}

async fn run(args: &Args, lbfleet: &Path, agent: &Path) -> anyhow::Result<Report> {
    let cap = Duration::from_secs_f64(args.max_seconds);
    // The driver figures and the seed baseline first, on a container of their own, with nothing else running.
    let (seed_path, apply_rate, full_resync) = {
        let mut lab = Lab::new("agent-bench")?;
        let lb = lab.start_haproxy("driver", Mounts::ALL)?;
        let exec_lb = lab.start_haproxy("exec", Mounts::NONE)?;
        let socket = lb.driver(RuntimeMode::Socket, ReloadMode::Hitless).await?;
        let exec = exec_lb.driver(RuntimeMode::Exec, ReloadMode::Hitless).await?;

        eprintln!("seed path: {} changes, one docker exec each", args.seed_changes);
        let seed_path = seed_path(&lb, args.seed_changes, cap).await?;
        eprintln!("runtime apply rate: {} changes pipelined", args.pipelined);
        let apply_rate = apply_rate(&socket, &exec, args.pipelined, &seed_path).await?;
        eprintln!("full resync: {} entries", args.resync);
        let full_resync = full_resync(&socket, args.resync).await?;
        (seed_path, apply_rate, full_resync)
    };

    eprintln!("fleet: one coordinator, two LB hosts with agents");
    let options =
        ClusterOptions { binary: lbfleet.to_path_buf(), log_filter: Some("warn".into()), ..ClusterOptions::default() };
    // The agent's own defaults: reconcile every 10 s, report every 5 s.
    let agent_options = AgentOptions {
        reconcile_interval: 10.0,
        report_interval: 5.0,
        log_filter: args.agent_log.clone(),
        reload_min_interval: None,
        ..AgentOptions::default()
    };
    let hosts: Vec<(&str, AgentOptions)> = HOSTS.iter().map(|h| (*h, agent_options.clone())).collect();
    let fleet = Fleet::start("agent-bench", options, agent, SHARD, &hosts).await?;
    let client = fleet.client().await?;
    eprintln!("bind -> live: {} binds", args.binds);
    let binds = bind_to_live(&fleet, &client, "bind", args.binds, cap).await?;
    eprintln!("import -> live: {} FQDNs", args.import);
    let import_to_live = import_to_live(&fleet, &client, args.import, &seed_path, cap).await?;
    eprintln!("bind -> live after the import: {} binds", args.binds_after_import);
    let binds_after_import = bind_to_live(&fleet, &client, "late", args.binds_after_import, cap).await?;
    if let Some(dir) = &args.logs {
        std::fs::create_dir_all(dir)?;
        for host in &fleet.hosts {
            std::fs::write(dir.join(format!("agent-{}.log", host.id)), host.agent.log())?;
        }
    }
    drop(fleet);

    let targets = vec![
        target(
            "bind acked -> live on 2 hosts, p50",
            "<= 10 ms",
            binds.ack_to_live.p50_ms <= 10.0,
            format!("{:.2} ms", binds.ack_to_live.p50_ms),
        ),
        target(
            "bind acked -> live on 2 hosts, p99",
            "<= 50 ms",
            binds.ack_to_live.p99_ms <= 50.0 && binds.failures == 0,
            format!("{:.2} ms ({} failed)", binds.ack_to_live.p99_ms, binds.failures),
        ),
        target(
            &format!("the same with {} entries, p50 / p99", binds_after_import.map_entries),
            "<= 10 / 50 ms",
            binds_after_import.ack_to_live.p50_ms <= 10.0
                && binds_after_import.ack_to_live.p99_ms <= 50.0
                && binds_after_import.failures == 0,
            format!(
                "{:.2} / {:.2} ms ({} failed)",
                binds_after_import.ack_to_live.p50_ms,
                binds_after_import.ack_to_live.p99_ms,
                binds_after_import.failures
            ),
        ),
        target(
            &format!("{} FQDNs imported -> live on 2 hosts", import_to_live.fqdns),
            "<= 10 s",
            import_to_live.live_seconds <= 10.0,
            format!("{:.2} s", import_to_live.live_seconds),
        ),
        target(
            &format!("{} entries full resync", full_resync.entries),
            "<= 10 s",
            full_resync.total_seconds <= 10.0,
            format!("{:.2} s", full_resync.total_seconds),
        ),
    ];
    Ok(Report {
        seed_path,
        bind_to_live: binds,
        import_to_live,
        bind_to_live_after_import: binds_after_import,
        apply_rate,
        full_resync,
        targets,
    })
}

fn target(what: &str, target: &str, met: bool, measured: String) -> Target {
    Target { what: what.into(), target: target.into(), measured, met }
}

/// The seed's path, as it ran in production: `docker exec <haproxy> sh -c 'echo "..." | socat ...'` per change.
async fn seed_path(lb: &HaproxyBox, changes: usize, cap: Duration) -> anyhow::Result<SeedPath> {
    let before = lb.map_len().await?;
    let backend = lb_backend(SHARD);
    let mut samples = Vec::with_capacity(changes);
    let started = Instant::now();
    for i in 0..changes {
        if started.elapsed() > cap {
            break;
        }
        // `add map`, not the seed's `set map`, which answers "entry not found." for every new key.
        let script = format!(
            "echo \"add map {MAP_PATH} seed-{i}.bench.example {backend}\" | socat stdio /var/run/haproxy/admin.sock"
        );
        let sent = Instant::now();
        let out = tokio::process::Command::new("docker")
            .args(["exec", &lb.container, "sh", "-c", &script])
            .output()
            .await
            .context("running docker exec")?;
        samples.push(sent.elapsed());
        let answer = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !answer.trim().is_empty() {
            bail!("seed path: docker exec failed ({}): {answer} {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
    }
    let elapsed = started.elapsed();
    let after = lb.map_len().await?;
    anyhow::ensure!(
        after == before + samples.len(),
        "seed path: {} entries, expected {}",
        after,
        before + samples.len()
    );
    Ok(SeedPath { ops_per_second: per_second(samples.len(), elapsed), latency: Latency::of(&mut samples) })
}

/// (c) Many changes pipelined in one session, through the shared socket and through the exec fallback.
async fn apply_rate(socket: &Haproxy, exec: &Haproxy, changes: usize, seed: &SeedPath) -> anyhow::Result<ApplyRate> {
    let backend = lb_backend(SHARD);
    let adds = |prefix: &str| -> Vec<RuntimeChange> {
        (0..changes)
            .map(|i| RuntimeChange::Add { fqdn: format!("{prefix}-{i}.bench.example"), backend: backend.clone() })
            .collect()
    };
    let batch = adds("pipe");
    let started = Instant::now();
    let report = socket.apply_runtime(&batch).await?;
    let socket_rate = per_second(changes, started.elapsed());
    anyhow::ensure!(report.added == changes && report.errors.is_empty(), "socket: {report:?}");

    let batch = adds("exec");
    let started = Instant::now();
    let report = exec.apply_runtime(&batch).await?;
    let exec_rate = per_second(changes, started.elapsed());
    anyhow::ensure!(report.added == changes && report.errors.is_empty(), "exec: {report:?}");

    // One change per session, as a single bind reaches HAProxy.
    let mut samples = Vec::new();
    for i in 0..1000 {
        let change = [RuntimeChange::Add { fqdn: format!("one-{i}.bench.example"), backend: backend.clone() }];
        let sent = Instant::now();
        socket.apply_runtime(&change).await?;
        samples.push(sent.elapsed());
    }
    Ok(ApplyRate {
        changes,
        socket_pipelined_ops_per_second: socket_rate,
        exec_pipelined_ops_per_second: exec_rate,
        socket_one_per_session: Latency::of(&mut samples),
        seed_ops_per_second: seed.ops_per_second,
    })
}

/// (d) What the agent does on a first connect or a large drift: map file, then prepare/add/commit.
async fn full_resync(socket: &Haproxy, entries: usize) -> anyhow::Result<FullResync> {
    let map: MapEntries =
        (0..entries).map(|i| (format!("site-{i:07}.example.com"), lb_backend(&format!("web-{}", i % 7)))).collect();
    let started = Instant::now();
    socket.write_map_file(&map).await?;
    let map_file = started.elapsed();
    let started = Instant::now();
    socket.replace_runtime_map(&map).await?;
    let replace = started.elapsed();
    let started = Instant::now();
    let shown = socket.show_map().await?;
    let show = started.elapsed();
    anyhow::ensure!(
        shown.len() == entries,
        "HAProxy holds {} entries after the resync, expected {entries}",
        shown.len()
    );
    Ok(FullResync {
        entries,
        map_file_seconds: map_file.as_secs_f64(),
        replace_runtime_map_seconds: replace.as_secs_f64(),
        total_seconds: (map_file + replace).as_secs_f64(),
        show_map_seconds: show.as_secs_f64(),
    })
}

/// Polls both hosts' admin sockets (blocking, on a thread of its own) until each answers `fqdn`;
/// returns when each host first did.
fn poll_live(sockets: Vec<PathBuf>, fqdn: String, timeout: Duration) -> anyhow::Result<Vec<Instant>> {
    let deadline = Instant::now() + timeout;
    let command = format!("get map {MAP_PATH} {fqdn}\n");
    let mut seen: Vec<Option<Instant>> = vec![None; sockets.len()];
    loop {
        for (socket, seen) in sockets.iter().zip(seen.iter_mut()) {
            if seen.is_none() && holds(socket, &command)? {
                *seen = Some(Instant::now());
            }
        }
        if seen.iter().all(Option::is_some) {
            return Ok(seen.into_iter().flatten().collect());
        }
        if Instant::now() > deadline {
            bail!("{fqdn} not live on every host after {timeout:?}");
        }
        // Leaves the CPU to the agents and HAProxy between rounds.
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// One `get map` over a fresh connection to an admin socket.
fn holds(socket: &Path, command: &str) -> anyhow::Result<bool> {
    let mut stream = UnixStream::connect(socket).with_context(|| format!("admin socket {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(command.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.contains("found=yes"))
}

/// (a) One bind at a time: commit, then poll both HAProxies until the key is there.
async fn bind_to_live(
    fleet: &Fleet,
    client: &Client,
    prefix: &str,
    binds: usize,
    cap: Duration,
) -> anyhow::Result<BindToLive> {
    let sockets: Vec<PathBuf> = fleet.hosts.iter().map(|h| h.lb.admin_socket()).collect();
    let map_entries = fleet.hosts[0].lb.map_len().await? + WARMUP_BINDS;
    let (mut commit, mut ack_to_live, mut send_to_live) = (Vec::new(), Vec::new(), Vec::new());
    let mut failures = 0;
    let started = Instant::now();
    let mut last_version = 0;
    for i in 0..WARMUP_BINDS + binds {
        if started.elapsed() > cap {
            break;
        }
        let fqdn = format!("{prefix}-{i}.bench.example");
        let bind = pb::Bind { fqdn: fqdn.clone(), shard: SHARD.into(), cluster: String::new() };
        let sent = Instant::now();
        last_version = client.write(Kind::Bind(bind)).await?.version;
        let acked = Instant::now();
        let (sockets, probe) = (sockets.clone(), fqdn.clone());
        let live = tokio::task::spawn_blocking(move || poll_live(sockets, probe, LIVE_TIMEOUT)).await?;
        if i < WARMUP_BINDS {
            live?;
            continue;
        }
        match live {
            Ok(seen) => {
                let live = seen.into_iter().max().expect("two hosts");
                commit.push(acked - sent);
                ack_to_live.push(live.saturating_duration_since(acked));
                send_to_live.push(live - sent);
            }
            Err(error) => {
                failures += 1;
                eprintln!("bind {fqdn}: {error}");
            }
        }
    }
    fleet.wait_applied(client, last_version).await?;
    Ok(BindToLive {
        map_entries,
        commit: Latency::of(&mut commit),
        ack_to_live: Latency::of(&mut ack_to_live),
        send_to_live: Latency::of(&mut send_to_live),
        failures,
    })
}

/// (b) `lbfleet import` of a generated map file, until both HAProxies hold every entry.
async fn import_to_live(
    fleet: &Fleet,
    client: &Client,
    fqdns: usize,
    seed: &SeedPath,
    cap: Duration,
) -> anyhow::Result<ImportToLive> {
    let file = fleet.lab.dir().join("import.map");
    let backend = lb_backend(SHARD);
    let mut text = String::with_capacity(fqdns * 40);
    for i in 0..fqdns {
        text.push_str(&format!("import-{i:07}.bench.example {backend}\n"));
    }
    std::fs::write(&file, text)?;
    let mut expected = Vec::new();
    for host in &fleet.hosts {
        expected.push(host.lb.map_len().await? + fqdns);
    }

    let started = Instant::now();
    let report = import::run(client, &file, &fleet.cluster, IMPORT_BATCH, false).await?;
    let committed = started.elapsed();
    anyhow::ensure!(report.added == fqdns as u64, "import added {} of {fqdns}: {:?}", report.added, report.skipped);
    let progress = client.wait_applied(&fleet.cluster, report.version, cap).await?;
    let acked = started.elapsed();
    anyhow::ensure!(progress.done, "import not applied on every host within {cap:?}: {:?}", progress.hosts);
    for (host, expected) in fleet.hosts.iter().zip(&expected) {
        let held = wait_for(&format!("{} to hold {expected} entries", host.id), cap, || async {
            host.lb.map_len().await.ok().filter(|n| n == expected)
        })
        .await;
        held.with_context(|| fleet.agent_logs())?;
    }
    let live = started.elapsed();
    Ok(ImportToLive {
        fqdns,
        batches: report.batches,
        committed_seconds: committed.as_secs_f64(),
        acked_seconds: acked.as_secs_f64(),
        live_seconds: live.as_secs_f64(),
        seed_extrapolated_seconds: seed.latency.mean_ms / 1000.0 * fqdns as f64,
        seed_measured_changes: seed.latency.samples,
    })
}

fn ratio(slow: f64, fast: f64) -> String {
    if fast <= 0.0 {
        return "-".into();
    }
    format!("{:.0}x", slow / fast)
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_report(args: &Args, r: &Report) {
    let seed = &r.seed_path.latency;
    let b = &r.bind_to_live;
    let i = &r.import_to_live;
    let a = &r.apply_rate;
    let f = &r.full_resync;
    println!("\nagent benchmark: 1 coordinator, 2 LB hosts (HAProxy container + lbfleet-agent each), release build");
    println!("seed path = one `docker exec <haproxy> sh -c 'echo \"add map ...\" | socat ...'` per change, one host\n");
    println!("{:<50} {:>24} {:>24} {:>8}", "figure", "lbfleet", "seed path", "ratio");
    let row = |what: &str, ours: String, seed: String, ratio: String| {
        println!("{what:<50} {ours:>24} {seed:>24} {ratio:>8}");
    };
    row(
        &format!("a. bind acked -> live, p50 ({} binds)", b.ack_to_live.samples),
        format!("{:.2} ms (2 hosts)", b.ack_to_live.p50_ms),
        format!("{:.1} ms (1 host)", seed.p50_ms),
        ratio(seed.p50_ms, b.ack_to_live.p50_ms),
    );
    row(
        "   bind acked -> live, p99",
        format!("{:.2} ms (2 hosts)", b.ack_to_live.p99_ms),
        format!("{:.1} ms (1 host)", seed.p99_ms),
        ratio(seed.p99_ms, b.ack_to_live.p99_ms),
    );
    row(
        "   bind sent -> acked (Raft commit), p50 / p99",
        format!("{:.2} / {:.2} ms", b.commit.p50_ms, b.commit.p99_ms),
        "-".into(),
        "".into(),
    );
    row(
        "   bind sent -> live, p50 / p99",
        format!("{:.2} / {:.2} ms", b.send_to_live.p50_ms, b.send_to_live.p99_ms),
        format!("{:.1} / {:.1} ms", seed.p50_ms, seed.p99_ms),
        ratio(seed.p50_ms, b.send_to_live.p50_ms),
    );
    let late = &r.bind_to_live_after_import;
    row(
        &format!("   acked -> live, {}-entry map, p50 / p99", thousands(late.map_entries as f64)),
        format!("{:.2} / {:.2} ms", late.ack_to_live.p50_ms, late.ack_to_live.p99_ms),
        format!("{:.1} / {:.1} ms", seed.p50_ms, seed.p99_ms),
        ratio(seed.p50_ms, late.ack_to_live.p50_ms),
    );
    row(
        &format!("b. import {} FQDNs -> live on 2 hosts", thousands(i.fqdns as f64)),
        format!("{:.2} s", i.live_seconds),
        format!("{} s (extrapolated)", thousands(i.seed_extrapolated_seconds)),
        ratio(i.seed_extrapolated_seconds, i.live_seconds),
    );
    row(
        "   committed / acked by both agents",
        format!("{:.2} s / {:.2} s", i.committed_seconds, i.acked_seconds),
        "-".into(),
        "".into(),
    );
    row(
        &format!("c. runtime apply rate, {} changes pipelined", thousands(a.changes as f64)),
        format!("{} ops/s", thousands(a.socket_pipelined_ops_per_second)),
        format!("{:.1} ops/s", a.seed_ops_per_second),
        ratio(a.socket_pipelined_ops_per_second, a.seed_ops_per_second),
    );
    row(
        "   exec fallback, pipelined in one exec",
        format!("{} ops/s", thousands(a.exec_pipelined_ops_per_second)),
        format!("{:.1} ops/s", a.seed_ops_per_second),
        ratio(a.exec_pipelined_ops_per_second, a.seed_ops_per_second),
    );
    row(
        "   one change per socket session, p50 / p99",
        format!("{:.3} / {:.3} ms", a.socket_one_per_session.p50_ms, a.socket_one_per_session.p99_ms),
        format!("{:.1} / {:.1} ms", seed.p50_ms, seed.p99_ms),
        ratio(seed.p50_ms, a.socket_one_per_session.p50_ms),
    );
    row(
        &format!("d. full resync, {} entries", thousands(f.entries as f64)),
        format!("{:.2} s", f.total_seconds),
        "-".into(),
        "".into(),
    );
    row(
        "   map file / prepare+add+commit / show map",
        format!("{:.2} / {:.2} / {:.2} s", f.map_file_seconds, f.replace_runtime_map_seconds, f.show_map_seconds),
        "-".into(),
        "".into(),
    );
    println!(
        "\nseed path measured over {} changes: mean {:.1} ms, max {:.1} ms; (b) extrapolates its mean x {} FQDNs.",
        seed.samples,
        seed.mean_ms,
        seed.max_ms,
        thousands(i.fqdns as f64)
    );
    for (binds, asked) in [(b, args.binds), (late, args.binds_after_import)] {
        if binds.failures > 0 {
            println!("{} of {asked} binds were not live on both hosts within {LIVE_TIMEOUT:?}", binds.failures);
        }
    }
    println!("\ntargets (docs/architecture.md, \"Performance targets\"):");
    for t in &r.targets {
        println!(
            "  {:<4} {:<44} {:>14}  measured {}",
            if t.met { "PASS" } else { "MISS" },
            t.what,
            t.target,
            t.measured
        );
    }
}
