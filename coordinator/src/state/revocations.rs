//! Certificates the group refuses: every certificate of an agent host, or one certificate by
//! serial. Kept in the replicated state so that every coordinator refuses the same ones.

use std::collections::BTreeMap;
use std::fmt;

use lbfleet_proto::identity::Certified;
use lbfleet_proto::Role;
use serde::Deserialize;
use serde::Serialize;

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevocationTarget {
    /// Every certificate naming `agent:<host>`.
    Host(String),
    /// One certificate, by serial (lowercase hex as `lbfleet_proto::identity::serial_hex` writes it).
    Serial(String),
}

impl fmt::Display for RevocationTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevocationTarget::Host(host) => write!(f, "host {host}"),
            RevocationTarget::Serial(serial) => write!(f, "certificate serial {serial}"),
        }
    }
}

/// The revoked hosts and serials, each with the time (Unix seconds) it was revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    pub hosts: BTreeMap<String, u64>,
    pub serials: BTreeMap<String, u64>,
}

impl Revocations {
    /// Why `certified` is refused, if it is.
    pub fn refusal(&self, certified: &Certified) -> Option<String> {
        if let Some(at) = self.serials.get(&certified.serial) {
            return Some(format!("certificate serial {} was revoked at {}", certified.serial, unix_time(*at)));
        }
        if certified.identity.role == Role::Agent {
            if let Some(at) = self.hosts.get(&certified.identity.name) {
                return Some(format!("host {} was revoked at {}", certified.identity.name, unix_time(*at)));
            }
        }
        None
    }

    /// Records a revocation; revoking again keeps the first time. Returns when it took effect.
    pub fn revoke(&mut self, target: &RevocationTarget, at: u64) -> u64 {
        *self.map_mut(target).entry(target.key().to_string()).or_insert(at)
    }

    /// Lifts a revocation; `None` when there was none.
    pub fn unrevoke(&mut self, target: &RevocationTarget) -> Option<u64> {
        self.map_mut(target).remove(target.key())
    }

    /// Every revocation, hosts first, in name order.
    pub fn list(&self) -> impl Iterator<Item = (RevocationTarget, u64)> + '_ {
        let hosts = self.hosts.iter().map(|(host, at)| (RevocationTarget::Host(host.clone()), *at));
        hosts.chain(self.serials.iter().map(|(serial, at)| (RevocationTarget::Serial(serial.clone()), *at)))
    }

    fn map_mut(&mut self, target: &RevocationTarget) -> &mut BTreeMap<String, u64> {
        match target {
            RevocationTarget::Host(_) => &mut self.hosts,
            RevocationTarget::Serial(_) => &mut self.serials,
        }
    }
}

impl RevocationTarget {
    fn key(&self) -> &str {
        match self {
            RevocationTarget::Host(key) | RevocationTarget::Serial(key) => key,
        }
    }
}

/// A Unix time as RFC 3339 UTC, for messages.
pub fn unix_time(seconds: u64) -> String {
    i64::try_from(seconds)
        .ok()
        .and_then(|seconds| time::OffsetDateTime::from_unix_timestamp(seconds).ok())
        .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{seconds} s after 1970"))
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::Identity;

    use super::*;

    fn certified(role: Role, name: &str, serial: &str) -> Certified {
        Certified { identity: Identity::new(role, name).unwrap(), serial: serial.into() }
    }

    #[test]
    fn hosts_and_serials_are_refused() {
        let mut revocations = Revocations::default();
        assert_eq!(revocations.refusal(&certified(Role::Agent, "lb-1", "0a")), None);
        assert_eq!(revocations.revoke(&RevocationTarget::Host("lb-1".into()), 100), 100);
        // A second revocation keeps the first time.
        assert_eq!(revocations.revoke(&RevocationTarget::Host("lb-1".into()), 200), 100);
        let refusal = revocations.refusal(&certified(Role::Agent, "lb-1", "0a")).unwrap();
        assert_eq!(refusal, "host lb-1 was revoked at 1970-01-01T00:01:40Z");
        // A host revocation names agents only: an admin called lb-1 is someone else.
        assert_eq!(revocations.refusal(&certified(Role::Admin, "lb-1", "0a")), None);

        revocations.revoke(&RevocationTarget::Serial("0b".into()), 1_764_201_600);
        let refusal = revocations.refusal(&certified(Role::Admin, "ops", "0b")).unwrap();
        assert_eq!(refusal, "certificate serial 0b was revoked at 2025-11-27T00:00:00Z");

        assert_eq!(revocations.unrevoke(&RevocationTarget::Host("lb-1".into())), Some(100));
        assert_eq!(revocations.unrevoke(&RevocationTarget::Host("lb-1".into())), None);
        assert_eq!(revocations.refusal(&certified(Role::Agent, "lb-1", "0a")), None);
        assert_eq!(revocations.list().count(), 1);
    }
}
