//! `Admin.ClusterBindings`: a cluster's bindings in FQDN order, in chunks, all read at one
//! state version; a follower relays the leader's stream (`snapshot::relay`).
//!
//! The bindings are copied out under the state's read lock into one compact buffer (the
//! FQDNs end to end, the shards by index), then streamed from the copy once the lock is
//! released: the stream is consistent, writes wait only for the copy, and the copy costs
//! a fraction of the state's own map (about 30 bytes a binding against well over 100).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use lbfleet_proto::pb;
use tokio::sync::mpsc;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::debug;
use tracing::warn;

use crate::raft::state_machine::SharedState;
use crate::state::Cluster;

/// Bindings per message: about half a megabyte at typical FQDN lengths.
pub const CHUNK_ENTRIES: usize = 10_000;
/// How long a chunk may wait for the caller to take it; then the stream is dropped, and the
/// caller sees fewer bindings than the chunks' `total` announced.
const SEND_DEADLINE: Duration = Duration::from_secs(30);
/// Chunks queued ahead of the caller.
const QUEUED_CHUNKS: usize = 2;
/// Streams one node serves at once: each holds its own copy of a map (about 35 MB at 1,000,000
/// bindings), so callers beyond this are told to come back rather than piling copies up.
pub const MAX_STREAMS: usize = 4;

/// The streams a node may serve at once.
#[derive(Clone)]
pub struct Slots(Arc<Semaphore>);

impl Default for Slots {
    fn default() -> Slots {
        Slots(Arc::new(Semaphore::new(MAX_STREAMS)))
    }
}

impl Slots {
    /// A slot for one stream, held until the stream ends; refused when all are in use.
    pub fn take(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this node is streaming {MAX_STREAMS} maps already (each holds a copy); try again shortly"
            ))
        })
    }
}

/// The chunks of one cluster's bindings.
pub type BindingsStream = Pin<Box<dyn Stream<Item = Result<pb::BindingsChunk, Status>> + Send>>;

/// A cluster's bindings at one version, packed: FQDN `i` is `text[ends[i-1]..ends[i]]`, its
/// shard `shards[shard_of[i]]`.
#[derive(Debug, Default)]
pub struct Bindings {
    pub version: u64,
    text: String,
    ends: Vec<usize>,
    shard_of: Vec<u32>,
    shards: Vec<String>,
}

impl Bindings {
    /// Copies `cluster`'s bindings, which the state holds at `version`.
    pub fn copy(cluster: &Cluster, version: u64) -> Bindings {
        let count = cluster.bindings.len();
        let bytes = cluster.bindings.keys().map(|fqdn| fqdn.as_str().len()).sum();
        let mut copied = Bindings {
            version,
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(count),
            shard_of: Vec::with_capacity(count),
            shards: Vec::new(),
        };
        let mut index_of: HashMap<&str, u32> = HashMap::new();
        for (fqdn, shard) in &cluster.bindings {
            copied.text.push_str(fqdn.as_str());
            copied.ends.push(copied.text.len());
            let index = *index_of.entry(shard.as_str()).or_insert_with(|| {
                copied.shards.push(shard.clone());
                (copied.shards.len() - 1) as u32
            });
            copied.shard_of.push(index);
        }
        copied
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Binding `i` as sent.
    fn entry(&self, i: usize) -> pb::BindEntry {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        pb::BindEntry {
            fqdn: self.text[start..self.ends[i]].to_string(),
            shard: self.shards[self.shard_of[i] as usize].clone(),
        }
    }

    /// The chunk holding bindings `range`.
    fn chunk(&self, range: std::ops::Range<usize>) -> pb::BindingsChunk {
        pb::BindingsChunk {
            version: self.version,
            entries: range.map(|i| self.entry(i)).collect(),
            total: self.len() as u64,
        }
    }

    /// The chunks of at most `per_chunk` bindings, in order; an empty cluster still gets
    /// one (empty) chunk, which tells the caller the version.
    pub fn chunks(&self, per_chunk: usize) -> impl Iterator<Item = pb::BindingsChunk> + '_ {
        let per_chunk = per_chunk.max(1);
        let count = self.len().div_ceil(per_chunk).max(1);
        (0..count).map(move |n| self.chunk(n * per_chunk..((n + 1) * per_chunk).min(self.len())))
    }
}

/// Copies the bindings of `cluster` off the async workers (the copy holds the read lock).
pub async fn read(shared: Arc<SharedState>, cluster: String) -> Result<Bindings, Status> {
    let started = std::time::Instant::now();
    let copied = tokio::task::spawn_blocking(move || {
        let applied = shared.read();
        let found = applied.state.clusters.get(&cluster);
        found
            .map(|c| Bindings::copy(c, applied.version()))
            .ok_or_else(|| Status::not_found(format!("cluster {cluster:?} not found")))
    })
    .await
    .map_err(|e| Status::internal(format!("bindings copy failed: {e}")))??;
    debug!(bindings = copied.len(), elapsed_ms = started.elapsed().as_millis() as u64, "bindings copied");
    Ok(copied)
}

/// Streams `bindings` in chunks of [`CHUNK_ENTRIES`]; each chunk is built when the caller is
/// ready for it, so at most a few are in memory beside the copy. `slot` is given back when the
/// stream ends or is dropped.
pub fn stream(bindings: Bindings, slot: OwnedSemaphorePermit) -> BindingsStream {
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    tokio::spawn(async move {
        let _slot = slot;
        for chunk in bindings.chunks(CHUNK_ENTRIES) {
            match tokio::time::timeout(SEND_DEADLINE, tx.send(Ok(chunk))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    warn!("bindings stream dropped: the caller took no chunk for {SEND_DEADLINE:?}");
                    return;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use futures::StreamExt;
    use lbfleet_proto::Fqdn;

    use super::*;
    use crate::state::ClusterConfig;

    fn cluster(count: usize) -> Cluster {
        let bindings: BTreeMap<Fqdn, String> = (0..count)
            .map(|i| (Fqdn::parse(&format!("site-{i}.example.com")).unwrap(), format!("s{}", i % 3)))
            .collect();
        Cluster {
            name: "eu".into(),
            config: ClusterConfig { haproxy_container: "haproxy".into(), map_path: "/m".into() },
            bindings,
        }
    }

    fn expected(cluster: &Cluster) -> Vec<pb::BindEntry> {
        cluster
            .bindings
            .iter()
            .map(|(fqdn, shard)| pb::BindEntry { fqdn: fqdn.to_string(), shard: shard.clone() })
            .collect()
    }

    #[test]
    fn chunks_hold_every_binding_in_order_at_one_version() {
        let cluster = cluster(25);
        let copied = Bindings::copy(&cluster, 42);
        let chunks: Vec<_> = copied.chunks(10).collect();
        assert_eq!(chunks.iter().map(|c| c.entries.len()).collect::<Vec<_>>(), vec![10, 10, 5]);
        assert!(chunks.iter().all(|c| c.version == 42 && c.total == 25));
        let entries: Vec<_> = chunks.into_iter().flat_map(|c| c.entries).collect();
        assert_eq!(entries, expected(&cluster));
        assert!(entries.windows(2).all(|w| w[0].fqdn < w[1].fqdn));
    }

    #[test]
    fn an_exact_multiple_has_no_empty_tail_and_an_empty_cluster_one_empty_chunk() {
        let copied = Bindings::copy(&cluster(20), 7);
        assert_eq!(copied.chunks(10).map(|c| c.entries.len()).collect::<Vec<_>>(), vec![10, 10]);
        let empty: Vec<_> = Bindings::copy(&cluster(0), 7).chunks(10).collect();
        assert_eq!(empty.len(), 1);
        assert!(empty[0].entries.is_empty());
        assert_eq!((empty[0].version, empty[0].total), (7, 0));
    }

    #[test]
    fn shards_are_shared_not_copied_per_binding() {
        let copied = Bindings::copy(&cluster(1000), 1);
        assert_eq!(copied.shards.len(), 3);
        assert_eq!(copied.len(), 1000);
    }

    #[tokio::test]
    async fn the_stream_keeps_the_copy_when_the_state_moves_on() {
        let mut cluster = cluster(2 * CHUNK_ENTRIES + 1);
        let before = expected(&cluster);
        let copied = Bindings::copy(&cluster, 5);
        // A write after the copy must not show in the stream.
        cluster.bindings.clear();
        let slots = Slots::default();
        let chunks: Vec<_> = stream(copied, slots.take().unwrap()).map(|c| c.unwrap()).collect().await;
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.version == 5 && c.total as usize == before.len()));
        assert_eq!(chunks.into_iter().flat_map(|c| c.entries).collect::<Vec<_>>(), before);
    }

    #[tokio::test]
    async fn streams_beyond_the_limit_are_refused_until_one_ends() {
        let slots = Slots::default();
        let mut held: Vec<_> = (0..MAX_STREAMS).map(|_| slots.take().unwrap()).collect();
        let refused = slots.take().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("try again"), "{}", refused.message());
        // A finished stream gives its slot back.
        let copied = Bindings::copy(&cluster(3), 1);
        let _: Vec<_> = stream(copied, held.pop().unwrap()).collect().await;
        assert!(slots.take().is_ok());
    }
}
