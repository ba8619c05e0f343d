//! What watches the agent work: its metrics, its probes and its readiness, shared by the
//! applier, the session and the operator listener.

use std::sync::Arc;

use crate::config::AgentConfig;
use crate::metrics::AgentMetrics;
use crate::probe::Prober;
use crate::ready::ReadyState;

/// Cheap to clone; every clone reports to the same metrics, probes and readiness.
#[derive(Clone)]
pub struct Observers {
    pub metrics: Arc<AgentMetrics>,
    pub prober: Prober,
    pub ready: ReadyState,
}

impl Observers {
    pub fn new(config: &AgentConfig) -> Observers {
        let metrics = Arc::new(AgentMetrics::new());
        Observers {
            prober: Prober::new(config.probe_address.clone(), metrics.clone()),
            ready: ReadyState::new(config.reload_min_interval),
            metrics,
        }
    }
}
