//! `lbfleet history`: the replicated history of changes, read from one node, as a table or JSON.

use std::sync::Arc;
use std::time::Duration;

use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::transport;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::cli::HistoryArgs;
use super::client::Client;
use super::client::ClientError;
use super::output::print_json;
use crate::when::unix_now_ms;
use crate::when::utc;

/// Why a `--since` value is refused.
#[derive(Debug, thiserror::Error)]
pub enum SinceError {
    #[error("--since {0:?}: expected an RFC 3339 time (2026-11-28T10:00:00Z) or a duration ago (90s, 10m, 2h, 3d)")]
    Unreadable(String),
    #[error("--since {0:?} is before 1970")]
    BeforeEpoch(String),
}

/// What the history showed: the records and how many the group keeps.
#[derive(Debug, Serialize)]
pub struct HistoryReport {
    /// The node that answered.
    pub endpoint: String,
    pub kept: u64,
    pub limit: u64,
    pub records: Vec<pb::HistoryRecord>,
}

/// The request the flags ask for, checked before anything is sent.
pub fn request(args: &HistoryArgs) -> anyhow::Result<pb::HistoryRequest> {
    let since_unix_ms = match &args.since {
        Some(since) => since_unix_ms(since, unix_now_ms())?,
        None => 0,
    };
    let fqdn = match &args.fqdn {
        Some(fqdn) => lbfleet_proto::Fqdn::parse(fqdn)?.into_string(),
        None => String::new(),
    };
    Ok(pb::HistoryRequest { fqdn, cluster: args.cluster.clone().unwrap_or_default(), since_unix_ms })
}

/// Reads the history from the first endpoint that answers: every node keeps it, so this
/// shows that node's view (a follower answers once it applied what it knew was committed).
pub async fn read(
    endpoints: &[String],
    tls: &Arc<Credentials>,
    request: pb::HistoryRequest,
    timeout: Duration,
) -> anyhow::Result<HistoryReport> {
    let client = Client::first_reachable(endpoints, tls, timeout).await?;
    let endpoint = client.endpoint();
    let mut stream = client.history(request).await?;
    let mut report = HistoryReport { endpoint: endpoint.clone(), kept: 0, limit: 0, records: Vec::new() };
    let mut first = true;
    // Each chunk gets the whole timeout: a node that freezes mid-stream fails the read in time.
    while let Some(chunk) = transport::within(&endpoint, timeout, stream.message()).await.map_err(ClientError::from)? {
        if first {
            (report.kept, report.limit) = (chunk.kept, chunk.limit);
            first = false;
        }
        report.records.extend(chunk.records);
    }
    Ok(report)
}

/// Prints the records as a table, or the report as JSON.
pub fn print(json: bool, report: &HistoryReport) {
    if json {
        return print_json(&JsonReport::from(report));
    }
    if report.records.is_empty() {
        println!("no recorded change matches ({} kept, limit {})", report.kept, report.limit);
        return;
    }
    let by_width = report.records.iter().map(|r| by(r).len()).max().unwrap_or(0).max(2);
    let action_width = report.records.iter().map(|r| r.action.len()).max().unwrap_or(0).max(6);
    println!("{:<20}  {:>8}  {:<by_width$}  {:<action_width$}  WHAT", "TIME", "VERSION", "BY", "ACTION");
    for record in &report.records {
        println!(
            "{:<20}  {:>8}  {:<by_width$}  {:<action_width$}  {}",
            utc(record.at_unix_ms),
            record.version,
            by(record),
            record.action,
            what(record)
        );
    }
}

/// `--json`: the records with their time also in RFC 3339.
#[derive(Serialize)]
struct JsonReport<'a> {
    endpoint: &'a str,
    kept: u64,
    limit: u64,
    records: Vec<JsonRecord<'a>>,
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    time: String,
    #[serde(flatten)]
    record: &'a pb::HistoryRecord,
}

impl<'a> From<&'a HistoryReport> for JsonReport<'a> {
    fn from(report: &'a HistoryReport) -> JsonReport<'a> {
        let records = report.records.iter().map(|record| JsonRecord { time: utc(record.at_unix_ms), record }).collect();
        JsonReport { endpoint: &report.endpoint, kept: report.kept, limit: report.limit, records }
    }
}

/// Who made the change; changes written before callers were recorded name nobody.
fn by(record: &pb::HistoryRecord) -> &str {
    if record.by.is_empty() {
        "-"
    } else {
        &record.by
    }
}

/// What changed, in one line: `fqdn -> shard (was previous)` for bindings, else the subject and detail.
fn what(record: &pb::HistoryRecord) -> String {
    let mut text = String::new();
    if !record.fqdn.is_empty() {
        text.push_str(&record.fqdn);
        if !record.shard.is_empty() {
            text.push_str(&format!(" -> {}", record.shard));
        }
        if !record.previous.is_empty() {
            text.push_str(&format!(" (was {})", record.previous));
        }
    } else {
        text.push_str(&record.subject);
        if !record.detail.is_empty() {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&record.detail);
        }
    }
    if !record.cluster.is_empty() {
        text.push_str(&format!(" [cluster {}]", record.cluster));
    }
    text
}

/// `--since`: an RFC 3339 time, or a duration (`90s`, `10m`, `2h`, `3d`) before `now_unix_ms`.
pub fn since_unix_ms(text: &str, now_unix_ms: i64) -> Result<i64, SinceError> {
    let unreadable = || SinceError::Unreadable(text.to_string());
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        let ms = at.unix_timestamp_nanos() / 1_000_000;
        return match i64::try_from(ms) {
            Ok(ms) if ms >= 0 => Ok(ms),
            _ => Err(SinceError::BeforeEpoch(text.to_string())),
        };
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(unreadable)?;
    let (amount, unit) = text.split_at(split);
    let amount: i64 = amount.parse().map_err(|_| unreadable())?;
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(unreadable()),
    };
    let ago = amount.checked_mul(unit_ms).ok_or_else(unreadable)?;
    Ok(now_unix_ms.saturating_sub(ago).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_durations() {
        let now = 1_764_324_000_000; // 2025-11-28T10:00:00Z
        assert_eq!(since_unix_ms("2025-11-28T10:00:00Z", 0).unwrap(), now);
        assert_eq!(since_unix_ms("2025-11-28T11:00:00+01:00", 0).unwrap(), now);
        assert_eq!(since_unix_ms("90s", now).unwrap(), now - 90_000);
        assert_eq!(since_unix_ms("10m", now).unwrap(), now - 600_000);
        assert_eq!(since_unix_ms("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(since_unix_ms("3d", now).unwrap(), now - 3 * 86_400_000);
        for bad in ["", "10", "m", "10w", "-5m", "yesterday", "2025-11-28"] {
            assert!(matches!(since_unix_ms(bad, now), Err(SinceError::Unreadable(_))), "{bad:?} accepted");
        }
        assert!(matches!(since_unix_ms("1969-12-31T23:00:00Z", now), Err(SinceError::BeforeEpoch(_))));
    }

    #[test]
    fn lines_say_what_changed() {
        let bind = pb::HistoryRecord {
            fqdn: "x.com".into(),
            shard: "b".into(),
            previous: "a".into(),
            cluster: "eu".into(),
            ..Default::default()
        };
        assert_eq!(what(&bind), "x.com -> b (was a) [cluster eu]");
        let unbind = pb::HistoryRecord { fqdn: "x.com".into(), previous: "a".into(), ..Default::default() };
        assert_eq!(what(&unbind), "x.com (was a)");
        let node = pb::HistoryRecord { subject: "web-1".into(), detail: "was ready".into(), ..Default::default() };
        assert_eq!(what(&node), "web-1: was ready");
    }
}
