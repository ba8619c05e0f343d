//! Change log benchmark: what the coordinator's in-memory log of binding changes (the one that
//! lets a reconnecting agent resume with a delta) costs in memory per retained change, in time
//! per recorded change, and in time to compute an agent's delta (see tests/bench/README.md).
//!
//! Each size runs in a child process of its own (this binary, re-run with `--one N`), so memory
//! freed by one size cannot be reused by the next and hide its growth.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command as Process;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use clap::Parser;
use lbfleet_coordinator::state::changelog::ChangeLog;
use lbfleet_coordinator::state::Command;
use lbfleet_coordinator::state::Response;
use lbfleet_coordinator::state::State;
use lbfleet_proto::Fqdn;
use lbfleet_tests::bench::write_json;
use lbfleet_tests::measure::percentile;
use serde::Deserialize;
use serde::Serialize;

/// Changes recorded between two clock readings; the per-change time is the batch's over this.
const BATCH: usize = 1_000;

/// Measures the agents' change log: memory per change, record time, delta time.
#[derive(Debug, Parser)]
#[command(name = "changelog_bench")]
struct Args {
    /// Log sizes measured (changes retained), each in a fresh process.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000,2000000")]
    sizes: Vec<usize>,
    /// How far behind the agents asking for a delta are, in versions.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,100000")]
    behind: Vec<u64>,
    /// Delta computations per figure (the median is reported).
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Clusters the changes are spread over, round-robin; deltas are asked for one of them.
    #[arg(long, default_value_t = 1)]
    clusters: usize,
    /// Shards the FQDNs are bound to.
    #[arg(long, default_value_t = 500)]
    shards: usize,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measure one size in this process and print its figures as JSON (used by the parent run).
    #[arg(long, hide = true)]
    one: Option<usize>,
}

/// The figures of one log size.
#[derive(Debug, Serialize, Deserialize)]
struct SizeReport {
    changes: usize,
    rss_before_bytes: u64,
    rss_after_bytes: u64,
    /// RSS growth over the changes retained.
    bytes_per_change: f64,
    /// Mean FQDN length of the recorded changes, for comparison with the bytes per change.
    mean_fqdn_bytes: f64,
    /// Median over batches of `BATCH` records.
    record_median_ns: f64,
    record_p99_ns: f64,
    deltas: Vec<DeltaReport>,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeltaReport {
    behind: u64,
    /// Bindings in the delta (the net effect: one per FQDN).
    bindings: usize,
    median_us: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    clusters: usize,
    shards: usize,
    rounds: usize,
    sizes: Vec<SizeReport>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(size) = args.one {
        let report = measure(size, &args)?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if args.clusters == 0 || args.shards == 0 || args.rounds == 0 {
        bail!("--clusters, --shards and --rounds must be at least 1");
    }
    let me = std::env::current_exe().context("cannot find this benchmark's binary")?;
    let mut sizes = Vec::new();
    for &size in &args.sizes {
        eprintln!("{size} changes ...");
        let output = Process::new(&me)
            .args(["--one", &size.to_string(), "--rounds", &args.rounds.to_string()])
            .args(["--clusters", &args.clusters.to_string(), "--shards", &args.shards.to_string()])
            .arg("--behind")
            .arg(args.behind.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
            .output()
            .with_context(|| format!("cannot run {}", me.display()))?;
        if !output.status.success() {
            bail!("measuring {size} changes failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
        }
        sizes.push(serde_json::from_slice(&output.stdout).context("the child's figures do not parse")?);
    }
    let report = Report { clusters: args.clusters, shards: args.shards, rounds: args.rounds, sizes };
    print_table(&report);
    write_json(args.json.as_deref(), &report)
}

/// The process's resident set, from /proc/self/statm (resident pages) and the page size.
fn rss_bytes(page_size: u64) -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("cannot read /proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).context("/proc/self/statm has no resident field")?.parse()?;
    Ok(pages * page_size)
}

fn page_size() -> anyhow::Result<u64> {
    let output = Process::new("getconf").arg("PAGESIZE").output().context("cannot run getconf PAGESIZE")?;
    String::from_utf8_lossy(&output.stdout).trim().parse().context("getconf PAGESIZE printed no number")
}

/// A realistic customer domain of 23-44 bytes (about 30 on average), different for every `i`.
fn fqdn(i: usize) -> Fqdn {
    const WORDS: [&str; 8] = ["shop", "blog", "studio", "atelier", "consulting", "media", "bakery", "travel"];
    const TLDS: [&str; 5] = ["com", "de", "co.uk", "net", "example.org"];
    let name = format!(
        "www.{}-{}{:07}.{}",
        WORDS[i % WORDS.len()],
        WORDS[(i / 8) % WORDS.len()],
        i,
        TLDS[(i / 64) % TLDS.len()]
    );
    Fqdn::parse(&name).expect("a valid generated name")
}

fn cluster(i: usize, clusters: usize) -> String {
    format!("eu-{:02}", i % clusters)
}

fn shard(i: usize, shards: usize) -> String {
    // ~8 bytes, as `web-0042`.
    format!("web-{:04}", (i * 7919) % shards)
}

/// A bind as the state machine hands it to the log: the command and what applying it answered.
fn bind(i: usize, args: &Args) -> (Command, Response) {
    let (fqdn, cluster, shard) = (fqdn(i), cluster(i, args.clusters), shard(i, args.shards));
    let command = Command::Bind { fqdn: fqdn.clone(), shard: shard.clone(), cluster: Some(cluster.clone()) };
    (command, Response::Bound { cluster, fqdn, shard, previous: None })
}

fn measure(size: usize, args: &Args) -> anyhow::Result<SizeReport> {
    let page_size = page_size()?;
    // The log records single binds from the response alone, so an empty state stands in for the
    // applied one and holds no memory of its own.
    let state = State::default();
    let mut log = ChangeLog::new(size);
    let mut batches = Vec::with_capacity(size / BATCH + 1);
    let mut fqdn_bytes = 0usize;
    let rss_before = rss_bytes(page_size)?;
    let mut version = 0u64;
    while (version as usize) < size {
        let first = version as usize;
        let batch: Vec<(Command, Response)> = (first..(first + BATCH).min(size)).map(|i| bind(i, args)).collect();
        fqdn_bytes += batch
            .iter()
            .map(|(c, _)| if let Command::Bind { fqdn, .. } = c { fqdn.as_str().len() } else { 0 })
            .sum::<usize>();
        let started = Instant::now();
        for (command, response) in &batch {
            version += 1;
            log.record(version, &state, command, response);
        }
        batches.push(started.elapsed() / batch.len() as u32);
    }
    let rss_after = rss_bytes(page_size)?;
    batches.sort();

    let target = cluster(0, args.clusters);
    let mut deltas = Vec::new();
    for &behind in &args.behind {
        let from = version.saturating_sub(behind);
        let mut samples = Vec::with_capacity(args.rounds);
        let mut bindings = 0;
        for _ in 0..args.rounds {
            let started = Instant::now();
            let delta = log.since(&target, from).context("the log no longer covers the delta")?;
            samples.push(started.elapsed());
            bindings = delta.bindings.len();
        }
        samples.sort();
        deltas.push(DeltaReport { behind, bindings, median_us: percentile(&samples, 0.5).as_secs_f64() * 1e6 });
    }
    Ok(SizeReport {
        changes: size,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        bytes_per_change: rss_after.saturating_sub(rss_before) as f64 / size.max(1) as f64,
        mean_fqdn_bytes: fqdn_bytes as f64 / size.max(1) as f64,
        record_median_ns: percentile(&batches, 0.5).as_nanos() as f64,
        record_p99_ns: percentile(&batches, 0.99).as_nanos() as f64,
        deltas,
    })
}

fn print_table(report: &Report) {
    println!(
        "change log: {} cluster(s), {} shards, delta medians over {} rounds",
        report.clusters, report.shards, report.rounds
    );
    let behind: Vec<u64> =
        report.sizes.first().map(|s| s.deltas.iter().map(|d| d.behind).collect()).unwrap_or_default();
    let mut header =
        format!("{:>10} {:>10} {:>12} {:>8} {:>14}", "changes", "RSS growth", "bytes/change", "FQDN", "record p50/p99");
    for b in &behind {
        header.push_str(&format!(" {:>22}", format!("delta {b} behind")));
    }
    println!("{header}");
    for size in &report.sizes {
        let growth = size.rss_after_bytes.saturating_sub(size.rss_before_bytes) as f64 / (1024.0 * 1024.0);
        let mut line = format!(
            "{:>10} {:>7.1} MiB {:>12.1} {:>6.1} B {:>14}",
            size.changes,
            growth,
            size.bytes_per_change,
            size.mean_fqdn_bytes,
            format!("{:.0}/{:.0} ns", size.record_median_ns, size.record_p99_ns)
        );
        for delta in &size.deltas {
            line.push_str(&format!(" {:>22}", format!("{:.1} us ({} FQDNs)", delta.median_us, delta.bindings)));
        }
        println!("{line}");
    }
}
