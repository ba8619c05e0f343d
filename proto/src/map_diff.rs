//! How the map HAProxy holds differs from the desired map, key by key.
//!
//! The agent repairs and reports drift from this, and `lb show` lists it; both must agree
//! on what counts as a difference, so this is the one place that decides.

use std::borrow::Borrow;
use std::collections::BTreeMap;

/// How one key of the held map differs from the desired map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyDiff<'a> {
    /// The key is desired and HAProxy does not hold it.
    Missing { key: &'a str, desired: &'a str },
    /// HAProxy holds the key once, with another value.
    Wrong { key: &'a str, desired: &'a str, held: &'a str },
    /// HAProxy holds the desired key more than once (whatever the values): lookups see only one of them.
    Duplicated { key: &'a str, desired: &'a str, held: Vec<&'a str> },
    /// HAProxy holds a key that is not desired, once or more.
    Extra { key: &'a str, held: Vec<&'a str> },
}

impl<'a> KeyDiff<'a> {
    /// The key this difference is about.
    pub fn key(&self) -> &'a str {
        match self {
            KeyDiff::Missing { key, .. }
            | KeyDiff::Wrong { key, .. }
            | KeyDiff::Duplicated { key, .. }
            | KeyDiff::Extra { key, .. } => key,
        }
    }

    /// The desired value, `None` for an extra key.
    pub fn desired(&self) -> Option<&'a str> {
        match self {
            KeyDiff::Missing { desired, .. } | KeyDiff::Wrong { desired, .. } | KeyDiff::Duplicated { desired, .. } => {
                Some(desired)
            }
            KeyDiff::Extra { .. } => None,
        }
    }

    /// Every value HAProxy holds for the key, in its order; empty for a missing key.
    pub fn held(&self) -> &[&'a str] {
        match self {
            KeyDiff::Missing { .. } => &[],
            KeyDiff::Wrong { held, .. } => std::slice::from_ref(held),
            KeyDiff::Duplicated { held, .. } | KeyDiff::Extra { held, .. } => held,
        }
    }
}

/// How many keys differ in each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffCounts {
    /// Desired keys HAProxy does not hold.
    pub missing: u64,
    /// Desired keys held once with another value.
    pub wrong: u64,
    /// Held keys that are not desired.
    pub extra: u64,
    /// Desired keys held more than once.
    pub duplicated: u64,
}

impl DiffCounts {
    /// Keys that differ in any way.
    pub fn total(&self) -> u64 {
        self.missing + self.wrong + self.extra + self.duplicated
    }
}

/// The differences between a desired map and a held one: desired keys first in key order, then extra keys in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapDiff<'a> {
    differences: Vec<KeyDiff<'a>>,
}

impl<'a> MapDiff<'a> {
    /// Whether the held map is exactly the desired one.
    pub fn is_empty(&self) -> bool {
        self.differences.is_empty()
    }

    /// Number of keys that differ.
    pub fn len(&self) -> usize {
        self.differences.len()
    }

    /// The differing keys, in the order described on `MapDiff`.
    pub fn iter(&self) -> std::slice::Iter<'_, KeyDiff<'a>> {
        self.differences.iter()
    }

    /// How many keys differ in each way.
    pub fn counts(&self) -> DiffCounts {
        let mut counts = DiffCounts::default();
        for difference in &self.differences {
            match difference {
                KeyDiff::Missing { .. } => counts.missing += 1,
                KeyDiff::Wrong { .. } => counts.wrong += 1,
                KeyDiff::Duplicated { .. } => counts.duplicated += 1,
                KeyDiff::Extra { .. } => counts.extra += 1,
            }
        }
        counts
    }
}

impl<'a, 'd> IntoIterator for &'d MapDiff<'a> {
    type Item = &'d KeyDiff<'a>;
    type IntoIter = std::slice::Iter<'d, KeyDiff<'a>>;

    fn into_iter(self) -> Self::IntoIter {
        self.differences.iter()
    }
}

/// Compares `desired` with the `actual` entries HAProxy holds (as `show map` lists them, duplicates included).
pub fn diff<'a, K, V>(desired: &'a BTreeMap<K, V>, actual: impl IntoIterator<Item = (&'a str, &'a str)>) -> MapDiff<'a>
where
    K: Borrow<str> + Ord,
    V: AsRef<str>,
{
    let mut held: BTreeMap<&'a str, Vec<&'a str>> = BTreeMap::new();
    for (key, value) in actual {
        held.entry(key).or_default().push(value);
    }
    let mut differences = Vec::new();
    for (key, desired_value) in desired {
        let (key, desired_value) = (key.borrow(), desired_value.as_ref());
        match held.remove(key) {
            None => differences.push(KeyDiff::Missing { key, desired: desired_value }),
            Some(values) if values.len() > 1 => {
                differences.push(KeyDiff::Duplicated { key, desired: desired_value, held: values })
            }
            Some(values) if values[0] != desired_value => {
                differences.push(KeyDiff::Wrong { key, desired: desired_value, held: values[0] })
            }
            Some(_) => {}
        }
    }
    // What is left was never desired.
    differences.extend(held.into_iter().map(|(key, held)| KeyDiff::Extra { key, held }));
    MapDiff { differences }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn map<'a>(entries: &[(&'a str, &'a str)]) -> BTreeMap<&'a str, String> {
        entries.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn lists_missing_wrong_extra_and_duplicate_keys() {
        let desired = map(&[
            ("ok.com", "shard-a"),
            ("missing.com", "shard-a"),
            ("wrong.com", "shard-a"),
            ("twice.com", "shard-a"),
        ]);
        let actual = [
            ("ok.com", "shard-a"),
            ("wrong.com", "shard-b"),
            ("twice.com", "shard-a"),
            ("twice.com", "shard-a"),
            ("extra.com", "shard-c"),
        ];
        let found = diff(&desired, actual);
        assert_eq!(
            found.iter().cloned().collect::<Vec<_>>(),
            vec![
                KeyDiff::Missing { key: "missing.com", desired: "shard-a" },
                KeyDiff::Duplicated { key: "twice.com", desired: "shard-a", held: vec!["shard-a", "shard-a"] },
                KeyDiff::Wrong { key: "wrong.com", desired: "shard-a", held: "shard-b" },
                KeyDiff::Extra { key: "extra.com", held: vec!["shard-c"] },
            ]
        );
        assert_eq!(found.counts(), DiffCounts { missing: 1, wrong: 1, extra: 1, duplicated: 1 });
        assert_eq!(found.counts().total(), 4);
    }

    #[test]
    fn an_exact_map_has_no_difference() {
        let desired = map(&[("a.com", "s1"), ("b.com", "s2")]);
        let found = diff(&desired, [("b.com", "s2"), ("a.com", "s1")]);
        assert!(found.is_empty());
        assert_eq!(found.counts(), DiffCounts::default());
        assert!(diff(&BTreeMap::<String, String>::new(), []).is_empty());
    }

    #[test]
    fn an_empty_held_map_misses_everything_and_an_empty_desired_map_makes_everything_extra() {
        let desired = map(&[("a.com", "s1"), ("b.com", "s2")]);
        assert_eq!(diff(&desired, []).counts(), DiffCounts { missing: 2, ..DiffCounts::default() });
        let none = BTreeMap::<String, String>::new();
        let found = diff(&none, [("b.com", "s2"), ("a.com", "s1"), ("b.com", "s3")]);
        assert_eq!(
            found.iter().cloned().collect::<Vec<_>>(),
            vec![
                KeyDiff::Extra { key: "a.com", held: vec!["s1"] },
                KeyDiff::Extra { key: "b.com", held: vec!["s2", "s3"] }
            ]
        );
    }

    #[test]
    fn duplicates_keep_haproxys_order_and_count_once_even_with_one_right_value() {
        let desired = map(&[("a.com", "s1")]);
        let found = diff(&desired, [("a.com", "s2"), ("a.com", "s1"), ("a.com", "s2")]);
        assert_eq!(found.len(), 1);
        let only = found.iter().next().unwrap();
        assert_eq!(only, &KeyDiff::Duplicated { key: "a.com", desired: "s1", held: vec!["s2", "s1", "s2"] });
        assert_eq!(only.key(), "a.com");
        assert_eq!(only.desired(), Some("s1"));
        assert_eq!(only.held(), ["s2", "s1", "s2"]);
    }

    #[test]
    fn accessors_cover_every_kind() {
        let missing = KeyDiff::Missing { key: "m", desired: "s1" };
        assert_eq!((missing.key(), missing.desired(), missing.held()), ("m", Some("s1"), &[][..]));
        let wrong = KeyDiff::Wrong { key: "w", desired: "s1", held: "s2" };
        assert_eq!((wrong.key(), wrong.desired(), wrong.held()), ("w", Some("s1"), &["s2"][..]));
        let extra = KeyDiff::Extra { key: "x", held: vec!["s3"] };
        assert_eq!((extra.key(), extra.desired(), extra.held()), ("x", None, &["s3"][..]));
    }

    #[test]
    fn works_on_owned_maps_and_borrowed_entries() {
        let desired: BTreeMap<String, String> = [("a.com".to_string(), "s1".to_string())].into_iter().collect();
        let actual = [("a.com".to_string(), "s2".to_string())];
        let found = diff(&desired, actual.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(found.counts().wrong, 1);
    }

    proptest! {
        /// Fixing every listed difference turns the held entries into exactly the desired map.
        #[test]
        fn repairing_the_differences_yields_the_desired_map(
            desired in proptest::collection::btree_map("[a-e]", "s[1-3]", 0..5),
            actual in proptest::collection::vec(("[a-f]", "s[1-3]"), 0..10),
        ) {
            let found = diff(&desired, actual.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let mut held: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (k, v) in &actual {
                held.entry(k.as_str()).or_default().push(v.as_str());
            }
            for difference in &found {
                prop_assert_eq!(held.get(difference.key()).cloned().unwrap_or_default(), difference.held().to_vec());
                match difference.desired() {
                    Some(value) => held.insert(difference.key(), vec![value]),
                    None => held.remove(difference.key()),
                };
            }
            let repaired: BTreeMap<&str, Vec<&str>> = desired.iter().map(|(k, v)| (k.as_str(), vec![v.as_str()])).collect();
            prop_assert_eq!(held, repaired);
            prop_assert_eq!(found.counts().total() as usize, found.len());
        }
    }
}
