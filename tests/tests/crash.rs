//! A coordinator process killed with SIGKILL right after acknowledging binds keeps every one of them.

use std::collections::BTreeSet;

use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_tests::process::ProcessCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_acknowledged_binds_loses_nothing() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(1)?;
    let client = cluster.client().await?;
    client
        .write(Kind::CreateCluster(pb::CreateCluster { name: "c1".into(), haproxy_container: String::new() }))
        .await?;
    client.write(Kind::CreateShard(pb::CreateShard { name: "web-1".into(), cluster: "c1".into() })).await?;
    let mut acknowledged = BTreeSet::new();
    for i in 0..200 {
        let fqdn = format!("crash-{i}.example.com");
        let bind = pb::Bind { fqdn: fqdn.clone(), shard: "web-1".into(), cluster: String::new() };
        client.write(Kind::Bind(bind)).await?;
        acknowledged.insert(fqdn);
    }
    // Also a batch, the other write path.
    let entries = (0..500)
        .map(|i| pb::BindEntry { fqdn: format!("batch-{i}.example.com"), shard: "web-1".into() })
        .collect::<Vec<_>>();
    acknowledged.extend(entries.iter().map(|e| e.fqdn.clone()));
    client.write(Kind::BindBatch(pb::BindBatch { cluster: "c1".into(), entries })).await?;
    drop(client);

    // No chance to flush anything: the process dies the moment the last write was acknowledged.
    cluster.kill(0);
    cluster.restart(0)?;
    let client = cluster.client().await?;
    let view = client.cluster("c1", None).await?;
    let recovered: BTreeSet<String> = view.bindings.into_iter().map(|b| b.fqdn).collect();
    assert_eq!(recovered, acknowledged, "log of the restarted node:\n{}", cluster.log(0));
    Ok(())
}
