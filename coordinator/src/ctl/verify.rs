//! `bind --wait --verify`: the bind, then every LB host's end-to-end probe of the FQDN through
//! its own HAProxy, which must be answered by a node of the bound shard.

use std::time::Duration;
use std::time::Instant;

use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use serde::Serialize;

use super::client::Client;
use super::output::print_json;

/// `bind --verify --json`.
#[derive(Serialize)]
struct VerifyJson<'a> {
    version: u64,
    message: &'a str,
    cluster: &'a str,
    fqdn: &'a str,
    shard: &'a str,
    verified: bool,
    elapsed_ms: f64,
    hosts: &'a [pb::HostProgress],
}

/// Binds `fqdn` to `shard` and waits until every LB host has served it from that shard; fails
/// naming each host that did not, and what it saw.
pub async fn bind_and_verify(
    client: &Client,
    fqdn: String,
    shard: String,
    cluster: Option<String>,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let bind = pb::Bind { fqdn: fqdn.clone(), shard: shard.clone(), cluster: cluster.unwrap_or_default() };
    let reply = client.write(Kind::Bind(bind)).await?;
    let progress = client.wait_verified(&reply.cluster, reply.version, &fqdn, &shard, timeout).await?;
    let elapsed = started.elapsed();
    if json {
        print_json(&VerifyJson {
            version: reply.version,
            message: &reply.message,
            cluster: &reply.cluster,
            fqdn: &fqdn,
            shard: &shard,
            verified: progress.done,
            elapsed_ms: elapsed.as_secs_f64() * 1000.0,
            hosts: &progress.hosts,
        });
    } else {
        println!("{} (version {})", reply.message, reply.version);
        for host in &progress.hosts {
            println!("  {}", host_line(host, reply.version));
        }
        if progress.done {
            println!(
                "{fqdn} served from shard {shard} on all {} LB hosts of cluster {} after {:.1} ms",
                progress.hosts.len(),
                reply.cluster,
                elapsed.as_secs_f64() * 1000.0
            );
        }
    }
    if !progress.done {
        anyhow::bail!("{fqdn} not verified on every LB host: {}", failures(&progress, reply.version, &shard));
    }
    Ok(())
}

/// What one host did with the version and the probe.
fn host_line(host: &pb::HostProgress, version: u64) -> String {
    match &host.probe {
        Some(probe) if probe.ok => {
            format!(
                "{}: served by {} (shard {}, HTTP {})",
                host.host, probe.served_by, probe.served_shard, probe.http_status
            )
        }
        Some(probe) => format!("{}: FAILED: {}", host.host, probe.error),
        None if !host.connected => format!("{}: agent not connected", host.host),
        None if host.acked_version < version => {
            format!("{}: not applied yet (at version {})", host.host, host.acked_version)
        }
        None => format!("{}: applied, no probe reported yet", host.host),
    }
}

/// Each host that did not serve the FQDN from `shard`, and why.
fn failures(progress: &pb::WaitAppliedReply, version: u64, shard: &str) -> String {
    let failed: Vec<String> = progress
        .hosts
        .iter()
        .filter(|h| !h.probe.as_ref().is_some_and(|p| p.ok && p.served_shard == shard))
        .map(|h| match &h.probe {
            Some(probe) if !probe.served_shard.is_empty() => format!(
                "{} served it from shard {} (node {}), expected shard {shard}",
                h.host, probe.served_shard, probe.served_by
            ),
            Some(probe) => format!("{}: {}", h.host, probe.error),
            None => host_line(h, version),
        })
        .collect();
    failed.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_host_and_both_shards() {
        let probe = pb::FqdnProbe {
            fqdn: "x.com".into(),
            expected_shard: "web-1".into(),
            served_shard: "web-2".into(),
            served_by: "n9".into(),
            ok: false,
            error: "served by shard web-2 (node n9), expected web-1".into(),
            version: 7,
            ..Default::default()
        };
        let good = pb::FqdnProbe { ok: true, served_shard: "web-1".into(), ..probe.clone() };
        let hosts = vec![
            pb::HostProgress {
                host: "lb-a".into(),
                connected: true,
                acked_version: 7,
                probe: Some(good),
                has_probe: true,
                ..Default::default()
            },
            pb::HostProgress {
                host: "lb-b".into(),
                connected: true,
                acked_version: 7,
                probe: Some(probe),
                has_probe: true,
                ..Default::default()
            },
            pb::HostProgress { host: "lb-c".into(), connected: true, acked_version: 6, ..Default::default() },
        ];
        let progress = pb::WaitAppliedReply { done: false, hosts };
        assert_eq!(
            failures(&progress, 7, "web-1"),
            "lb-b served it from shard web-2 (node n9), expected shard web-1; lb-c: not applied yet (at version 6)"
        );
        assert_eq!(host_line(&progress.hosts[0], 7), "lb-a: served by n9 (shard web-1, HTTP 0)");
    }
}
