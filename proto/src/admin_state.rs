//! A node's administrative state: one type for the replicated state, the agents and the CLI.

use serde::Deserialize;
use serde::Serialize;

use crate::pb;

/// What HAProxy should do with a node's server, applied by the agents through the runtime API
/// (`set server <backend>/<server> state <word>`), never by a reload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AdminState {
    /// Takes new requests.
    #[default]
    Ready,
    /// Finishes the requests it has and takes no new ones.
    Drain,
    /// Out of service: no requests, no health checks.
    Maint,
}

impl AdminState {
    /// The word HAProxy's runtime API, the agents' reports and the CLI use for it.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

impl std::fmt::Display for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<AdminState> for pb::AdminState {
    fn from(state: AdminState) -> pb::AdminState {
        match state {
            AdminState::Ready => pb::AdminState::AdminReady,
            AdminState::Drain => pb::AdminState::AdminDrain,
            AdminState::Maint => pb::AdminState::AdminMaint,
        }
    }
}

impl From<pb::AdminState> for AdminState {
    fn from(state: pb::AdminState) -> AdminState {
        match state {
            pb::AdminState::AdminReady => AdminState::Ready,
            pb::AdminState::AdminDrain => AdminState::Drain,
            pb::AdminState::AdminMaint => AdminState::Maint,
        }
    }
}

/// The word for a wire admin state; "unknown" for a value this build does not know.
pub fn admin_word(state: i32) -> &'static str {
    pb::AdminState::try_from(state).map(|state| AdminState::from(state).as_str()).unwrap_or("unknown")
}

/// Admin states in JSON as their words, not as the enum's numbers.
pub(crate) fn serialize_admin<S: serde::Serializer>(state: &i32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(admin_word(*state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_states_read_as_words_in_json() {
        let spec = pb::ServerSpec { admin: pb::AdminState::AdminDrain.into(), ..Default::default() };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["admin"], "drain");
        assert_eq!(admin_word(pb::AdminState::AdminMaint.into()), "maint");
        assert_eq!(admin_word(7), "unknown");
    }

    #[test]
    fn wire_and_domain_states_map_one_to_one() {
        for state in [AdminState::Ready, AdminState::Drain, AdminState::Maint] {
            assert_eq!(AdminState::from(pb::AdminState::from(state)), state);
        }
    }
}
