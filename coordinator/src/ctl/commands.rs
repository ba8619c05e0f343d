//! Runs the CLI's client commands and prints their results as text or JSON.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::join_all;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_proto::tls::TlsDir;

use super::cli::ClusterCommand;
use super::cli::Command;
use super::cli::GlobalArgs;
use super::cli::HistoryArgs;
use super::cli::HostCommand;
use super::cli::LbCommand;
use super::cli::MembersCommand;
use super::cli::NodeCommand;
use super::cli::RevocationArgs;
use super::cli::ShardCommand;
use super::cli::SnapshotCommand;
use super::client::Client;
use super::client::ClientError;
use super::drain;
use super::history;
use super::import;
use super::lb_show;
use super::node_output;
use super::output;
use super::snapshot;
use super::status_output;
use super::verify;

/// Where the CLI looks for certificates when no directory is given.
pub const DEFAULT_TLS_DIR: &str = ".lbfleet/tls";

/// Runs one client command against the coordinator group.
pub async fn run(global: &GlobalArgs, command: Command) -> anyhow::Result<()> {
    // A file check needs no coordinator.
    if let Command::Snapshot(SnapshotCommand::Verify { file }) = &command {
        output::snapshot(global.json, "verified", &snapshot::verify(file)?);
        return Ok(());
    }
    let tls_dir = TlsDir::new(global.tls_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_TLS_DIR)));
    let timeout = Duration::from_secs_f64(global.timeout.max(0.1));
    // Any node answers a history read from its own state: no need to look for the leader.
    if let Command::History(args @ HistoryArgs { set_limit: None, .. }) = &command {
        let request = history::request(args)?;
        let tls = Client::credentials(&tls_dir, global.identity.as_deref())?;
        history::print(global.json, &history::read(&global.endpoints, &tls, request, timeout).await?);
        return Ok(());
    }
    let client = Client::connect(&global.endpoints, &tls_dir, global.identity.as_deref(), timeout)
        .await?
        .with_if_version(global.if_version);
    let json = global.json;
    match command {
        Command::Cluster(ClusterCommand::Create { name, haproxy_container }) => {
            let kind = Kind::CreateCluster(pb::CreateCluster {
                name,
                haproxy_container: haproxy_container.unwrap_or_default(),
            });
            output::write_reply(json, &client.write(kind).await?);
        }
        Command::Cluster(ClusterCommand::List) => output::cluster_list(json, &client.clusters().await?),
        Command::Cluster(ClusterCommand::Show { name }) => {
            let name = match name {
                Some(name) => name,
                None => only_cluster(&client).await?,
            };
            node_output::cluster_show(json, &client.cluster(&name, None).await?);
        }
        Command::Cluster(ClusterCommand::Delete { name }) => {
            output::write_reply(json, &client.write(Kind::DeleteCluster(pb::DeleteCluster { name })).await?);
        }
        Command::Cluster(ClusterCommand::Set { name, haproxy_container }) => {
            let kind = Kind::SetCluster(pb::SetCluster { name, haproxy_container });
            output::write_reply(json, &client.write(kind).await?);
        }
        Command::Host(HostCommand::Remove { host }) => {
            output::write_reply(json, &client.write(Kind::RemoveHost(pb::RemoveHost { id: host })).await?);
        }
        Command::Host(HostCommand::Set { host, container }) => {
            let kind = Kind::SetHost(pb::SetHost {
                id: host,
                haproxy_container: container.haproxy_container.unwrap_or_default(),
            });
            output::write_reply(json, &client.write(kind).await?);
        }
        Command::Shard(ShardCommand::Delete { name, move_to }) => {
            let kind = Kind::DeleteShard(pb::DeleteShard { name, move_to: move_to.unwrap_or_default() });
            output::write_reply(json, &client.write(kind).await?);
        }
        Command::Node(NodeCommand::Set { name, address }) => {
            output::write_reply(json, &client.write(Kind::SetNode(pb::SetNode { name, address })).await?);
        }
        Command::Host(HostCommand::Add { host, cluster, haproxy_container, address }) => {
            let kind = Kind::AddHost(pb::AddHost {
                address: address.unwrap_or_else(|| host.clone()),
                id: host,
                cluster,
                haproxy_container: haproxy_container.unwrap_or_default(),
            });
            output::write_reply(json, &client.write(kind).await?);
        }
        Command::Host(HostCommand::Revoke(target)) => {
            let (host, serial) = revocation(target);
            output::write_reply(json, &client.write(Kind::Revoke(pb::Revoke { host, serial })).await?);
        }
        Command::Host(HostCommand::Unrevoke(target)) => {
            let (host, serial) = revocation(target);
            output::write_reply(json, &client.write(Kind::Unrevoke(pb::Unrevoke { host, serial })).await?);
        }
        Command::Shard(ShardCommand::Create { name, cluster }) => {
            output::write_reply(json, &client.write(Kind::CreateShard(pb::CreateShard { name, cluster })).await?);
        }
        Command::Node(NodeCommand::Add { name, shard, host, address, container }) => {
            let kind =
                Kind::AddNode(pb::AddNode { name, shard, host, address, container: container.unwrap_or_default() });
            output::write_reply(json, &client.write(kind).await?);
        }
        Command::Node(NodeCommand::Remove { name, now }) => {
            drain::remove(&client, name, now, global.if_version.is_some(), timeout, json).await?;
        }
        Command::Node(NodeCommand::Drain { name, wait }) => {
            drain::set_state(&client, name, pb::AdminState::AdminDrain, wait, timeout, json).await?;
        }
        Command::Node(NodeCommand::Maint { name, wait }) => {
            drain::set_state(&client, name, pb::AdminState::AdminMaint, wait, timeout, json).await?;
        }
        Command::Node(NodeCommand::Ready { name }) => {
            drain::set_state(&client, name, pb::AdminState::AdminReady, false, timeout, json).await?;
        }
        Command::Bind { fqdn, shard, cluster, verify: true, .. } => {
            let fqdn = lbfleet_proto::Fqdn::parse(&fqdn)?.into_string();
            verify::bind_and_verify(&client, fqdn, shard, cluster, timeout, json).await?;
        }
        Command::Bind { fqdn, shard, cluster, wait, verify: false } => {
            let fqdn = lbfleet_proto::Fqdn::parse(&fqdn)?.into_string();
            let kind = Kind::Bind(pb::Bind { fqdn, shard, cluster: cluster.unwrap_or_default() });
            write_and_wait(&client, kind, wait, timeout, json).await?;
        }
        Command::Unbind { fqdns, cluster, wait } => {
            if global.if_version.is_some() && fqdns.len() > 1 {
                anyhow::bail!("--if-version makes one write conditional: unbind one FQDN at a time with it");
            }
            // Every name is checked before anything is written.
            let fqdns = fqdns.iter().map(|fqdn| lbfleet_proto::Fqdn::parse(fqdn)).collect::<Result<Vec<_>, _>>()?;
            for fqdn in fqdns {
                let kind =
                    Kind::Unbind(pb::Unbind { fqdn: fqdn.into_string(), cluster: cluster.clone().unwrap_or_default() });
                write_and_wait(&client, kind, wait, timeout, json).await?;
            }
        }
        Command::Import { file, cluster, prune, dry_run: true, .. } => {
            output::import_plan(json, &file, &import::dry_run(&client, &file, &cluster, prune).await?);
        }
        Command::Import { file, cluster, batch_size, prune, dry_run: false } => {
            let report = import::run(&client, &file, &cluster, batch_size.max(1), prune).await?;
            output::import_report(json, &file, &report);
        }
        Command::Lb(LbCommand::Show { cluster, host }) => {
            let cluster = match cluster {
                Some(cluster) => cluster,
                None => only_cluster(&client).await?,
            };
            lb_show::run(&client, &cluster, host.as_deref(), json).await?;
        }
        Command::Status => {
            let status = client.status().await?;
            status_output::status(json, &status, &status_of_members(&client, &status, &global.endpoints, timeout).await)
        }
        Command::Members { change: None } => output::members(json, &client.status().await?),
        Command::Members { change: Some(MembersCommand::Add { member }) } => {
            let members = lbfleet_proto::members::parse_members("member", &[member])?;
            let (id, address) = members.into_iter().next().ok_or_else(|| anyhow::anyhow!("expected ID=ADDR"))?;
            let change = pb::change_membership_request::Change::Add(pb::MemberAddress { id, address });
            output::members(json, &client.change_membership(change).await?);
        }
        Command::Members { change: Some(MembersCommand::Remove { id }) } => {
            let change = pb::change_membership_request::Change::Remove(id);
            output::members(json, &client.change_membership(change).await?);
        }
        Command::Snapshot(SnapshotCommand::Save { file, force }) => {
            output::snapshot(json, "saved", &snapshot::save(&client, &file, force, timeout).await?);
        }
        Command::Snapshot(SnapshotCommand::Verify { file }) => {
            output::snapshot(json, "verified", &snapshot::verify(&file)?);
        }
        Command::History(HistoryArgs { set_limit: Some(limit), .. }) => {
            output::write_reply(json, &client.write(Kind::SetHistoryLimit(pb::SetHistoryLimit { limit })).await?);
        }
        // Read before connecting, from the node named, not the leader.
        Command::History(HistoryArgs { set_limit: None, .. }) => unreachable!("history reads are answered above"),
    }
    Ok(())
}

/// The host and serial of a revocation as the wire carries them (empty when not given).
fn revocation(target: RevocationArgs) -> (String, String) {
    (target.host.unwrap_or_default(), target.serial.unwrap_or_default())
}

/// Commits a binding change and, with `wait`, returns only once every LB host applied it.
async fn write_and_wait(client: &Client, kind: Kind, wait: bool, timeout: Duration, json: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let reply = client.write(kind).await?;
    if !wait {
        output::write_reply(json, &reply);
        return Ok(());
    }
    let progress = client.wait_applied(&reply.cluster, reply.version, timeout).await?;
    output::write_and_wait(json, &reply, &progress, started.elapsed());
    if !progress.done {
        anyhow::bail!(
            "not live everywhere after {:.1}s: {}",
            timeout.as_secs_f64(),
            output::laggards(&progress, reply.version)
        );
    }
    Ok(())
}

/// The cluster `lb show` and `cluster show` mean when none is named: the only one there is.
async fn only_cluster(client: &Client) -> anyhow::Result<String> {
    let list = client.clusters().await?;
    match list.clusters.as_slice() {
        [one] => Ok(one.name.clone()),
        [] => anyhow::bail!("no cluster exists yet; create one with `lbfleet cluster create NAME`"),
        several => {
            let names: Vec<&str> = several.iter().map(|c| c.name.as_str()).collect();
            anyhow::bail!("several clusters exist ({}); name one with --cluster", names.join(", "))
        }
    }
}

/// Each member's own view (term, indexes), or why it did not answer. The endpoints given are
/// asked first, all at once: members may advertise addresses only their peers can resolve
/// (container names), and an endpoint tells which member it is. Members no endpoint answered
/// for are then asked at their advertised address, unless that address was one of the
/// endpoints; so a frozen member costs at most one `timeout` in each round.
async fn status_of_members(
    client: &Client,
    status: &pb::StatusReply,
    endpoints: &[String],
    timeout: Duration,
) -> Vec<(u64, Result<pb::StatusReply, ClientError>)> {
    let ask = |address: String| async move {
        let view = Client::status_of(&address, client.tls(), timeout).await.map_err(ClientError::from);
        (address, view)
    };
    let mut by_endpoint: HashMap<String, Result<pb::StatusReply, ClientError>> =
        join_all(endpoints.iter().cloned().map(ask)).await.into_iter().collect();
    let mut by_id: HashMap<u64, pb::StatusReply> = HashMap::new();
    for view in by_endpoint.values().flatten() {
        by_id.insert(view.node_id, view.clone());
    }
    by_id.insert(status.node_id, status.clone());
    let unanswered: Vec<String> = status
        .members
        .iter()
        .filter(|m| !by_id.contains_key(&m.id) && !by_endpoint.contains_key(&m.address))
        .map(|m| m.address.clone())
        .collect();
    by_endpoint.extend(join_all(unanswered.into_iter().map(ask)).await);
    status
        .members
        .iter()
        .map(|member| {
            let view = match by_id.remove(&member.id) {
                Some(view) => Ok(view),
                None => by_endpoint.remove(&member.address).unwrap_or_else(|| {
                    Err(ClientError::Status(tonic::Status::unavailable(format!(
                        "node {} at {} was not asked",
                        member.id, member.address
                    ))))
                }),
            };
            (member.id, view)
        })
        .collect()
}
