//! `Admin.Snapshot`: the leader encodes its applied state as a snapshot file and streams it in
//! chunks; a follower relays the leader's stream.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use lbfleet_proto::pb;
use lbfleet_proto::transport;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::Streaming;
use tracing::info;
use tracing::warn;

use crate::raft::state_machine::Applied;
use crate::raft::state_machine::SharedState;
use crate::raft::NodeId;
use crate::snapshot_file;
use crate::snapshot_file::Origin;
use crate::snapshot_file::SnapshotMember;

/// Bytes per message: a large state never has to fit in one.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// How long a chunk may wait for the caller to take it; then the stream is dropped, and the
/// caller refuses the short file by the length its prefix announced.
const SEND_DEADLINE: Duration = Duration::from_secs(30);
/// Chunks queued ahead of the caller.
const QUEUED_CHUNKS: usize = 2;

/// The chunks of one snapshot file.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

/// The snapshot file of the applied state, encoded off the async workers. Encoding holds the
/// state's read lock, so writes wait as they do for Raft's own snapshots; the checksum is
/// computed after the lock is released.
pub async fn encode(shared: Arc<SharedState>, node_id: NodeId) -> Result<Vec<u8>, Status> {
    let started = std::time::Instant::now();
    let encoded = tokio::task::spawn_blocking(move || {
        let unsealed = {
            let applied = shared.read();
            snapshot_file::encode(&applied.state, origin(&applied, node_id))
        }?;
        let version = unsealed.header().version;
        Ok::<_, snapshot_file::SnapshotFileError>((version, unsealed.seal()))
    })
    .await
    .map_err(|e| Status::internal(format!("snapshot encoder failed: {e}")))?;
    let (version, file) = encoded.map_err(|e| Status::internal(format!("cannot encode the snapshot: {e}")))?;
    info!(version, bytes = file.len(), elapsed_ms = started.elapsed().as_millis() as u64, "snapshot encoded");
    Ok(file)
}

/// The position of `applied` in the group's history.
fn origin(applied: &Applied, node_id: NodeId) -> Origin {
    let membership = applied.membership.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| SnapshotMember { id: *id, address: node.addr.clone(), voter: voters.contains(id) })
        .collect();
    Origin {
        node_id,
        version: applied.version(),
        term: applied.last_applied.map(|id| id.leader_id.term).unwrap_or(0),
        members,
    }
}

/// Streams `file` in chunks of [`CHUNK_BYTES`].
pub fn stream(file: Vec<u8>) -> ChunkStream {
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    tokio::spawn(async move {
        for chunk in file.chunks(CHUNK_BYTES) {
            let sent = tokio::time::timeout(SEND_DEADLINE, tx.send(Ok(pb::SnapshotChunk { data: chunk.to_vec() })));
            match sent.await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    warn!("snapshot stream dropped: the caller took no chunk for {SEND_DEADLINE:?}");
                    return;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Passes on the leader's stream (of snapshot chunks, or of any other server stream); a
/// leader that sends nothing for `deadline` fails it.
pub fn relay<T: Send + 'static>(
    mut upstream: Streaming<T>,
    leader: String,
    deadline: Duration,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    tokio::spawn(async move {
        let endpoint = format!("the leader at {leader}");
        loop {
            let item = match transport::within(&endpoint, deadline, upstream.message()).await {
                Ok(Some(chunk)) => Ok(chunk),
                Ok(None) => return,
                Err(status) => Err(status),
            };
            let failed = item.is_err();
            let sent = tokio::time::timeout(SEND_DEADLINE, tx.send(item)).await;
            if failed || !matches!(sent, Ok(Ok(()))) {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
