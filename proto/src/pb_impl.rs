//! Conversions into the generated messages whose only field is a oneof, so callers write
//! `kind.into()` rather than spelling out the wrapper and its `Some`

use crate::pb;

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
}
