//! Reload discipline: which config changes wait for a reload and when it runs (`schedule`),
//! and the words that say why a reload happened (`reason`).
//!
//! `Applier` drives it (`reload_due`, `reload_if_due`, `live_version`); `reload_times` runs the
//! same schedule without HAProxy, e.g. to count the reloads a burst of changes costs.

mod reason;
mod schedule;

pub use reason::describe;
pub use reason::topology_changes;
pub use reason::REASON_LIMIT;
pub use schedule::reload_times;
pub use schedule::Coalescer;
pub use schedule::PendingReload;
