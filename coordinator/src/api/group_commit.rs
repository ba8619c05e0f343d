//! Group commit: writes that arrive while one is in flight are folded into a single log entry.
//!
//! The leader appends, flushes and replicates one entry at a time, so the cost of a durable
//! commit is paid per entry, not per command. One task owns the write path: it takes every
//! command waiting in its queue, commits them as one `Command::Group`, and hands each caller
//! its own result; a few groups may be in flight so that appending overlaps replication.
//! A lone command is written as it is, so a single client pays nothing extra.

use std::sync::Arc;

use lbfleet_proto::transport;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;
use tonic::Status;

use crate::metrics::WriteMetrics;
use crate::raft::CommandResult;
use crate::raft::NodeId;
use crate::raft::Raft;
use crate::state::Command;
use crate::state::Response;

/// Most commands folded into one entry.
const MAX_GROUP: usize = 1_024;
/// Commands waiting for the writer before callers feel back-pressure.
const QUEUE: usize = 4_096;
/// Groups in flight at once: while one replicates, the leader can already append the next.
const IN_FLIGHT: usize = 2;

/// A committed command: the version (log index) that carries it and its own result.
pub type Committed = (u64, CommandResult);

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Committed, Status>>,
}

/// Submits commands to the single writer task.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
    metrics: WriteMetrics,
}

impl GroupCommit {
    /// Starts the writer task for `raft`; writes and log entries are counted in `metrics`.
    pub fn spawn(raft: Raft, metrics: WriteMetrics) -> GroupCommit {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(writer(raft, receiver, metrics.clone()));
        GroupCommit { queue, metrics }
    }

    /// Commits `command`, alone or together with others, and returns its version and result.
    pub async fn write(&self, command: Command) -> Result<Committed, Status> {
        let timer = self.metrics.start(&command);
        let result = self.submit(command).await;
        timer.finish(&result);
        result
    }

    async fn submit(&self, command: Command) -> Result<Committed, Status> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { command, reply })
            .await
            .map_err(|_| transport::retryable_error("coordinator shutting down"))?;
        answer.await.map_err(|_| Status::unavailable("write abandoned during shutdown"))?
    }
}

async fn writer(raft: Raft, mut queue: mpsc::Receiver<Pending>, metrics: WriteMetrics) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Waiting for a free slot first lets commands pile up into the next group meanwhile.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = queue.recv().await else { return };
        let mut group = vec![first];
        // Bulk and conditional writes are entries of their own; small commands ride together.
        let mut bulk = None;
        if !is_bulk(&group[0].command) {
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(next) if !is_bulk(&next.command) => group.push(next),
                    Ok(next) => {
                        bulk = Some(next);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        let raft = raft.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            commit(&raft, &metrics, group).await;
            if let Some(bulk) = bulk {
                commit(&raft, &metrics, vec![bulk]).await;
            }
            drop(slot);
        });
    }
}

/// Bulk imports are large entries of their own. A conditional write is too: it must see the
/// version before its own entry, which a command grouped ahead of it would have changed.
fn is_bulk(command: &Command) -> bool {
    matches!(command.inner(), Command::BindBatch { .. } | Command::Conditional { .. })
}

async fn commit(raft: &Raft, metrics: &WriteMetrics, mut group: Vec<Pending>) {
    if group.len() == 1 {
        let Pending { command, reply } = group.remove(0);
        let result = raft.client_write(command).await.map(|w| (w.log_id.index, w.data)).map_err(write_failed);
        if result.is_ok() {
            metrics.entry(1);
        }
        let _ = reply.send(result);
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<_>) = group.into_iter().map(|p| (p.command, p.reply)).unzip();
    match raft.client_write(Command::Group(commands)).await {
        Ok(written) => {
            metrics.entry(replies.len());
            let version = written.log_id.index;
            let results = match written.data {
                Ok(Response::Group(results)) => results,
                // apply answers a group with a group; anything else is a bug, reported to every caller.
                other => vec![other; replies.len()],
            };
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok((version, result)));
            }
        }
        Err(error) => {
            let status = write_failed(error);
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}

/// Maps a failed write to the status clients see; "leader moved" is safe to resend.
fn write_failed(error: RaftError<NodeId, ClientWriteError<NodeId, crate::raft::Member>>) -> Status {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            transport::retryable_error("leadership changed while writing")
        }
        error => Status::unavailable(format!("write not committed: {error}")),
    }
}
