//! What the benchmark binaries share: the release binaries they drive, running until done or
//! interrupted, and writing their figures as JSON.

use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::path::PathBuf;

use anyhow::bail;

use crate::process::target_dir;

/// The `lbfleet` and `lbfleet-agent` binaries to run: the ones given, else the workspace's release builds.
pub fn release_binaries(lbfleet: Option<PathBuf>, agent: Option<PathBuf>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let lbfleet = lbfleet.unwrap_or_else(|| target_dir().join("release/lbfleet"));
    let agent = agent.unwrap_or_else(|| target_dir().join("release/lbfleet-agent"));
    for binary in [&lbfleet, &agent] {
        anyhow::ensure!(binary.is_file(), "{} is missing: cargo build --release --bins", binary.display());
    }
    Ok((lbfleet, agent))
}

/// Runs `benchmark` to its end, or drops it on Ctrl-C or SIGTERM, which removes its containers and processes.
pub async fn until_interrupted<T>(benchmark: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        report = benchmark => report,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}

/// Writes `report` to `path` as JSON, when a path was given.
pub fn write_json(path: Option<&Path>, report: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        serde_json::to_writer_pretty(File::create(path)?, report)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}
