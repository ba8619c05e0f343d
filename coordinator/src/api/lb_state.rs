//! `lb show`: the desired map next to what each LB host's HAProxy really holds.

use std::collections::BTreeMap;
use std::time::Duration;

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
            let backend = backends.get(b.shard.as_str()).map(|b| b.to_string()).unwrap_or(format!("shard-{}", b.shard));
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

/// Keys missing, pointing elsewhere, extra, or present more than once.
pub fn differences(wanted: &BTreeMap<&str, String>, actual: &[pb::MapEntry]) -> Vec<pb::MapDifference> {
    let mut held: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for entry in actual {
        held.entry(entry.fqdn.as_str()).or_default().push(entry.backend.as_str());
    }
    let mut differences = Vec::new();
    for (fqdn, backend) in wanted {
        match held.get(fqdn) {
            Some(values) if values.len() == 1 && values[0] == backend => {}
            Some(values) => differences.push(pb::MapDifference {
                fqdn: fqdn.to_string(),
                desired_backend: backend.clone(),
                actual_backend: values.join(","),
            }),
            None => differences.push(pb::MapDifference {
                fqdn: fqdn.to_string(),
                desired_backend: backend.clone(),
                actual_backend: String::new(),
            }),
        }
    }
    for (fqdn, values) in held {
        if !wanted.contains_key(fqdn) {
            differences.push(pb::MapDifference {
                fqdn: fqdn.to_string(),
                desired_backend: String::new(),
                actual_backend: values.join(","),
            });
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fqdn: &str, backend: &str) -> pb::MapEntry {
        pb::MapEntry { fqdn: fqdn.into(), backend: backend.into() }
    }

    #[test]
    fn lists_missing_wrong_extra_and_duplicate_keys() {
        let wanted: BTreeMap<&str, String> = [
            ("ok.com", "shard-a".to_string()),
            ("missing.com", "shard-a".to_string()),
            ("wrong.com", "shard-a".to_string()),
            ("twice.com", "shard-a".to_string()),
        ]
        .into_iter()
        .collect();
        let actual = [
            entry("ok.com", "shard-a"),
            entry("wrong.com", "shard-b"),
            entry("twice.com", "shard-a"),
            entry("twice.com", "shard-a"),
            entry("extra.com", "shard-c"),
        ];
        let found: Vec<(String, String, String)> =
            differences(&wanted, &actual).into_iter().map(|d| (d.fqdn, d.desired_backend, d.actual_backend)).collect();
        assert_eq!(
            found,
            vec![
                ("missing.com".into(), "shard-a".into(), "".into()),
                ("twice.com".into(), "shard-a".into(), "shard-a,shard-a".into()),
                ("wrong.com".into(), "shard-a".into(), "shard-b".into()),
                ("extra.com".into(), "".into(), "shard-c".into()),
            ]
        );
    }
}
