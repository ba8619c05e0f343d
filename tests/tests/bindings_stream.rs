//! `Admin.ClusterBindings` on a 3-node group: 25,000 bindings committed in one batch come
//! back complete, in FQDN order, in several chunks that all carry one version, from the
//! leader and relayed by a follower; `GetCluster` can leave the bindings out, and
//! `lbfleet lb show` prints the topology and the whole streamed map.

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_proto::transport;
use lbfleet_tests::process::lbfleet_binary;
use lbfleet_tests::process::ProcessCluster;

const BINDINGS: usize = 25_000;
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

fn credentials(cluster: &ProcessCluster) -> anyhow::Result<Arc<Credentials>> {
    let tls = cluster.tls();
    Ok(Credentials::client(&tls, &tls.admin_identity(None)?)?)
}

/// Every chunk `endpoint` streams for `cluster`, read straight from that node (no leader lookup).
async fn chunks(
    tls: &Arc<Credentials>,
    endpoint: &str,
    cluster: &str,
) -> Result<Vec<pb::BindingsChunk>, tonic::Status> {
    let mut admin =
        transport::admin_client(transport::channel(endpoint, tls).map_err(|e| tonic::Status::internal(e.to_string()))?);
    let request = transport::request(pb::ClusterBindingsRequest { cluster: cluster.into() }, CALL_TIMEOUT);
    let mut stream = transport::within(endpoint, CALL_TIMEOUT, admin.cluster_bindings(request)).await?.into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = transport::within(endpoint, CALL_TIMEOUT, stream.message()).await? {
        chunks.push(chunk);
    }
    Ok(chunks)
}

/// The checks a caller relies on: one version, at least `since`, several bounded chunks, all of `expected` in order.
fn check(who: &str, chunks: &[pb::BindingsChunk], expected: &[pb::BindEntry], since: u64) {
    assert!(chunks.len() > 1, "{who}: {} chunk(s) for {} bindings", chunks.len(), expected.len());
    let version = chunks[0].version;
    assert!(version >= since, "{who}: version {version} before the batch's {since}");
    for chunk in chunks {
        assert_eq!((chunk.version, chunk.total), (version, expected.len() as u64), "{who}: a chunk disagrees");
        assert!(!chunk.entries.is_empty() && chunk.entries.len() <= 10_000, "{who}: {} entries", chunk.entries.len());
    }
    let received: Vec<&pb::BindEntry> = chunks.iter().flat_map(|c| &c.entries).collect();
    assert_eq!(received.len(), expected.len(), "{who}: count");
    assert!(received.iter().zip(expected).all(|(a, b)| *a == b), "{who}: bindings or order differ");
}

async fn lbfleet(cluster: &ProcessCluster, args: &[&str]) -> anyhow::Result<Output> {
    let mut command = std::process::Command::new(lbfleet_binary());
    command.arg("--endpoints").arg(cluster.endpoints().join(",")).arg("--tls-dir").arg(cluster.tls().path()).args(args);
    command.stdin(std::process::Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output()).await?.context("cannot run lbfleet")?;
    anyhow::ensure!(output.status.success(), "lbfleet {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_stream_from_the_leader_and_through_a_follower_at_one_version() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3)?;
    let client = cluster.client().await?;
    client
        .write(Kind::CreateCluster(pb::CreateCluster { name: "c1".into(), haproxy_container: String::new() }))
        .await?;
    for shard in ["web-1", "web-2"] {
        client.write(Kind::CreateShard(pb::CreateShard { name: shard.into(), cluster: "c1".into() })).await?;
    }
    let mut expected: Vec<pb::BindEntry> = (0..BINDINGS)
        .map(|i| pb::BindEntry { fqdn: format!("site-{i}.example.com"), shard: format!("web-{}", 1 + i % 2) })
        .collect();
    let batch = pb::BindBatch { cluster: "c1".into(), entries: expected.clone() };
    let written = client.write(Kind::BindBatch(batch)).await?.version;
    expected.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));

    let tls = credentials(&cluster)?;
    let leader = cluster.leader_index(&client).await?;
    let follower = (0..cluster.size()).find(|&i| i != leader).expect("3 nodes, 1 leader");
    check("leader", &chunks(&tls, &cluster.endpoint(leader), "c1").await?, &expected, written);
    check("follower", &chunks(&tls, &cluster.endpoint(follower), "c1").await?, &expected, written);
    let missing = chunks(&tls, &cluster.endpoint(follower), "nowhere").await.expect_err("no such cluster");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    // The CLI's reader, and GetCluster with and without the bindings.
    let (version, all) = client.bindings("c1").await?.collect().await?;
    assert!(version >= written);
    assert_eq!(all, expected);
    let topology = client.topology("c1", None).await?;
    assert!(topology.bindings.is_empty());
    assert_eq!(topology.shards.len(), 2);
    assert_eq!(client.cluster("c1", None).await?.bindings, expected);

    // `lb show`: the topology first, then every binding of the map in order.
    let output = lbfleet(&cluster, &["lb", "show", "--cluster", "c1"]).await?;
    let text = String::from_utf8(output.stdout)?;
    assert!(text.starts_with("cluster c1 at version "), "{}", &text[..text.len().min(500)]);
    assert!(text.contains(&format!("desired map ({BINDINGS} entries")), "no heading");
    let listed: Vec<&str> =
        text.lines().filter(|l| l.ends_with(" shard-web-1") || l.ends_with(" shard-web-2")).collect();
    assert_eq!(listed.len(), BINDINGS);
    assert!(listed.iter().zip(&expected).all(|(line, b)| line.trim() == format!("{} shard-{}", b.fqdn, b.shard)));

    let output = lbfleet(&cluster, &["--json", "lb", "show", "--cluster", "c1"]).await?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let map = json["desired_map"].as_array().context("desired_map")?;
    assert_eq!(map.len(), BINDINGS);
    assert_eq!(map[0]["fqdn"], expected[0].fqdn.as_str());
    Ok(())
}
