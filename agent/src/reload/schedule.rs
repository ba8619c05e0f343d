//! When a config change is put into service. The first change after a quiet period reloads at
//! once; changes that follow within `min_interval` of the previous reload wait until that
//! interval has passed and then go in together, so a burst costs a few reloads, not one each.

use std::time::Duration;

use tokio::time::Instant;

/// Config changes waiting for their reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReload {
    /// When the first of them arrived.
    pub since: Instant,
    /// The first state version whose config is not in service yet; `None` when the reload was
    /// forced by a check (the config file drifted) rather than by a new version.
    pub first_version: Option<u64>,
    /// Config changes coalesced so far.
    pub changes: u64,
    /// Why a check forced the reload, if one did.
    pub forced: Option<String>,
}

/// The reload rate limit and what waits for it: a pure state machine, fed with instants.
#[derive(Debug, Clone)]
pub struct Coalescer {
    min_interval: Duration,
    /// After a failed reload, the next attempt waits at least this long.
    retry_after: Duration,
    last_reload: Option<Instant>,
    last_failure: Option<Instant>,
    pending: Option<PendingReload>,
}

impl Coalescer {
    /// A schedule allowing one reload per `min_interval`; failed reloads are retried after `retry_after`.
    pub fn new(min_interval: Duration, retry_after: Duration) -> Coalescer {
        Coalescer { min_interval, retry_after, last_reload: None, last_failure: None, pending: None }
    }

    /// What waits for a reload, if anything.
    pub fn pending(&self) -> Option<&PendingReload> {
        self.pending.as_ref()
    }

    /// A config change of `version` arrived at `now`.
    pub fn config_changed(&mut self, version: u64, now: Instant) {
        let pending =
            self.pending.get_or_insert(PendingReload { since: now, first_version: None, changes: 0, forced: None });
        pending.first_version.get_or_insert(version);
        pending.changes += 1;
    }

    /// A check found the config in service differs from the desired one (`why`): reload it.
    pub fn force(&mut self, why: String, now: Instant) {
        let pending =
            self.pending.get_or_insert(PendingReload { since: now, first_version: None, changes: 0, forced: None });
        pending.forced = Some(why);
    }

    /// The desired config is the one in service again (a change undone before its reload); a
    /// reload forced by a check still waits.
    pub fn settled(&mut self) {
        match &mut self.pending {
            Some(pending) if pending.forced.is_some() => {
                pending.first_version = None;
                pending.changes = 0;
            }
            _ => self.pending = None,
        }
    }

    /// When the pending reload is due; `None` when nothing waits.
    pub fn due_at(&self) -> Option<Instant> {
        let pending = self.pending.as_ref()?;
        let mut due = pending.since;
        if let Some(last) = self.last_reload {
            due = due.max(last + self.min_interval);
        }
        if let Some(failed) = self.last_failure {
            due = due.max(failed + self.retry_after.max(self.min_interval));
        }
        Some(due)
    }

    /// Whether the pending reload is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.due_at().is_some_and(|due| due <= now)
    }

    /// The reload finished at `now` and put everything pending into service; returns what it covered.
    pub fn reloaded(&mut self, now: Instant) -> Option<PendingReload> {
        self.last_reload = Some(now);
        self.last_failure = None;
        self.pending.take()
    }

    /// The reload failed at `now`: the changes stay pending and are retried later.
    pub fn failed(&mut self, now: Instant) {
        self.last_failure = Some(now);
    }

    /// The highest version that may be acknowledged as live when `applied` is held: the one
    /// before the first config change still waiting for its reload.
    pub fn live_version(&self, applied: u64) -> u64 {
        match self.pending.as_ref().and_then(|p| p.first_version) {
            Some(first) => applied.min(first.saturating_sub(1)),
            None => applied,
        }
    }
}

/// When reloads start for config changes arriving at `arrivals` (offsets from a common start,
/// in order), each reload taking `reload_takes`: the schedule the agent follows, without HAProxy.
/// Changes that arrive during a reload wait for it to end, as the agent applies one thing at a time.
pub fn reload_times(arrivals: &[Duration], min_interval: Duration, reload_takes: Duration) -> Vec<Duration> {
    let start = Instant::now();
    let mut coalescer = Coalescer::new(min_interval, min_interval);
    let mut reloads = Vec::new();
    // The agent is busy until this instant (a reload in progress).
    let mut busy_until = start;
    let mut run_due = |coalescer: &mut Coalescer, until: Option<Instant>, busy_until: &mut Instant| {
        while let Some(due) = coalescer.due_at() {
            let at = due.max(*busy_until);
            if until.is_some_and(|until| at > until) {
                return;
            }
            reloads.push(at - start);
            *busy_until = at + reload_takes;
            coalescer.reloaded(*busy_until);
        }
    };
    for offset in arrivals {
        let arrives = start + *offset;
        run_due(&mut coalescer, Some(arrives), &mut busy_until);
        coalescer.config_changed(1, arrives.max(busy_until));
        // The first change after a quiet period goes in at once.
        if coalescer.is_due(arrives.max(busy_until)) {
            run_due(&mut coalescer, Some(arrives.max(busy_until)), &mut busy_until);
        }
    }
    run_due(&mut coalescer, None, &mut busy_until);
    reloads
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_change_after_quiet_reloads_at_once_later_ones_wait() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(2 * SECOND, 10 * SECOND);
        assert_eq!(c.due_at(), None);
        c.config_changed(5, t0);
        assert_eq!(c.due_at(), Some(t0));
        assert_eq!(c.live_version(5), 4);
        let done = t0 + SECOND / 10;
        let covered = c.reloaded(done).unwrap();
        assert_eq!((covered.first_version, covered.changes), (Some(5), 1));
        assert_eq!(c.live_version(5), 5);

        // Two more within the interval: one reload, min_interval after the previous one.
        c.config_changed(6, done + SECOND / 2);
        c.config_changed(7, done + SECOND);
        assert!(!c.is_due(done + SECOND));
        assert_eq!(c.due_at(), Some(done + 2 * SECOND));
        assert_eq!(c.live_version(7), 5);
        let covered = c.reloaded(done + 2 * SECOND).unwrap();
        assert_eq!((covered.first_version, covered.changes), (Some(6), 2));

        // A change long after the last reload goes in at once.
        let later = done + 60 * SECOND;
        c.config_changed(8, later);
        assert_eq!(c.due_at(), Some(later));
    }

    #[test]
    fn a_failed_reload_keeps_the_changes_and_waits_to_retry() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(SECOND, 10 * SECOND);
        c.config_changed(3, t0);
        c.failed(t0);
        assert_eq!(c.due_at(), Some(t0 + 10 * SECOND));
        assert_eq!(c.live_version(4), 2);
        c.config_changed(4, t0 + SECOND);
        assert_eq!(c.pending().unwrap().changes, 2);
        assert_eq!(c.reloaded(t0 + 10 * SECOND).unwrap().first_version, Some(3));
        assert_eq!(c.due_at(), None);
    }

    #[test]
    fn forced_reloads_hold_no_version_back_and_undone_changes_settle() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(SECOND, SECOND);
        c.force("config file drifted".into(), t0);
        assert_eq!(c.live_version(9), 9);
        assert!(c.is_due(t0));
        c.config_changed(10, t0);
        assert_eq!(c.live_version(10), 9);
        assert_eq!(c.pending().unwrap().forced.as_deref(), Some("config file drifted"));
        c.settled();
        assert_eq!((c.due_at(), c.live_version(10)), (Some(t0), 10));
        c.reloaded(t0);
        c.config_changed(11, t0);
        c.settled();
        assert_eq!((c.due_at(), c.live_version(11)), (None, 11));
    }

    #[test]
    fn a_burst_of_changes_costs_a_few_reloads() {
        // 100 changes 20 ms apart (2 s in all), a reload of 100 ms, at most one reload a second.
        let arrivals: Vec<Duration> = (0..100).map(|i| Duration::from_millis(20 * i)).collect();
        let reloads = reload_times(&arrivals, SECOND, Duration::from_millis(100));
        assert_eq!(reloads, [Duration::ZERO, Duration::from_millis(1100), Duration::from_millis(2200)], "{reloads:?}");
        // Without a rate limit, each change arriving after the previous reload ended reloads again.
        let unlimited = reload_times(&arrivals, Duration::ZERO, Duration::from_millis(100));
        assert!(unlimited.len() > 10, "{unlimited:?}");
        // Changes far apart each reload at once.
        let apart = reload_times(&[Duration::ZERO, 5 * SECOND], SECOND, Duration::from_millis(100));
        assert_eq!(apart, [Duration::ZERO, 5 * SECOND]);
    }
}
