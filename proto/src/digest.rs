//! An order-independent digest of a map, updated in O(1) per change.
//!
//! Coordinator and agent compute it the same way, so a report can say "this HAProxy
//! holds exactly the desired map" without sending the map.

/// XOR of a 64-bit FNV-1a hash of every `fqdn backend` pair; the empty map is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapDigest(u64);

impl MapDigest {
    /// The digest of `entries`.
    pub fn of<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> MapDigest {
        let mut digest = MapDigest::default();
        for (fqdn, backend) in entries {
            digest.toggle(fqdn, backend);
        }
        digest
    }

    /// Adds a pair that was absent, or removes one that was present (XOR is its own inverse).
    pub fn toggle(&mut self, fqdn: &str, backend: &str) {
        self.0 ^= entry_hash(fqdn, backend);
    }

    /// The raw value, as carried in protobuf messages.
    pub fn value(self) -> u64 {
        self.0
    }
}

/// Writes a raw digest as 16 hex digits, the form operators compare by eye.
pub(crate) fn serialize_hex<S: serde::Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{value:016x}"))
}

fn entry_hash(fqdn: &str, backend: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    // The space separates key and value as in the map file, so ("a b", "c") != ("a", "b c").
    for byte in fqdn.bytes().chain(std::iter::once(b' ')).chain(backend.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // A final avalanche so that similar names do not cancel out under XOR.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_independent_and_incremental() {
        let a = MapDigest::of([("a.com", "shard-1"), ("b.com", "shard-2")]);
        let b = MapDigest::of([("b.com", "shard-2"), ("a.com", "shard-1")]);
        assert_eq!(a, b);
        let mut c = MapDigest::of([("a.com", "shard-1")]);
        c.toggle("b.com", "shard-2");
        assert_eq!(a, c);
        c.toggle("b.com", "shard-2");
        assert_eq!(c, MapDigest::of([("a.com", "shard-1")]));
        assert_eq!(MapDigest::of([]), MapDigest::default());
    }

    #[test]
    fn value_changes_with_the_backend() {
        assert_ne!(MapDigest::of([("a.com", "shard-1")]), MapDigest::of([("a.com", "shard-2")]));
    }
}
