//! Which FQDNs are probed: those a delta bound (at most `MAX_BIND_PROBES` per delta, so a bulk
//! import does not fire one request per FQDN) and, periodically, a sample that walks the whole
//! map over time.

use std::ops::Bound;

use crate::desired::MapEntries;

/// The most FQDNs probed after one delta; the rest are covered by the periodic samples.
pub const MAX_BIND_PROBES: usize = 16;

/// An FQDN to probe and the backend it is bound to (`shard-<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub fqdn: String,
    pub backend: String,
}

impl ProbeTarget {
    /// The shard a node of the bound backend names in `X-Shard`.
    pub fn expected_shard(&self) -> &str {
        self.backend.strip_prefix("shard-").unwrap_or(&self.backend)
    }
}

/// Collects the FQDNs bound by the deltas of a burst, up to `MAX_BIND_PROBES`.
#[derive(Debug, Default)]
pub struct BindTargets {
    targets: Vec<ProbeTarget>,
}

impl BindTargets {
    /// `fqdn` is now bound to `backend`; beyond the cap it is left to the periodic samples.
    pub fn bound(&mut self, fqdn: &str, backend: &str) {
        if let Some(existing) = self.targets.iter_mut().find(|t| t.fqdn == fqdn) {
            existing.backend = backend.to_owned();
        } else if self.targets.len() < MAX_BIND_PROBES {
            self.targets.push(ProbeTarget { fqdn: fqdn.to_owned(), backend: backend.to_owned() });
        }
    }

    /// `fqdn` was unbound: nothing to probe.
    pub fn unbound(&mut self, fqdn: &str) {
        self.targets.retain(|t| t.fqdn != fqdn);
    }

    pub fn take(&mut self) -> Vec<ProbeTarget> {
        std::mem::take(&mut self.targets)
    }
}

/// Walks the map in key order, `n` FQDNs at a time, starting again at the top when it ends:
/// every bound FQDN is probed once every `len / n` samples.
#[derive(Debug, Default)]
pub struct SampleCursor {
    after: Option<String>,
}

impl SampleCursor {
    pub fn next(&mut self, map: &MapEntries, n: usize) -> Vec<ProbeTarget> {
        let n = n.min(map.len());
        let start = match &self.after {
            Some(after) => Bound::Excluded(after.clone()),
            None => Bound::Unbounded,
        };
        let rest = map.range::<String, _>((start, Bound::Unbounded));
        let sample: Vec<ProbeTarget> = rest
            .chain(map.iter())
            .take(n)
            .map(|(fqdn, backend)| ProbeTarget { fqdn: fqdn.clone(), backend: backend.clone() })
            .collect();
        self.after = sample.last().map(|t| t.fqdn.clone());
        sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(targets: &[ProbeTarget]) -> Vec<&str> {
        targets.iter().map(|t| t.fqdn.as_str()).collect()
    }

    #[test]
    fn a_bulk_bind_probes_only_the_cap() {
        let mut binds = BindTargets::default();
        for i in 0..100_000 {
            binds.bound(&format!("site-{i}.com"), "shard-web-1");
        }
        binds.bound("site-3.com", "shard-web-2");
        binds.unbound("site-4.com");
        let targets = binds.take();
        assert_eq!(targets.len(), MAX_BIND_PROBES - 1);
        assert_eq!(targets[3].expected_shard(), "web-2");
        assert!(binds.take().is_empty());
    }

    #[test]
    fn samples_walk_the_map_and_wrap() {
        let map: MapEntries = ["a.com", "b.com", "c.com", "d.com", "e.com"]
            .iter()
            .map(|f| (f.to_string(), "shard-x".to_string()))
            .collect();
        let mut cursor = SampleCursor::default();
        assert_eq!(names(&cursor.next(&map, 2)), ["a.com", "b.com"]);
        assert_eq!(names(&cursor.next(&map, 2)), ["c.com", "d.com"]);
        assert_eq!(names(&cursor.next(&map, 2)), ["e.com", "a.com"]);
        // More than the map holds: each FQDN once.
        assert_eq!(names(&cursor.next(&map, 10)), ["b.com", "c.com", "d.com", "e.com", "a.com"]);
        assert!(cursor.next(&MapEntries::new(), 3).is_empty());
        assert!(cursor.next(&map, 0).is_empty());
    }

    #[test]
    fn the_expected_shard_is_the_backend_without_its_prefix() {
        let target = ProbeTarget { fqdn: "a.com".into(), backend: "shard-web-1".into() };
        assert_eq!(target.expected_shard(), "web-1");
    }
}
