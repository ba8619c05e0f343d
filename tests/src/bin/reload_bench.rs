//! Reload benchmark: render + validate + reload of a big `haproxy.cfg` (1,000 shards x 4 nodes by
//! default) by the agent's driver, next to the seed's stop + start measured in the same run; and
//! how many reloads a burst of node changes costs through a real coordinator and agent, with the
//! agent's default reload interval next to no interval (see tests/bench/README.md).
#![forbid(unsafe_code)]

use std::fs::File;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use clap::Parser;
use lbfleet_agent::desired::Backend;
use lbfleet_agent::desired::Server;
use lbfleet_agent::desired::Topology;
use lbfleet_agent::docker::DockerHost;
use lbfleet_agent::haproxy::Haproxy;
use lbfleet_agent::haproxy::HaproxyTarget;
use lbfleet_agent::haproxy::ReloadMode;
use lbfleet_agent::haproxy::RuntimeMode;
use lbfleet_agent::haproxy::CONFIG_PATH_IN_CONTAINER;
use lbfleet_tests::docker_lab::docker;
use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::HaproxyBox;
use lbfleet_tests::docker_lab::Lab;
use lbfleet_tests::docker_lab::Mounts;
use lbfleet_tests::docker_lab::MAP_PATH;
use lbfleet_tests::docker_lab::READY;
use lbfleet_tests::measure::percentile;
use lbfleet_tests::poll::wait_for;
use serde::Serialize;

/// Nginx nodes every backend's servers point at: real addresses, so health checks run as in production.
const NODES: usize = 4;

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

/// Everything `--json` writes.
#[derive(Debug, Serialize)]
struct Report {
    config_change: ConfigChange,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !docker_available() {
        bail!("the reload benchmark needs Docker and the lbfleet images (docker/build-images.sh)");
    }
    anyhow::ensure!(args.rounds > 0 && args.shards > 0 && args.nodes_per_shard > 0, "counts must be positive");
    // Dropping the benchmark's future on Ctrl-C or SIGTERM removes its containers.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let report = tokio::select! {
        report = run(&args) => report?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    };
    print_report(&report);
    if let Some(path) = &args.json {
        serde_json::to_writer_pretty(File::create(path)?, &report)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let mut lab = Lab::new("reload-bench")?;
    let lb = lab.start_haproxy("lb", Mounts::ALL)?;
    let nodes = (0..NODES).map(|i| lab.start_node(&format!("node-{i}"), "bench")).collect::<Result<Vec<_>, _>>()?;
    lb.wait_ready().await?;
    eprintln!("config change: {} shards x {} nodes, {} rounds", args.shards, args.nodes_per_shard, args.rounds);
    let config_change = config_change(args, &lb, &nodes).await?;
    Ok(Report { config_change })
}

/// The benchmark's topology; `round` moves one server to another node so every round's config differs.
fn topology(shards: usize, per_shard: usize, nodes: &[String], round: usize) -> Topology {
    let backends = (0..shards)
        .map(|shard| Backend {
            name: format!("shard-bench-{shard:04}"),
            servers: (0..per_shard)
                .map(|n| {
                    let node = if shard == 0 && n == 0 { round % nodes.len() } else { (shard + n) % nodes.len() };
                    Server { name: format!("bench-{shard:04}-node-{n}"), address: format!("{}:80", nodes[node]) }
                })
                .collect(),
        })
        .collect();
    Topology { map_path: MAP_PATH.to_owned(), backends }
}

async fn config_change(args: &Args, lb: &HaproxyBox, nodes: &[String]) -> anyhow::Result<ConfigChange> {
    let hitless = driver(lb, ReloadMode::Hitless).await?;
    let restart = driver(lb, ReloadMode::Restart).await?;
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

/// The agent's HAProxy driver for the lab's container, once HAProxy answers.
async fn driver(lb: &HaproxyBox, reload: ReloadMode) -> anyhow::Result<Haproxy> {
    let docker = DockerHost::connect(None).await?;
    let target = HaproxyTarget {
        container: lb.container.clone(),
        socket_dir: Some(lb.socket_dir.clone()),
        map_dir: Some(lb.map_dir.clone()),
        config_dir: Some(lb.config_dir.clone()),
        map_path: MAP_PATH.to_owned(),
        reload,
    };
    let haproxy = Haproxy::new(target, Some(docker), RuntimeMode::Socket);
    wait_for("HAProxy's runtime API", READY, || async { haproxy.show_map().await.ok() }).await?;
    Ok(haproxy)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ratio(slow: f64, fast: f64) -> String {
    if fast <= 0.0 {
        return "-".into();
    }
    format!("{:.1}x", slow / fast)
}

fn print_report(r: &Report) {
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
