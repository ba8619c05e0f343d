//! Conversions into the generated messages whose only field is a oneof, so callers write
//! `kind.into()` rather than spelling out the wrapper and its `Some`; and how admin states read.

use crate::pb;

/// The word for a wire admin state, as HAProxy and the agents spell it; "unknown" for a value
/// this build does not know.
pub fn admin_word(state: i32) -> &'static str {
    match pb::AdminState::try_from(state) {
        Ok(pb::AdminState::AdminReady) => "ready",
        Ok(pb::AdminState::AdminDrain) => "drain",
        Ok(pb::AdminState::AdminMaint) => "maint",
        Err(_) => "unknown",
    }
}

/// Admin states in JSON as their words, not as the enum's numbers.
pub(crate) fn serialize_admin<S: serde::Serializer>(state: &i32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(admin_word(*state))
}

impl From<pb::command::Kind> for pb::Command {
    fn from(kind: pb::command::Kind) -> pb::Command {
        pb::Command { kind: Some(kind) }
    }
}

impl From<pb::agent_message::Kind> for pb::AgentMessage {
    fn from(kind: pb::agent_message::Kind) -> pb::AgentMessage {
        pb::AgentMessage { kind: Some(kind) }
    }
}

impl From<pb::coordinator_message::Kind> for pb::CoordinatorMessage {
    fn from(kind: pb::coordinator_message::Kind) -> pb::CoordinatorMessage {
        pb::CoordinatorMessage { kind: Some(kind) }
    }
}

impl From<pb::change_membership_request::Change> for pb::ChangeMembershipRequest {
    fn from(change: pb::change_membership_request::Change) -> pb::ChangeMembershipRequest {
        pb::ChangeMembershipRequest { change: Some(change) }
    }
}

#[cfg(test)]
mod tests {
    use crate::pb;

    #[test]
    fn wrappers_hold_what_they_were_made_from() {
        let unbind = pb::command::Kind::Unbind(pb::Unbind { fqdn: "a.com".into(), cluster: String::new() });
        assert_eq!(pb::Command::from(unbind.clone()).kind, Some(unbind));
        let ack = pb::agent_message::Kind::Ack(pb::Ack { version: 3 });
        assert_eq!(pb::AgentMessage::from(ack.clone()).kind, Some(ack));
        let heartbeat = pb::coordinator_message::Kind::Heartbeat(pb::Heartbeat {});
        assert_eq!(pb::CoordinatorMessage::from(heartbeat.clone()).kind, Some(heartbeat));
        let remove = pb::change_membership_request::Change::Remove(2);
        assert_eq!(pb::ChangeMembershipRequest::from(remove.clone()).change, Some(remove));
    }

    #[test]
    fn admin_states_read_as_words_in_json() {
        let spec = pb::ServerSpec { admin: pb::AdminState::AdminDrain.into(), ..Default::default() };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["admin"], "drain");
        assert_eq!(super::admin_word(pb::AdminState::AdminMaint.into()), "maint");
        assert_eq!(super::admin_word(7), "unknown");
    }
}
