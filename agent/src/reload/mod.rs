//! Reload discipline: which config changes wait for a reload and when it runs (`schedule`),
//! and the words that say why a reload happened (`reason`).

mod reason;
mod schedule;

pub use reason::describe;
pub use reason::topology_changes;
pub use reason::REASON_LIMIT;
pub use schedule::reload_times;
pub use schedule::Coalescer;
pub use schedule::PendingReload;
