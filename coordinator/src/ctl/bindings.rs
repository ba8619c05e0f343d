//! Reads a cluster's bindings from the `ClusterBindings` stream, checking what the stream
//! promises: one version throughout, FQDNs in strictly increasing order, and as many
//! bindings as every chunk announced.

use std::time::Duration;

use lbfleet_proto::pb;
use lbfleet_proto::transport;
use tonic::Streaming;

use super::client::ClientError;

/// The bindings of one cluster as they arrive, chunk by chunk.
pub struct BindingsReader {
    stream: Streaming<pb::BindingsChunk>,
    endpoint: String,
    /// How long one chunk may take to arrive.
    per_chunk: Duration,
    check: Check,
}

impl BindingsReader {
    pub(super) fn new(stream: Streaming<pb::BindingsChunk>, endpoint: String, per_chunk: Duration) -> BindingsReader {
        BindingsReader { stream, endpoint, per_chunk, check: Check::default() }
    }

    /// The next bindings; `None` once the stream ended with every binding it announced.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<pb::BindEntry>>, ClientError> {
        let next = transport::within(&self.endpoint, self.per_chunk, self.stream.message()).await?;
        let broken = |reason| ClientError::BrokenStream { endpoint: self.endpoint.clone(), reason };
        match next {
            Some(chunk) => {
                self.check.accept(&chunk).map_err(broken)?;
                Ok(Some(chunk.entries))
            }
            None => self.check.finish().map(|_| None).map_err(broken),
        }
    }

    /// The state version the bindings were read at, once the first chunk arrived.
    pub fn version(&self) -> Option<u64> {
        self.check.version
    }

    /// How many bindings the stream announced, once the first chunk arrived.
    pub fn total(&self) -> u64 {
        self.check.total
    }

    /// Every binding, and the version they were read at.
    pub async fn collect(mut self) -> Result<(u64, Vec<pb::BindEntry>), ClientError> {
        let mut all = Vec::new();
        while let Some(entries) = self.next_chunk().await? {
            if all.is_empty() {
                all.reserve_exact(self.check.total as usize);
            }
            all.extend(entries);
        }
        Ok((self.check.version.unwrap_or_default(), all))
    }
}

/// What a stream has sent so far.
#[derive(Debug, Default)]
struct Check {
    version: Option<u64>,
    total: u64,
    received: u64,
    last: Option<String>,
}

impl Check {
    /// Takes one chunk, or says why the stream cannot be trusted.
    fn accept(&mut self, chunk: &pb::BindingsChunk) -> Result<(), String> {
        match self.version {
            None => (self.version, self.total) = (Some(chunk.version), chunk.total),
            Some(version) if version != chunk.version || self.total != chunk.total => {
                return Err(format!(
                    "a chunk at version {} of {} bindings after chunks at version {version} of {}",
                    chunk.version, chunk.total, self.total
                ))
            }
            Some(_) => {}
        }
        for entry in &chunk.entries {
            if self.last.as_ref().is_some_and(|last| *last >= entry.fqdn) {
                return Err(format!("{} out of order", entry.fqdn));
            }
            self.last = Some(entry.fqdn.clone());
        }
        self.received += chunk.entries.len() as u64;
        if self.received > self.total {
            return Err(format!("more than the {} bindings announced", self.total));
        }
        Ok(())
    }

    /// The version, when the stream ended whole.
    fn finish(&self) -> Result<u64, String> {
        let version = self.version.ok_or("it ended before its first chunk")?;
        if self.received != self.total {
            return Err(format!("it ended after {} of the {} bindings announced", self.received, self.total));
        }
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(version: u64, total: u64, fqdns: &[&str]) -> pb::BindingsChunk {
        let entries = fqdns.iter().map(|f| pb::BindEntry { fqdn: f.to_string(), shard: "a".into() }).collect();
        pb::BindingsChunk { version, entries, total }
    }

    #[test]
    fn a_whole_stream_is_accepted() {
        let mut check = Check::default();
        check.accept(&chunk(3, 3, &["a.com", "b.com"])).unwrap();
        check.accept(&chunk(3, 3, &["c.com"])).unwrap();
        assert_eq!(check.finish(), Ok(3));
        let mut empty = Check::default();
        empty.accept(&chunk(9, 0, &[])).unwrap();
        assert_eq!(empty.finish(), Ok(9));
    }

    #[test]
    fn a_mixed_version_disorder_or_short_stream_is_refused() {
        let mut check = Check::default();
        check.accept(&chunk(3, 3, &["a.com"])).unwrap();
        assert!(check.accept(&chunk(4, 3, &["b.com"])).unwrap_err().contains("version 4"));

        let mut check = Check::default();
        check.accept(&chunk(3, 3, &["b.com"])).unwrap();
        assert!(check.accept(&chunk(3, 3, &["a.com"])).unwrap_err().contains("out of order"));

        let mut check = Check::default();
        check.accept(&chunk(3, 3, &["a.com", "b.com"])).unwrap();
        assert!(check.finish().unwrap_err().contains("2 of the 3"));
        assert!(Check::default().finish().is_err());

        let mut check = Check::default();
        assert!(check.accept(&chunk(3, 1, &["a.com", "b.com"])).is_err());
    }
}
