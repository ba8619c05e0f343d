//! `lb show`: the desired map next to what each LB host's HAProxy really holds.

use std::collections::BTreeMap;
use std::time::Duration;

use lbfleet_proto::map_diff;
use lbfleet_proto::pb;

use crate::agents::registry::AgentRegistry;

/// How long `lb show` waits for an agent to send its map.
const MAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks every host of `desired` for its map and lists where it differs.
pub async fn compare_hosts(agents: &AgentRegistry, desired: &pb::ClusterView) -> Vec<pb::HostLbState> {
    let backends: BTreeMap<&str, &str> =
        desired.shards.iter().map(|s| (s.name.as_str(), s.lb_backend.as_str())).collect();
    let wanted: BTreeMap<&str, String> = desired
        .bindings
        .iter()
        .map(|b| {
            let backend = backends
                .get(b.shard.as_str())
                .map(|b| b.to_string())
                .unwrap_or_else(|| lbfleet_proto::names::lb_backend(&b.shard));
            (b.fqdn.as_str(), backend)
        })
        .collect();
    let asks = desired.hosts.iter().map(|host| agents.ask_report(&host.id, true, MAP_TIMEOUT));
    let reports = futures::future::join_all(asks).await;
    desired
        .hosts
        .iter()
        .zip(reports)
        .map(|(host, report)| {
            let agent = agents.status(&host.id, desired.version);
            match report {
                Some(report) => pb::HostLbState {
                    host: host.id.clone(),
                    agent,
                    has_map: true,
                    actual_entries: report.map.len() as u64,
                    differences: differences(&wanted, &report.map),
                },
                None => pb::HostLbState { host: host.id.clone(), agent, ..Default::default() },
            }
        })
        .collect()
}

/// Keys missing, pointing elsewhere, extra, or present more than once; several held values are joined with commas.
pub fn differences(wanted: &BTreeMap<&str, String>, actual: &[pb::MapEntry]) -> Vec<pb::MapDifference> {
    let held = actual.iter().map(|entry| (entry.fqdn.as_str(), entry.backend.as_str()));
    map_diff::diff(wanted, held)
        .iter()
        .map(|difference| pb::MapDifference {
            fqdn: difference.key().to_owned(),
            desired_backend: difference.desired().unwrap_or_default().to_owned(),
            actual_backend: difference.held().join(","),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fqdn: &str, backend: &str) -> pb::MapEntry {
        pb::MapEntry { fqdn: fqdn.into(), backend: backend.into() }
    }

    /// What counts as a difference is `map_diff`'s; this pins how `lb show` carries it.
    #[test]
    fn renders_each_difference_as_desired_and_held_backends() {
        let wanted: BTreeMap<&str, String> = [
            ("ok.com", "shard-a".to_string()),
            ("missing.com", "shard-a".to_string()),
            ("twice.com", "shard-a".to_string()),
        ]
        .into_iter()
        .collect();
        let actual = [
            entry("ok.com", "shard-a"),
            entry("twice.com", "shard-a"),
            entry("twice.com", "shard-b"),
            entry("extra.com", "shard-c"),
        ];
        let found: Vec<(String, String, String)> =
            differences(&wanted, &actual).into_iter().map(|d| (d.fqdn, d.desired_backend, d.actual_backend)).collect();
        assert_eq!(
            found,
            vec![
                ("missing.com".into(), "shard-a".into(), "".into()),
                ("twice.com".into(), "shard-a".into(), "shard-a,shard-b".into()),
                ("extra.com".into(), "".into(), "shard-c".into()),
            ]
        );
    }
}
