//! `Admin.History`: the recorded changes, filtered, oldest first, in chunks.
//!
//! Every node answers from its own applied state (the history is replicated): the leader
//! after a read barrier, a follower once it has applied what it knew was committed.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lbfleet_proto::pb;
use lbfleet_proto::Fqdn;
use tokio_stream::Stream;
use tonic::Status;

use crate::raft::state_machine::SharedState;
use crate::state::history::Record;
use crate::state::State;

/// Most records in one message: a chunk stays far below gRPC's message limit.
pub const CHUNK_RECORDS: usize = 1_000;

/// The stream of chunks the rpc answers with.
pub type HistoryStream = Pin<Box<dyn Stream<Item = Result<pb::HistoryChunk, Status>> + Send>>;

/// Which records a request asks for.
#[derive(Debug, Default)]
pub struct Filter {
    fqdn: Option<Fqdn>,
    cluster: Option<String>,
    since_unix_ms: i64,
}

impl Filter {
    /// The filter of a request; an FQDN that cannot be bound is refused, not silently unmatched.
    #[allow(clippy::result_large_err)]
    pub fn of(request: &pb::HistoryRequest) -> Result<Filter, Status> {
        let fqdn = match request.fqdn.as_str() {
            "" => None,
            fqdn => Some(Fqdn::parse(fqdn).map_err(|e| Status::invalid_argument(e.to_string()))?),
        };
        let cluster = (!request.cluster.is_empty()).then(|| request.cluster.clone());
        Ok(Filter { fqdn, cluster, since_unix_ms: request.since_unix_ms })
    }

    fn matches(&self, record: &Record) -> bool {
        record.at_unix_ms >= self.since_unix_ms
            && self.fqdn.as_ref().is_none_or(|fqdn| record.fqdn.as_ref() == Some(fqdn))
            && self.cluster.as_deref().is_none_or(|cluster| record.cluster.as_deref() == Some(cluster))
    }
}

/// The matching records (cheap clones: names are shared), and the history's size and limit.
pub fn select(state: &State, filter: &Filter) -> (Vec<Record>, u64, u64) {
    let history = &state.history;
    let records = history.records().filter(|r| filter.matches(r)).cloned().collect();
    (records, history.len() as u64, history.limit())
}

/// The chunks of `records`, converted one chunk at a time as the client reads; the first
/// (sent even when nothing matched) says how many records are kept and the limit.
pub fn stream(records: Vec<Record>, kept: u64, limit: u64) -> HistoryStream {
    let chunks = futures::stream::unfold((records.into_iter(), true), move |(mut records, first)| async move {
        let chunk: Vec<pb::HistoryRecord> = records.by_ref().take(CHUNK_RECORDS).map(|r| to_pb(&r)).collect();
        if chunk.is_empty() && !first {
            return None;
        }
        let (kept, limit) = if first { (kept, limit) } else { (0, 0) };
        Some((Ok(pb::HistoryChunk { records: chunk, kept, limit }), (records, false)))
    });
    Box::pin(chunks)
}

/// The last `limit` records, oldest first (newest last), for the status page.
pub fn recent(state: &State, limit: usize) -> Vec<pb::HistoryRecord> {
    let records = state.history.records();
    let skip = records.len().saturating_sub(limit);
    records.skip(skip).map(to_pb).collect()
}

/// One record as the wire carries it.
pub fn to_pb(record: &Record) -> pb::HistoryRecord {
    let text = |value: &Option<Arc<str>>| value.as_deref().unwrap_or_default().to_string();
    pb::HistoryRecord {
        version: record.version,
        at_unix_ms: record.at_unix_ms,
        by: record.by.to_string(),
        action: record.action.as_str().to_string(),
        cluster: text(&record.cluster),
        fqdn: record.fqdn.as_ref().map(|f| f.to_string()).unwrap_or_default(),
        shard: text(&record.shard),
        previous: text(&record.previous),
        subject: record.subject.as_deref().unwrap_or_default().to_string(),
        detail: record.detail.as_deref().unwrap_or_default().to_string(),
    }
}

/// Waits until this node has applied `index` (the commit index it knew when asked), for at
/// most `within`; a node that cannot catch up in time says how far it got.
pub async fn applied_up_to(shared: &SharedState, index: u64, within: Duration) -> Result<(), Status> {
    let mut versions = shared.subscribe();
    let caught_up = tokio::time::timeout(within, versions.wait_for(|applied| *applied >= index)).await;
    match caught_up {
        Ok(Ok(_)) => Ok(()),
        // The sender lives as long as the state machine; gone means the node is shutting down.
        Ok(Err(_)) => Err(Status::unavailable("the coordinator is shutting down")),
        Err(_) => Err(Status::unavailable(format!(
            "this node has applied up to version {}, not yet {index} (committed when asked) after {:.1}s; \
             try again or ask another node",
            shared.read().version(),
            within.as_secs_f64()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::state::Command;

    fn by(who: &str, at_unix_ms: i64, command: Command) -> Command {
        Command::By { by: who.into(), at_unix_ms, command: Box::new(command) }
    }

    fn state() -> State {
        let mut state = State::default();
        let fqdn = |name: &str| Fqdn::parse(name).unwrap();
        let commands = [
            by("admin:ops", 1_000, Command::CreateCluster { name: "eu".into(), haproxy_container: None }),
            by("admin:ops", 1_000, Command::CreateCluster { name: "us".into(), haproxy_container: None }),
            by("admin:ops", 2_000, Command::CreateShard { name: "a".into(), cluster: "eu".into() }),
            by("admin:ops", 2_000, Command::CreateShard { name: "b".into(), cluster: "eu".into() }),
            by("admin:ops", 2_000, Command::CreateShard { name: "u".into(), cluster: "us".into() }),
            by("admin:alice", 3_000, Command::Bind { fqdn: fqdn("x.com"), shard: "a".into(), cluster: None }),
            by("admin:alice", 3_000, Command::Bind { fqdn: fqdn("x.com"), shard: "u".into(), cluster: None }),
            by("admin:bob", 4_000, Command::Bind { fqdn: fqdn("x.com"), shard: "b".into(), cluster: None }),
        ];
        for (index, command) in commands.iter().enumerate() {
            state.apply_at(command, index as u64).unwrap();
        }
        state
    }

    fn filtered(fqdn: &str, cluster: &str, since_unix_ms: i64) -> Vec<pb::HistoryRecord> {
        let request = pb::HistoryRequest { fqdn: fqdn.into(), cluster: cluster.into(), since_unix_ms };
        let (records, _, _) = select(&state(), &Filter::of(&request).unwrap());
        records.iter().map(to_pb).collect()
    }

    #[test]
    fn filters_combine() {
        let x = filtered("x.com", "", 0);
        let seen: Vec<(&str, &str, &str, &str, &str)> = x
            .iter()
            .map(|r| (r.by.as_str(), r.action.as_str(), r.cluster.as_str(), r.shard.as_str(), r.previous.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("admin:alice", "bind", "eu", "a", ""),
                ("admin:alice", "bind", "us", "u", ""),
                ("admin:bob", "move", "eu", "b", "a"),
            ]
        );
        assert_eq!(x.iter().map(|r| r.version).collect::<Vec<_>>(), [6, 7, 8]);
        assert_eq!(filtered("x.com", "eu", 0).len(), 2);
        assert_eq!(filtered("x.com", "eu", 4_000).len(), 1);
        assert_eq!(
            filtered("", "us", 0).iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
            ["create cluster", "create shard", "bind"]
        );
        assert_eq!(filtered("y.com", "", 0).len(), 0);
        let bad = pb::HistoryRequest { fqdn: "not a name".into(), ..Default::default() };
        assert_eq!(Filter::of(&bad).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn recent_is_the_newest_last() {
        let recent = recent(&state(), 2);
        assert_eq!(recent.iter().map(|r| r.version).collect::<Vec<_>>(), [7, 8]);
        assert_eq!(super::recent(&state(), 100).len(), 8);
    }

    #[tokio::test]
    async fn chunks_are_bounded_and_the_first_says_what_is_kept() {
        let mut state = State::default();
        state.apply(&Command::CreateCluster { name: "eu".into(), haproxy_container: None }).unwrap();
        state.apply(&Command::CreateShard { name: "a".into(), cluster: "eu".into() }).unwrap();
        let entries: Vec<(Fqdn, String)> =
            (0..2_500).map(|i| (Fqdn::parse(&format!("s{i}.com")).unwrap(), "a".to_string())).collect();
        state.apply(&Command::BindBatch { cluster: "eu".into(), entries }).unwrap();
        let (records, kept, limit) = select(&state, &Filter::default());
        let chunks: Vec<pb::HistoryChunk> = stream(records, kept, limit).map(Result::unwrap).collect().await;
        assert_eq!(chunks.iter().map(|c| c.records.len()).collect::<Vec<_>>(), [1_000, 1_000, 502]);
        assert_eq!((chunks[0].kept, chunks[0].limit), (2_502, crate::state::history::DEFAULT_LIMIT));
        assert_eq!((chunks[1].kept, chunks[1].limit), (0, 0));
        // Nothing matched: one empty chunk still tells what is kept.
        let none = Filter { since_unix_ms: i64::MAX, ..Filter::default() };
        let (records, kept, limit) = select(&state, &none);
        let chunks: Vec<pb::HistoryChunk> = stream(records, kept, limit).map(Result::unwrap).collect().await;
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].records.is_empty());
        assert_eq!(chunks[0].kept, 2_502);
    }
}
