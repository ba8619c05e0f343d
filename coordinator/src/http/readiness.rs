//! `/readyz` of a coordinator: ready when a leader is known (a leader also confirms that a
//! majority still follows it) and this node has applied what was committed when it was asked.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lbfleet_proto::ops_http::Readiness;
use openraft::error::CheckIsLeaderError;
use openraft::error::RaftError;

use crate::raft::Raft;

/// How long a leader waits for a majority to confirm it before it answers not ready.
const QUORUM_WAIT: Duration = Duration::from_secs(1);
/// Why a leader that a majority does not confirm is not ready.
pub const NO_MAJORITY: &str = "this node leads but no majority of the voters confirms it";
/// How long the check waits for the applied index to reach the committed one.
const APPLY_WAIT: Duration = Duration::from_secs(1);

/// The readiness check of the node that `raft` runs, with its committed index in `committed`.
pub fn readiness(raft: Raft, committed: Arc<AtomicU64>) -> Readiness {
    Arc::new(move || {
        let raft = raft.clone();
        let committed = committed.clone();
        Box::pin(async move { check(&raft, &committed).await })
    })
}

async fn check(raft: &Raft, committed: &AtomicU64) -> Result<String, String> {
    let metrics = raft.metrics().borrow().clone();
    let leader = metrics.current_leader.ok_or("no leader known")?;
    if leader == metrics.id {
        // A leader cut off from its peers keeps believing it leads: ask a majority.
        match tokio::time::timeout(QUORUM_WAIT, raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {}
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                return Err("leadership moved while checking".into())
            }
            Ok(Err(RaftError::Fatal(error))) => return Err(format!("Raft stopped: {error}")),
            // The voters answered, too few of them, or not in time.
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) | Err(_) => {
                return Err(NO_MAJORITY.into())
            }
        }
    }
    let target = committed.load(Ordering::Relaxed);
    let mut watch = raft.metrics();
    let mut applied = 0;
    let caught_up = tokio::time::timeout(APPLY_WAIT, async {
        loop {
            applied = watch.borrow_and_update().last_applied.map(|l| l.index).unwrap_or(0);
            if applied >= target {
                return true;
            }
            if watch.changed().await.is_err() {
                return false;
            }
        }
    })
    .await
    .unwrap_or(false);
    let now = applied;
    if caught_up {
        Ok(format!("leader {leader}, applied {now} of {target} committed"))
    } else {
        Err(format!("applied {now} of {target} committed"))
    }
}
