//! `lbfleet import`: an existing fqdn-to-shard.map, committed in large batches; with `--prune`
//! the cluster's map becomes exactly the file, and `--dry-run` says what would change.

use std::collections::HashMap;
use std::path::Path;

use futures::StreamExt;
use lbfleet_proto::names;
use lbfleet_proto::pb;
use lbfleet_proto::Fqdn;
use serde::Serialize;

use super::client::Client;
use super::progress::Progress;

/// An entry that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedEntry {
    /// Line in the file, when the file itself was the problem.
    pub line: Option<usize>,
    /// The line as read, or the FQDN the coordinator refused.
    pub entry: String,
    /// Why it was skipped, for the operator.
    pub reason: String,
}

/// What an import did in total.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    /// Bindings that did not exist before.
    pub added: u64,
    /// Bindings that pointed to another shard before.
    pub moved: u64,
    /// Bindings that were already in place.
    pub unchanged: u64,
    /// Bindings not in the file that `--prune` removed.
    pub removed: u64,
    /// Log entries the import took.
    pub batches: u64,
    /// The state's version after the last batch.
    pub version: u64,
    /// Lines and entries that were not imported.
    pub skipped: Vec<SkippedEntry>,
}

/// The entries of a map file that can be sent, and the lines that cannot.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ParsedMap {
    pub entries: Vec<pb::BindEntry>,
    pub skipped: Vec<SkippedEntry>,
}

/// Parses `<fqdn> shard-<name>` lines; blank lines and `#` comments are ignored, a repeated FQDN keeps its first line.
pub fn parse_map(text: &str) -> ParsedMap {
    let mut parsed = ParsedMap::default();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut skip = |reason: String| {
            parsed.skipped.push(SkippedEntry { line: Some(line_no), entry: line.to_string(), reason });
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [fqdn, backend] = fields.as_slice() else {
            skip(format!("expected `<fqdn> shard-<name>`, found {} fields", fields.len()));
            continue;
        };
        let Some(shard) = names::shard_of_lb_backend(backend) else {
            skip(format!("backend {backend:?} is not of the form shard-<name>"));
            continue;
        };
        let fqdn = match Fqdn::parse(fqdn) {
            Ok(fqdn) => fqdn.into_string(),
            Err(error) => {
                skip(error.to_string());
                continue;
            }
        };
        if let Some(first) = first_seen.get(&fqdn) {
            skip(format!("{fqdn} already appears on line {first}"));
            continue;
        }
        first_seen.insert(fqdn.clone(), line_no);
        parsed.entries.push(pb::BindEntry { fqdn, shard: shard.to_string() });
    }
    parsed
}

/// Unbinds `--prune` keeps in flight at once; the group commits them together.
const PRUNE_IN_FLIGHT: usize = 64;

/// What an import would do to a cluster's map, computed without writing anything.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportPlan {
    /// FQDNs not bound yet, with their shard.
    pub added: Vec<(String, String)>,
    /// FQDNs bound to another shard: (fqdn, from, to).
    pub moved: Vec<(String, String, String)>,
    /// FQDNs already bound as the file says.
    pub unchanged: u64,
    /// FQDNs bound now but not in the file (removed only with `--prune`).
    pub removed: Vec<String>,
    /// Lines of the file that cannot be imported.
    pub skipped: Vec<SkippedEntry>,
}

/// Compares the file's entries with the cluster's bindings.
pub fn plan(parsed: ParsedMap, current: &[pb::BindEntry], prune: bool) -> ImportPlan {
    let now: HashMap<&str, &str> = current.iter().map(|b| (b.fqdn.as_str(), b.shard.as_str())).collect();
    let mut plan = ImportPlan { skipped: parsed.skipped, ..ImportPlan::default() };
    if prune {
        plan.removed = not_in_file(&parsed.entries, current);
    }
    for entry in parsed.entries {
        match now.get(entry.fqdn.as_str()) {
            None => plan.added.push((entry.fqdn, entry.shard)),
            Some(shard) if *shard == entry.shard => plan.unchanged += 1,
            Some(shard) => plan.moved.push((entry.fqdn, shard.to_string(), entry.shard)),
        }
    }
    plan
}

/// The FQDNs of `current` that `entries` does not name.
fn not_in_file(entries: &[pb::BindEntry], current: &[pb::BindEntry]) -> Vec<String> {
    let in_file: std::collections::HashSet<&str> = entries.iter().map(|e| e.fqdn.as_str()).collect();
    current.iter().filter(|b| !in_file.contains(b.fqdn.as_str())).map(|b| b.fqdn.clone()).collect()
}

/// Reads the file and the cluster's map and says what an import would change; writes nothing.
pub async fn dry_run(client: &Client, file: &Path, cluster: &str, prune: bool) -> anyhow::Result<ImportPlan> {
    let parsed = parse_map(&read(file)?);
    let (_, current) = client.bindings(cluster).await?.collect().await?;
    Ok(plan(parsed, &current, prune))
}

fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))
}

/// Reads, validates and commits the file, `batch_size` bindings per log entry; with `prune`,
/// then unbinds what the cluster held before the import and the file does not name.
pub async fn run(
    client: &Client,
    file: &Path,
    cluster: &str,
    batch_size: usize,
    prune: bool,
) -> anyhow::Result<ImportReport> {
    let parsed = parse_map(&read(file)?);
    // Read before importing: the import adds and moves only names that are in the file.
    let to_remove = match prune {
        true => not_in_file(&parsed.entries, &client.bindings(cluster).await?.collect().await?.1),
        false => Vec::new(),
    };
    let mut report = ImportReport { skipped: parsed.skipped, ..ImportReport::default() };
    let mut progress = Progress::new(parsed.entries.len() as u64, "bindings imported");
    for chunk in parsed.entries.chunks(batch_size) {
        let batch = pb::BindBatch { cluster: cluster.to_string(), entries: chunk.to_vec() };
        let reply = client.write(pb::command::Kind::BindBatch(batch)).await?;
        report.batches += 1;
        report.version = reply.version;
        if let Some(summary) = reply.batch {
            report.added += summary.added;
            report.moved += summary.moved;
            report.unchanged += summary.unchanged;
            report.skipped.extend(summary.skipped.into_iter().map(|s| SkippedEntry {
                line: None,
                entry: s.fqdn,
                reason: s.reason,
            }));
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    let mut progress =
        (!to_remove.is_empty()).then(|| Progress::new(to_remove.len() as u64, "pruned bindings unbound"));
    let unbinds = to_remove.into_iter().map(|fqdn| {
        let unbind = pb::Unbind { fqdn, cluster: cluster.to_string() };
        client.write(pb::command::Kind::Unbind(unbind))
    });
    let mut unbinds = futures::stream::iter(unbinds).buffer_unordered(PRUNE_IN_FLIGHT);
    while let Some(reply) = unbinds.next().await {
        let reply = reply?;
        report.removed += 1;
        report.version = report.version.max(reply.version);
        if let Some(progress) = progress.as_mut() {
            progress.advance(1);
        }
    }
    if let Some(progress) = progress {
        progress.finish();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_explains_skips() {
        let text =
            "# comment\n\nexample.com shard-web-1\nWWW.Example.com. shard-web-2\nbad host shard-x\nnoshard.com web-1\n\
                    example.com shard-web-2\none-field\nfoo.com shard-\n";
        let parsed = parse_map(text);
        let fqdns: Vec<&str> = parsed.entries.iter().map(|e| e.fqdn.as_str()).collect();
        assert_eq!(fqdns, ["example.com", "www.example.com"]);
        assert_eq!(parsed.entries[1].shard, "web-2");
        let lines: Vec<Option<usize>> = parsed.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [Some(5), Some(6), Some(7), Some(8), Some(9)]);
        assert!(parsed.skipped[1].reason.contains("shard-<name>"));
        assert!(parsed.skipped[2].reason.contains("already appears on line 3"));
    }

    #[test]
    fn a_plan_sorts_entries_into_added_moved_unchanged_and_removed() {
        let parsed = parse_map("new.com shard-web-1\nmoved.com shard-web-2\nsame.com shard-web-1\nbad line\n");
        let bound = |fqdn: &str, shard: &str| pb::BindEntry { fqdn: fqdn.into(), shard: shard.into() };
        let current = [bound("moved.com", "web-1"), bound("same.com", "web-1"), bound("gone.com", "web-1")];
        let planned = plan(parsed.clone(), &current, true);
        assert_eq!(planned.added, [("new.com".to_string(), "web-1".to_string())]);
        assert_eq!(planned.moved, [("moved.com".to_string(), "web-1".to_string(), "web-2".to_string())]);
        assert_eq!(planned.unchanged, 1);
        assert_eq!(planned.removed, ["gone.com"]);
        assert_eq!(planned.skipped.len(), 1);
        assert!(plan(parsed, &current, false).removed.is_empty(), "without --prune nothing is removed");
    }

    #[test]
    fn injection_attempts_are_skipped() {
        let parsed = parse_map("a.com\rdel map x shard-web\n");
        assert!(parsed.entries.is_empty());
    }
}
