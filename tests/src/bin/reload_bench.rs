//! Reload benchmark: render + validate + reload of a big `haproxy.cfg` (1,000 shards x 4 nodes by
//! default) by the agent's driver, next to the seed's stop + start measured in the same run; and
//! how many reloads a burst of node changes costs through a real coordinator and agent, with the
//! agent's default reload interval next to no interval (see tests/bench/README.md).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use clap::Parser;
use lbfleet_agent::desired::AdminState;
use lbfleet_agent::desired::Backend;
use lbfleet_agent::desired::Server;
use lbfleet_agent::desired::Topology;
use lbfleet_agent::haproxy::Haproxy;
use lbfleet_agent::haproxy::ReloadMode;
use lbfleet_agent::haproxy::RuntimeMode;
use lbfleet_agent::haproxy::CONFIG_PATH_IN_CONTAINER;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_tests::bench::release_binaries;
use lbfleet_tests::bench::until_interrupted;
use lbfleet_tests::bench::write_json;
use lbfleet_tests::docker_lab::docker;
use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::AgentOptions;
use lbfleet_tests::docker_lab::Fleet;
use lbfleet_tests::docker_lab::HaproxyBox;
use lbfleet_tests::docker_lab::Lab;
use lbfleet_tests::docker_lab::Mounts;
use lbfleet_tests::docker_lab::MAP_PATH;
use lbfleet_tests::measure::ms;
use lbfleet_tests::measure::percentile;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::ClusterOptions;
use serde::Serialize;

/// Nginx nodes every backend's servers point at: real addresses, so health checks run as in production.
const NODES: usize = 4;
/// The burst's shard.
const BURST_SHARD: &str = "burst";
/// The LB host whose agent keeps its default reload interval, and the one with no interval.
const COALESCED: &str = "lb-default";
const EAGER: &str = "lb-no-interval";
/// "At most a few reloads" for a burst, at the agent's default interval.
const BURST_TARGET: u64 = 5;
/// The calm before each burst: longer than the agent's default reload interval (2 s).
const QUIET: Duration = Duration::from_secs(3);
/// A burst not live on both hosts after this long fails the benchmark.
const BURST_TIMEOUT: Duration = Duration::from_secs(300);

/// Measures what a config change costs HAProxy through lbfleet's agent, against the seed's restart.
#[derive(Debug, Parser)]
#[command(name = "reload_bench")]
struct Args {
    /// Shards (backends) in the rendered config.
    #[arg(long, default_value_t = 1000)]
    shards: usize,
    /// Servers per backend.
    #[arg(long, default_value_t = 4)]
    nodes_per_shard: usize,
    /// Config changes measured for each figure (the median is reported).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Node changes (adds) in each burst.
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Milliseconds between two writes of the paced burst (a script calling the CLI per change).
    #[arg(long, default_value_t = 20)]
    paced_ms: u64,
    /// The lbfleet binary [default: the workspace's target/release/lbfleet].
    #[arg(long, env = "LBFLEET_BIN")]
    lbfleet_bin: Option<PathBuf>,
    /// The lbfleet-agent binary [default: the workspace's target/release/lbfleet-agent].
    #[arg(long, env = "LBFLEET_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// Also write the figures to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Milliseconds: median and max over the rounds.
#[derive(Debug, Default, Clone, Serialize)]
struct Timing {
    rounds: usize,
    median_ms: f64,
    max_ms: f64,
}

impl Timing {
    fn of(samples: &mut [Duration]) -> Timing {
        samples.sort();
        Timing {
            rounds: samples.len(),
            median_ms: ms(percentile(samples, 0.5)),
            max_ms: samples.last().map(|d| ms(*d)).unwrap_or(0.0),
        }
    }
}

/// Render, validate and put a changed config into service.
#[derive(Debug, Serialize)]
struct ConfigChange {
    shards: usize,
    servers: usize,
    config_bytes: usize,
    /// `Haproxy::render_config`.
    render: Timing,
    /// `haproxy -c` on the rendered file, in the container.
    validate: Timing,
    /// The agent's whole path for a changed config: render, write, `haproxy -c`, swap, hitless reload
    /// and wait until the new worker answers.
    apply_hitless: Timing,
    /// The hitless reload alone (master CLI `reload` until the new worker answers).
    reload_hitless: Timing,
    /// The seed's way: `docker stop` + `docker start` until HAProxy answers again.
    restart_seed: Timing,
}

/// One LB host's side of the burst.
#[derive(Debug, Serialize)]
struct BurstHost {
    host: String,
    /// The agent's `--reload-min-interval`, seconds (`None`: its default).
    reload_min_interval: Option<f64>,
    /// Reloads the burst cost (from the agent's reports).
    reloads: u64,
    /// Config changes the agent applied in the burst.
    config_changes: u64,
    /// First write sent -> the last version acknowledged (live) by this host.
    live_seconds: f64,
}

/// A burst of node changes through a real coordinator and agents.
#[derive(Debug, Serialize)]
struct Burst {
    changes: usize,
    /// Time between two writes (0: back to back).
    spacing_ms: f64,
    /// First write sent -> last write committed.
    written_seconds: f64,
    hosts: Vec<BurstHost>,
}

/// Everything `--json` writes.
#[derive(Debug, Serialize)]
struct Report {
    config_change: ConfigChange,
    bursts: Vec<Burst>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !docker_available() {
        bail!("the reload benchmark needs Docker and the lbfleet images (docker/build-images.sh)");
    }
    anyhow::ensure!(args.rounds > 0 && args.shards > 0 && args.nodes_per_shard > 0, "counts must be positive");
    let (lbfleet, agent) = release_binaries(args.lbfleet_bin.clone(), args.agent_bin.clone())?;
    let report = until_interrupted(run(&args, &lbfleet, &agent)).await?;
    print_report(&report);
    write_json(args.json.as_deref(), &report)
}

async fn run(args: &Args, lbfleet: &Path, agent: &Path) -> anyhow::Result<Report> {
    // The driver figures first, on a lab of their own, with nothing else running.
    let config_change = {
        let mut lab = Lab::new("reload-bench")?;
        let lb = lab.start_haproxy("lb", Mounts::ALL)?;
        let nodes = (0..NODES).map(|i| lab.start_node(&format!("node-{i}"), "bench")).collect::<Result<Vec<_>, _>>()?;
        lb.wait_ready().await?;
        eprintln!("config change: {} shards x {} nodes, {} rounds", args.shards, args.nodes_per_shard, args.rounds);
        config_change(args, &lb, &nodes).await?
    };
    eprintln!("bursts: {} node changes through one coordinator and two agents", args.burst);
    let bursts = bursts(args, lbfleet, agent).await?;
    Ok(Report { config_change, bursts })
}

/// Two bursts of `args.burst` node adds, one written back to back and one paced like a script
/// calling the CLI once per change; counts the reloads each agent made for them: one agent with
/// its default reload interval, one with none, fed the same bursts at the same time.
async fn bursts(args: &Args, lbfleet: &Path, agent: &Path) -> anyhow::Result<Vec<Burst>> {
    let options =
        ClusterOptions { binary: lbfleet.to_path_buf(), log_filter: Some("warn".into()), ..ClusterOptions::default() };
    let agent_options = |interval| AgentOptions {
        reconcile_interval: 10.0,
        report_interval: 0.5,
        log_filter: "warn".into(),
        reload_min_interval: interval,
        ..AgentOptions::default()
    };
    let hosts = [(COALESCED, agent_options(None)), (EAGER, agent_options(Some(0.0)))];
    let fleet = Fleet::start("reload-bench", options, agent, BURST_SHARD, &hosts).await?;
    let client = fleet.client().await?;
    let mut bursts = Vec::new();
    for (round, spacing) in [Duration::ZERO, Duration::from_millis(args.paced_ms)].into_iter().enumerate() {
        bursts.push(burst(&client, &hosts, args.burst, round, spacing).await?);
    }
    Ok(bursts)
}

/// One burst of `changes` node adds, `spacing` apart.
async fn burst(
    client: &Client,
    hosts: &[(&str, AgentOptions)],
    changes: usize,
    round: usize,
    spacing: Duration,
) -> anyhow::Result<Burst> {
    // A quiet period first, longer than the default interval: the burst's first change finds no
    // recent reload to wait for, as a burst after a calm spell does.
    tokio::time::sleep(QUIET).await;
    let before = reload_counts(client, 0).await?;
    let started = Instant::now();
    let mut version = 0;
    for i in 0..changes {
        if i > 0 {
            tokio::time::sleep_until((started + spacing * i as u32).into()).await;
        }
        // Distinct addresses that route nowhere: their checks fail, which costs a reload nothing.
        let add = pb::AddNode {
            name: format!("burst-{round}-{i:03}"),
            shard: BURST_SHARD.into(),
            host: COALESCED.into(),
            address: format!("10.{}.{}.{}:80", 200 + round, i / 250, i % 250 + 1),
            container: String::new(),
        };
        version = client.write(Kind::AddNode(add)).await?.version;
    }
    let written = started.elapsed();
    // Both hosts watched at once: when each acknowledged (made live) the last version.
    let mut live: BTreeMap<String, Duration> = BTreeMap::new();
    let deadline = Instant::now() + BURST_TIMEOUT;
    while live.len() < hosts.len() {
        anyhow::ensure!(Instant::now() < deadline, "version {version} not live on every host: {live:?}");
        if let Ok(status) = client.status().await {
            for agent in status.agents.iter().filter(|a| a.acked_version >= version) {
                live.entry(agent.host.clone()).or_insert_with(|| started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = reload_counts(client, version).await?;
    let hosts = hosts
        .iter()
        .map(|(host, options)| {
            let (reloads_before, changes_before) = before[*host];
            let (reloads_after, changes_after) = after[*host];
            BurstHost {
                host: host.to_string(),
                reload_min_interval: options.reload_min_interval,
                reloads: reloads_after - reloads_before,
                config_changes: changes_after - changes_before,
                live_seconds: live[*host].as_secs_f64(),
            }
        })
        .collect();
    Ok(Burst { changes, spacing_ms: ms(spacing), written_seconds: written.as_secs_f64(), hosts })
}

/// Reloads and config changes per host, from agent reports made once `version` was live and no
/// reload waited.
async fn reload_counts(client: &Client, version: u64) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    wait_for("the agents' reports", BURST_TIMEOUT, || async {
        let status = client.status().await.ok()?;
        let settled = |a: &&pb::AgentStatus| {
            a.report.as_ref().is_some_and(|r| r.applied_version >= version && r.reload_pending.is_empty())
        };
        let counts: BTreeMap<String, (u64, u64)> = status
            .agents
            .iter()
            .filter(settled)
            .map(|a| {
                let report = a.report.as_ref().expect("settled reports exist");
                (a.host.clone(), (report.reloads, report.config_changes))
            })
            .collect();
        (counts.len() == 2).then_some(counts)
    })
    .await
}

/// The benchmark's topology: each backend's servers on distinct nodes (HAProxy's resolvers refuse
/// one address to two servers of a backend). `round` readdresses one server (port 80 or 8080, as
/// `node set --address` would), so every round's config differs.
fn topology(shards: usize, per_shard: usize, nodes: &[String], round: usize) -> Topology {
    let backends = (0..shards)
        .map(|shard| Backend {
            name: format!("shard-bench-{shard:04}"),
            servers: (0..per_shard)
                .map(|n| {
                    let port = if shard == 0 && n == 0 && round % 2 == 1 { 8080 } else { 80 };
                    Server {
                        name: format!("bench-{shard:04}-node-{n}"),
                        address: format!("{}:{port}", nodes[(shard + n) % nodes.len()]),
                        id: n as u32 + 1,
                        admin: AdminState::Ready,
                    }
                })
                .collect(),
        })
        .collect();
    Topology { map_path: MAP_PATH.to_owned(), backends }
}

async fn config_change(args: &Args, lb: &HaproxyBox, nodes: &[String]) -> anyhow::Result<ConfigChange> {
    let hitless = lb.driver(RuntimeMode::Socket, ReloadMode::Hitless).await?;
    let restart = lb.driver(RuntimeMode::Socket, ReloadMode::Restart).await?;
    let (mut render, mut validate, mut apply, mut reload, mut restarts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut config_bytes = 0;
    // Round 0 brings the config in place and is not counted: it starts the 4,000 servers' checks.
    for round in 0..=args.rounds {
        let topology = topology(args.shards, args.nodes_per_shard, nodes, round);
        let started = Instant::now();
        let rendered = Haproxy::render_config(&topology)?;
        let rendered_in = started.elapsed();
        config_bytes = rendered.len();

        let checked_in = validate_copy(lb, &rendered)?;

        let started = Instant::now();
        let changed = hitless.apply_config(&topology).await?;
        let applied_in = started.elapsed();
        anyhow::ensure!(changed, "round {round}: the config did not change");
        if round == 0 {
            continue;
        }
        render.push(rendered_in);
        validate.push(checked_in);
        apply.push(applied_in);

        let started = Instant::now();
        hitless.reload().await?;
        reload.push(started.elapsed());

        let started = Instant::now();
        restart.reload().await?;
        restarts.push(started.elapsed());
        eprintln!(
            "  round {round}: render {:.1} ms, haproxy -c {:.0} ms, apply {:.0} ms, reload {:.0} ms, stop+start {:.0} ms",
            ms(rendered_in),
            ms(checked_in),
            ms(applied_in),
            ms(*reload.last().expect("pushed")),
            ms(*restarts.last().expect("pushed")),
        );
    }
    Ok(ConfigChange {
        shards: args.shards,
        servers: args.shards * args.nodes_per_shard,
        config_bytes,
        render: Timing::of(&mut render),
        validate: Timing::of(&mut validate),
        apply_hitless: Timing::of(&mut apply),
        reload_hitless: Timing::of(&mut reload),
        restart_seed: Timing::of(&mut restarts),
    })
}

/// `haproxy -c` of `rendered` in the container, as the agent runs it, on a copy of its own.
fn validate_copy(lb: &HaproxyBox, rendered: &str) -> anyhow::Result<Duration> {
    let name = "haproxy.cfg.bench";
    std::fs::write(lb.config_dir.join(name), rendered).context("writing the config copy")?;
    let in_container = Path::new(CONFIG_PATH_IN_CONTAINER).with_file_name(name);
    let in_container = in_container.to_str().context("config path")?;
    let started = Instant::now();
    docker(&["exec", &lb.container, "haproxy", "-c", "-f", in_container])?;
    let elapsed = started.elapsed();
    std::fs::remove_file(lb.config_dir.join(name)).context("removing the config copy")?;
    Ok(elapsed)
}

fn ratio(slow: f64, fast: f64) -> String {
    if fast <= 0.0 {
        return "-".into();
    }
    format!("{:.1}x", slow / fast)
}

fn print_report(r: &Report) {
    print_config_change(r);
    for burst in &r.bursts {
        print_burst(burst);
    }
    let worst =
        r.bursts.iter().flat_map(|b| &b.hosts).filter(|h| h.reload_min_interval.is_none()).map(|h| h.reloads).max();
    let met = worst.is_some_and(|w| w <= BURST_TARGET);
    println!(
        "\ntarget: a burst of {} node changes costs at most {BURST_TARGET} reloads at the default interval: {} (worst {})",
        r.bursts.first().map(|b| b.changes).unwrap_or(0),
        if met { "PASS" } else { "MISS" },
        worst.map(|w| w.to_string()).unwrap_or_else(|| "-".into())
    );
}

fn print_burst(b: &Burst) {
    let pace = if b.spacing_ms > 0.0 { format!("one every {:.0} ms", b.spacing_ms) } else { "back to back".into() };
    println!(
        "\nburst: {} node adds written {pace} in {:.2} s; one coordinator, two agents fed the same burst",
        b.changes, b.written_seconds
    );
    println!("{:<44} {:>8} {:>15} {:>12}", "agent", "reloads", "config changes", "live after");
    for host in &b.hosts {
        let interval = match host.reload_min_interval {
            Some(seconds) => format!("--reload-min-interval {seconds}"),
            None => "default interval".to_owned(),
        };
        println!(
            "{:<44} {:>8} {:>15} {:>10.2} s",
            format!("{} ({interval})", host.host),
            host.reloads,
            host.config_changes,
            host.live_seconds
        );
    }
    println!("{:<44} {:>8} {:>15} {:>12}", "seed (one restart per change)", b.changes, b.changes, "-");
}

fn print_config_change(r: &Report) {
    let c = &r.config_change;
    println!(
        "\nreload benchmark: {} shards x {} servers = {} servers, haproxy.cfg {} KiB, medians of {} rounds",
        c.shards,
        c.servers / c.shards.max(1),
        c.servers,
        c.config_bytes / 1024,
        c.render.rounds
    );
    println!("{:<52} {:>14} {:>14} {:>8}", "figure", "lbfleet", "seed", "ratio");
    let row = |what: &str, ours: Option<&Timing>, seed: Option<&Timing>| {
        let show = |t: Option<&Timing>| t.map(|t| format!("{:.2} ms", t.median_ms)).unwrap_or_else(|| "-".into());
        let ratio = match (ours, seed) {
            (Some(o), Some(s)) => ratio(s.median_ms, o.median_ms),
            _ => "-".into(),
        };
        println!("{what:<52} {:>14} {:>14} {ratio:>8}", show(ours), show(seed));
    };
    row("render haproxy.cfg", Some(&c.render), None);
    row("validate (haproxy -c)", Some(&c.validate), None);
    row("put into service: hitless reload vs stop + start", Some(&c.reload_hitless), Some(&c.restart_seed));
    row("whole change: render + validate + swap + reload", Some(&c.apply_hitless), None);
}
