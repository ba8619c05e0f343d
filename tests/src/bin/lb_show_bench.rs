//! `lb show` benchmark: on a 1-node coordinator holding `--bindings` bindings, how long each
//! given `lbfleet` CLI takes to print its first line and its whole output. Several CLIs (e.g.
//! two builds, `--cli old=PATH --cli new=PATH`) are run in turn against the same group.
#![forbid(unsafe_code)]

use std::io::BufRead;
use std::io::BufReader;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command as Process;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_tests::bench::until_interrupted;
use lbfleet_tests::bench::write_json;
use lbfleet_tests::measure::percentile;
use lbfleet_tests::process::target_dir;
use lbfleet_tests::process::ClusterOptions;
use lbfleet_tests::process::ProcessCluster;
use serde::Serialize;

/// Measures `lbfleet lb show` at a large map.
#[derive(Debug, Parser)]
#[command(name = "lb_show_bench")]
struct Args {
    /// Bindings in the cluster shown.
    #[arg(long, default_value_t = 1_000_000)]
    bindings: usize,
    /// Bindings per BindBatch while filling the map.
    #[arg(long, default_value_t = 50_000)]
    batch: usize,
    /// Shards the bindings are spread over.
    #[arg(long, default_value_t = 10)]
    shards: usize,
    /// Runs of each CLI (the median and the slowest are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The coordinator binary (default: the workspace's release build).
    #[arg(long)]
    lbfleet: Option<PathBuf>,
    /// A CLI to measure, as NAME=PATH; repeatable (default: the coordinator binary, as "this").
    #[arg(long = "cli")]
    clis: Vec<String>,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One CLI's figures.
#[derive(Debug, Serialize)]
struct CliReport {
    name: String,
    path: PathBuf,
    lines: usize,
    first_line_ms_p50: f64,
    first_line_ms_max: f64,
    total_ms_p50: f64,
    total_ms_max: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    bindings: usize,
    fill_seconds: f64,
    clis: Vec<CliReport>,
}

/// How long `lb show` took to print its first line and to finish, and how many lines it printed.
fn run_once(cli: &Path, endpoints: &str, tls_dir: &Path) -> anyhow::Result<(Duration, Duration, usize)> {
    let started = Instant::now();
    let mut child = Process::new(cli)
        .arg("--endpoints")
        .arg(endpoints)
        .arg("--tls-dir")
        .arg(tls_dir)
        .args(["--timeout", "120", "lb", "show", "--cluster", "bench"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", cli.display()))?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    let mut first = None;
    let mut lines = 0;
    while stdout.read_line(&mut line)? > 0 {
        first.get_or_insert_with(|| started.elapsed());
        lines += 1;
        line.clear();
    }
    let output = child.wait_with_output()?;
    let total = started.elapsed();
    anyhow::ensure!(output.status.success(), "{} failed: {}", cli.display(), String::from_utf8_lossy(&output.stderr));
    Ok((first.context("no output")?, total, lines))
}

fn ms(durations: &[Duration], q: f64) -> f64 {
    let mut sorted = durations.to_vec();
    sorted.sort();
    percentile(&sorted, q).as_secs_f64() * 1e3
}

async fn bench(args: Args) -> anyhow::Result<Report> {
    let binary = args.lbfleet.clone().unwrap_or_else(|| target_dir().join("release/lbfleet"));
    anyhow::ensure!(binary.is_file(), "{} is missing: cargo build --release --bins", binary.display());
    let clis: Vec<(String, PathBuf)> = match args.clis.is_empty() {
        true => vec![("this".into(), binary.clone())],
        false => args
            .clis
            .iter()
            .map(|c| c.split_once('=').map(|(n, p)| (n.to_string(), PathBuf::from(p))).context("--cli takes NAME=PATH"))
            .collect::<anyhow::Result<_>>()?,
    };
    // The coordinator logs how long each copy of the bindings held the state's read lock.
    let log_filter = Some("info,lbfleet_coordinator::api::bindings_stream=debug".to_string());
    let cluster = ProcessCluster::start_with(1, ClusterOptions { binary, log_filter, ..ClusterOptions::default() })?;
    let client = cluster.client().await?;
    client
        .write(Kind::CreateCluster(pb::CreateCluster { name: "bench".into(), haproxy_container: String::new() }))
        .await?;
    for s in 0..args.shards {
        client.write(Kind::CreateShard(pb::CreateShard { name: format!("s{s}"), cluster: "bench".into() })).await?;
    }
    let filling = Instant::now();
    for start in (0..args.bindings).step_by(args.batch.max(1)) {
        let entries = (start..(start + args.batch).min(args.bindings))
            .map(|i| pb::BindEntry { fqdn: format!("site-{i}.example.com"), shard: format!("s{}", i % args.shards) })
            .collect();
        client.write(Kind::BindBatch(pb::BindBatch { cluster: "bench".into(), entries })).await?;
    }
    let fill_seconds = filling.elapsed().as_secs_f64();
    println!("{} bindings written in {fill_seconds:.1} s", args.bindings);
    let mut reports = Vec::new();
    for (name, path) in clis {
        let (mut firsts, mut totals, mut lines) = (Vec::new(), Vec::new(), 0);
        for _ in 0..args.runs {
            let (cli, endpoints, tls_dir) =
                (path.clone(), cluster.endpoints().join(","), cluster.tls().path().to_owned());
            let (first, total, printed) =
                tokio::task::spawn_blocking(move || run_once(&cli, &endpoints, &tls_dir)).await??;
            firsts.push(first);
            totals.push(total);
            lines = printed;
        }
        let report = CliReport {
            name,
            path,
            lines,
            first_line_ms_p50: ms(&firsts, 0.5),
            first_line_ms_max: ms(&firsts, 1.0),
            total_ms_p50: ms(&totals, 0.5),
            total_ms_max: ms(&totals, 1.0),
        };
        println!(
            "{:<10} {} lines  first line p50 {:.0} ms (max {:.0})  total p50 {:.0} ms (max {:.0})",
            report.name,
            report.lines,
            report.first_line_ms_p50,
            report.first_line_ms_max,
            report.total_ms_p50,
            report.total_ms_max
        );
        reports.push(report);
    }
    for line in cluster.log(0).lines().filter(|l| l.contains("bindings copied")) {
        println!("coordinator: {line}");
    }
    Ok(Report { bindings: args.bindings, fill_seconds, clis: reports })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let json = args.json.clone();
    let report = until_interrupted(bench(args)).await?;
    write_json(json.as_deref(), &report)
}
