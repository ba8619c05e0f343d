//! `lbfleet import`: an existing fqdn-to-shard.map, committed in large batches.

use std::collections::HashMap;
use std::path::Path;

use indicatif::ProgressBar;
use indicatif::ProgressStyle;
use lbfleet_proto::names;
use lbfleet_proto::pb;
use lbfleet_proto::Fqdn;
use serde::Serialize;

use super::client::Client;

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
    /// Log entries the import took.
    pub batches: u64,
    /// The state's version after the last batch.
    pub version: u64,
    /// Lines and entries that were not imported.
    pub skipped: Vec<SkippedEntry>,
}

/// The entries of a map file that can be sent, and the lines that cannot.
#[derive(Debug, Default, PartialEq)]
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

/// Reads, validates and commits the file, `batch_size` bindings per log entry.
pub async fn run(client: &Client, file: &Path, cluster: &str, batch_size: usize) -> anyhow::Result<ImportReport> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let parsed = parse_map(&text);
    let mut report = ImportReport { skipped: parsed.skipped, ..ImportReport::default() };
    let progress = ProgressBar::new(parsed.entries.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} bindings ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
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
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
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
    fn injection_attempts_are_skipped() {
        let parsed = parse_map("a.com\rdel map x shard-web\n");
        assert!(parsed.entries.is_empty());
    }
}
