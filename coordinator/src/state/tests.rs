//! Unit tests of `State::apply`, without Raft.

use lbfleet_proto::FqdnError;

use super::*;

fn fqdn(s: &str) -> Fqdn {
    Fqdn::parse(s).expect("valid test FQDN")
}

/// A cluster `c1` with host `h1`, shards `web-1`/`web-2` and a cluster `c2` with shard `other`.
fn topology() -> State {
    let mut state = State::default();
    let commands = [
        Command::CreateCluster { name: "c1".into(), haproxy_container: None },
        Command::CreateCluster { name: "c2".into(), haproxy_container: Some("lb-2".into()) },
        Command::AddHost { id: "h1".into(), cluster: "c1".into(), address: "10.0.0.1".into(), haproxy_container: None },
        Command::CreateShard { name: "web-1".into(), cluster: "c1".into() },
        Command::CreateShard { name: "web-2".into(), cluster: "c1".into() },
        Command::CreateShard { name: "other".into(), cluster: "c2".into() },
    ];
    for cmd in &commands {
        state.apply(cmd).expect("topology applies");
    }
    state
}

#[test]
fn cluster_defaults_and_duplicates() {
    let state = topology();
    assert_eq!(state.clusters["c1"].config.haproxy_container, DEFAULT_HAPROXY_CONTAINER);
    assert_eq!(state.clusters["c2"].config.haproxy_container, "lb-2");
    assert_eq!(state.clusters["c1"].config.map_path, DEFAULT_MAP_PATH);
    let mut state = state;
    let err = state.apply(&Command::CreateCluster { name: "c1".into(), haproxy_container: None }).unwrap_err();
    assert_eq!(err, StateError::AlreadyExists { kind: ObjectKind::Cluster, name: "c1".into() });
}

#[test]
fn shard_backend_is_set_at_creation() {
    let state = topology();
    assert_eq!(state.shards["web-1"].lb_backend, "shard-web-1");
}

#[test]
fn host_container_override() {
    let mut state = topology();
    let add = Command::AddHost {
        id: "h2".into(),
        cluster: "c1".into(),
        address: "10.0.0.2".into(),
        haproxy_container: Some("lb-h2".into()),
    };
    state.apply(&add).unwrap();
    assert_eq!(state.haproxy_container_of(&state.hosts["h2"]), "lb-h2");
    assert_eq!(state.haproxy_container_of(&state.hosts["h1"]), DEFAULT_HAPROXY_CONTAINER);
}

#[test]
fn unknown_cluster_for_host_and_shard() {
    let mut state = topology();
    let err = state.apply(&Command::CreateShard { name: "s".into(), cluster: "nope".into() }).unwrap_err();
    assert_eq!(err, StateError::NotFound { kind: ObjectKind::Cluster, name: "nope".into() });
}

#[test]
fn nodes_add_and_remove() {
    let mut state = topology();
    let add = Command::AddNode {
        name: "web-1-node-0".into(),
        shard: "web-1".into(),
        host: "h1".into(),
        address: "node-0:80".into(),
        container: Some("node-0".into()),
    };
    assert_eq!(state.apply(&add).unwrap(), Response::NodeAdded { name: "web-1-node-0".into(), shard: "web-1".into() });
    assert!(matches!(state.apply(&add), Err(StateError::AlreadyExists { kind: ObjectKind::Node, .. })));
    state.apply(&Command::RemoveNode { name: "web-1-node-0".into() }).unwrap();
    assert!(state.nodes.is_empty());
    let err = state.apply(&Command::RemoveNode { name: "web-1-node-0".into() }).unwrap_err();
    assert_eq!(err, StateError::NotFound { kind: ObjectKind::Node, name: "web-1-node-0".into() });
}

#[test]
fn node_refuses_bad_address_and_foreign_host() {
    let mut state = topology();
    let bad = Command::AddNode {
        name: "n".into(),
        shard: "web-1".into(),
        host: "h1".into(),
        address: "node-0:80\n    server evil 1.2.3.4:80".into(),
        container: None,
    };
    assert!(matches!(state.apply(&bad), Err(StateError::Invalid { .. })));
    let foreign = Command::AddNode {
        name: "n".into(),
        shard: "other".into(),
        host: "h1".into(),
        address: "node-0:80".into(),
        container: None,
    };
    assert!(matches!(state.apply(&foreign), Err(StateError::WrongCluster { .. })));
    assert!(state.nodes.is_empty());
}

#[test]
fn bind_then_move_says_so() {
    let mut state = topology();
    let bind = |shard: &str| Command::Bind { fqdn: fqdn("example.com"), shard: shard.into(), cluster: None };
    let first = state.apply(&bind("web-1")).unwrap();
    assert_eq!(
        first,
        Response::Bound { cluster: "c1".into(), fqdn: fqdn("example.com"), shard: "web-1".into(), previous: None }
    );
    let moved = state.apply(&bind("web-2")).unwrap();
    assert_eq!(moved.to_string(), "moved example.com from shard web-1 to shard web-2");
    assert_eq!(state.clusters["c1"].bindings[&fqdn("example.com")], "web-2");
    let again = state.apply(&bind("web-2")).unwrap();
    assert_eq!(again.to_string(), "example.com was already bound to shard web-2");
}

#[test]
fn bind_to_unknown_shard_or_wrong_cluster() {
    let mut state = topology();
    let before = state.clone();
    let err = state.apply(&Command::Bind { fqdn: fqdn("a.com"), shard: "nope".into(), cluster: None }).unwrap_err();
    assert_eq!(err, StateError::NotFound { kind: ObjectKind::Shard, name: "nope".into() });
    let err = state
        .apply(&Command::Bind { fqdn: fqdn("a.com"), shard: "other".into(), cluster: Some("c1".into()) })
        .unwrap_err();
    assert!(matches!(err, StateError::WrongCluster { .. }));
    let err = state
        .apply(&Command::Bind { fqdn: fqdn("a.com"), shard: "web-1".into(), cluster: Some("zzz".into()) })
        .unwrap_err();
    assert_eq!(err, StateError::NotFound { kind: ObjectKind::Cluster, name: "zzz".into() });
    assert_eq!(state, before);
}

#[test]
fn unbind_unknown_is_not_found() {
    let mut state = topology();
    let err = state.apply(&Command::Unbind { fqdn: fqdn("missing.com"), cluster: None }).unwrap_err();
    assert_eq!(err, StateError::NotFound { kind: ObjectKind::Binding, name: "missing.com".into() });
    assert_eq!(err.to_string(), "binding \"missing.com\" not found");
}

#[test]
fn unbind_finds_the_cluster_or_asks() {
    let mut state = topology();
    state.apply(&Command::Bind { fqdn: fqdn("a.com"), shard: "web-1".into(), cluster: None }).unwrap();
    state.apply(&Command::Bind { fqdn: fqdn("a.com"), shard: "other".into(), cluster: None }).unwrap();
    let err = state.apply(&Command::Unbind { fqdn: fqdn("a.com"), cluster: None }).unwrap_err();
    assert!(matches!(err, StateError::Ambiguous { .. }));
    let done = state.apply(&Command::Unbind { fqdn: fqdn("a.com"), cluster: Some("c2".into()) }).unwrap();
    assert_eq!(done, Response::Unbound { cluster: "c2".into(), fqdn: fqdn("a.com"), shard: "other".into() });
    state.apply(&Command::Unbind { fqdn: fqdn("a.com"), cluster: None }).unwrap();
    assert!(state.clusters["c1"].bindings.is_empty());
}

#[test]
fn batch_counts_and_skips() {
    let mut state = topology();
    state.apply(&Command::Bind { fqdn: fqdn("moved.com"), shard: "web-1".into(), cluster: None }).unwrap();
    state.apply(&Command::Bind { fqdn: fqdn("same.com"), shard: "web-2".into(), cluster: None }).unwrap();
    let entries = vec![
        (fqdn("new.com"), "web-1".to_string()),
        (fqdn("moved.com"), "web-2".to_string()),
        (fqdn("same.com"), "web-2".to_string()),
        (fqdn("lost.com"), "nope".to_string()),
        (fqdn("foreign.com"), "other".to_string()),
    ];
    let Response::Batch(summary) = state.apply(&Command::BindBatch { cluster: "c1".into(), entries }).unwrap() else {
        panic!("batch answers with a summary");
    };
    assert_eq!((summary.added, summary.moved, summary.unchanged), (1, 1, 1));
    assert_eq!(summary.skipped.len(), 2);
    assert_eq!(summary.skipped[0].0, "lost.com");
    assert!(summary.skipped[0].1.contains("not found"));
    assert!(summary.skipped[1].1.contains("belongs to cluster"));
    assert_eq!(state.clusters["c1"].bindings.len(), 3);
}

#[test]
fn batch_into_unknown_cluster_is_refused() {
    let mut state = topology();
    let err = state.apply(&Command::BindBatch { cluster: "nope".into(), entries: vec![] }).unwrap_err();
    assert_eq!(err, StateError::NotFound { kind: ObjectKind::Cluster, name: "nope".into() });
}

#[test]
fn invalid_names_never_enter_the_state() {
    let mut state = topology();
    let before = state.clone();
    for name in ["", "UPPER", "has space", "new\nline", "-dash", "a/b"] {
        assert!(state.apply(&Command::CreateShard { name: name.into(), cluster: "c1".into() }).is_err());
        assert!(state.apply(&Command::CreateCluster { name: name.into(), haproxy_container: None }).is_err());
    }
    assert_eq!(state, before);
}

#[test]
fn group_applies_each_command_on_its_own() {
    let mut state = topology();
    let group = Command::Group(vec![
        Command::Bind { fqdn: fqdn("a.com"), shard: "web-1".into(), cluster: None },
        Command::Bind { fqdn: fqdn("b.com"), shard: "nope".into(), cluster: None },
        Command::Unbind { fqdn: fqdn("a.com"), cluster: None },
        Command::Bind { fqdn: fqdn("c.com"), shard: "web-2".into(), cluster: None },
    ]);
    let Response::Group(results) = state.apply(&group).unwrap() else { panic!("a group answers per command") };
    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok() && results[2].is_ok() && results[3].is_ok());
    assert_eq!(results[1], Err(StateError::NotFound { kind: ObjectKind::Shard, name: "nope".into() }));
    let bound: Vec<&str> = state.clusters["c1"].bindings.keys().map(|f| f.as_str()).collect();
    assert_eq!(bound, ["c.com"]);
}

#[test]
fn fqdn_errors_are_passed_on_as_they_read() {
    let source = Fqdn::parse("bad host.com").unwrap_err();
    let error = StateError::from(source.clone());
    assert_eq!(error.to_string(), source.to_string());
    assert!(matches!(error, StateError::Fqdn { source: FqdnError::Whitespace { .. } }), "{error}");
}

fn add_node(name: &str, shard: &str) -> Command {
    Command::AddNode {
        name: name.into(),
        shard: shard.into(),
        host: "h1".into(),
        address: format!("{name}:80"),
        container: None,
    }
}

#[test]
fn shard_delete_is_refused_while_used_and_moves_with_move_to() {
    let mut state = topology();
    for name in ["a.com", "b.com"] {
        state.apply(&Command::Bind { fqdn: fqdn(name), shard: "web-1".into(), cluster: None }).unwrap();
    }
    state.apply(&Command::Bind { fqdn: fqdn("c.com"), shard: "web-2".into(), cluster: None }).unwrap();
    state.apply(&add_node("n1", "web-1")).unwrap();
    let before = state.clone();
    let delete =
        |move_to: Option<&str>| Command::DeleteShard { name: "web-1".into(), move_to: move_to.map(Into::into) };

    let err = state.apply(&delete(Some("web-2"))).unwrap_err();
    assert_eq!(err.to_string(), "shard \"web-1\" is in use: it has nodes n1; remove them first");
    state.apply(&Command::RemoveNode { name: "n1".into() }).unwrap();
    let err = state.apply(&delete(None)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "shard \"web-1\" is in use: 2 FQDNs are bound to it (a.com, b.com); move them with --move-to SHARD"
    );
    assert!(matches!(state.apply(&delete(Some("web-1"))), Err(StateError::Invalid { .. })));
    assert!(matches!(state.apply(&delete(Some("other"))), Err(StateError::WrongCluster { .. })));
    assert!(matches!(state.apply(&delete(Some("nope"))), Err(StateError::NotFound { .. })));
    assert_eq!(state.shards, before.shards, "a refused delete changed the shards");

    let moved = state.apply(&delete(Some("web-2"))).unwrap();
    assert_eq!(
        moved,
        Response::ShardDeleted {
            name: "web-1".into(),
            cluster: "c1".into(),
            moved: vec![fqdn("a.com"), fqdn("b.com")],
            moved_to: Some("web-2".into()),
        }
    );
    assert!(!state.shards.contains_key("web-1"));
    let bindings = &state.clusters["c1"].bindings;
    assert!(bindings.values().all(|shard| shard == "web-2"), "{bindings:?}");
    assert_eq!(bindings.len(), 3);
}

#[test]
fn host_and_cluster_removal_wait_for_what_depends_on_them() {
    let mut state = topology();
    state.apply(&add_node("n1", "web-1")).unwrap();
    let err = state.apply(&Command::RemoveHost { id: "h1".into() }).unwrap_err();
    assert!(matches!(err, StateError::InUse { kind: ObjectKind::Host, .. }), "{err}");
    let err = state.apply(&Command::DeleteCluster { name: "c1".into() }).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cluster \"c1\" is in use: it still has hosts h1, shards web-1, web-2; remove them first"
    );
    state.apply(&Command::RemoveNode { name: "n1".into() }).unwrap();
    assert_eq!(
        state.apply(&Command::RemoveHost { id: "h1".into() }).unwrap(),
        Response::HostRemoved { id: "h1".into(), cluster: "c1".into() }
    );
    for shard in ["web-1", "web-2"] {
        state.apply(&Command::DeleteShard { name: shard.into(), move_to: None }).unwrap();
    }
    state.apply(&Command::DeleteCluster { name: "c1".into() }).unwrap();
    assert!(!state.clusters.contains_key("c1"));
    let err = state.apply(&Command::DeleteCluster { name: "c1".into() }).unwrap_err();
    assert_eq!(err, StateError::NotFound { kind: ObjectKind::Cluster, name: "c1".into() });
}

#[test]
fn containers_and_addresses_can_be_changed() {
    let mut state = topology();
    state.apply(&add_node("n1", "web-1")).unwrap();
    state.apply(&Command::SetCluster { name: "c1".into(), haproxy_container: "lb-new".into() }).unwrap();
    assert_eq!(state.haproxy_container_of(&state.hosts["h1"]), "lb-new");
    state.apply(&Command::SetHost { id: "h1".into(), haproxy_container: Some("own".into()) }).unwrap();
    assert_eq!(state.haproxy_container_of(&state.hosts["h1"]), "own");
    state.apply(&Command::SetHost { id: "h1".into(), haproxy_container: None }).unwrap();
    assert_eq!(state.haproxy_container_of(&state.hosts["h1"]), "lb-new");
    state.apply(&Command::SetNode { name: "n1".into(), address: "10.0.0.9:8080".into() }).unwrap();
    assert_eq!(state.nodes["n1"].address, "10.0.0.9:8080");

    let before = state.clone();
    let bad = [
        Command::SetCluster { name: "c1".into(), haproxy_container: "bad name".into() },
        Command::SetHost { id: "h1".into(), haproxy_container: Some("x;y".into()) },
        Command::SetNode { name: "n1".into(), address: "a:80\n  server evil 1.2.3.4:80".into() },
        Command::SetNode { name: "nope".into(), address: "a:80".into() },
    ];
    for command in &bad {
        assert!(state.apply(command).is_err(), "{command:?} applied");
    }
    assert_eq!(state, before);
}

#[test]
fn conditional_commands_apply_only_to_the_version_they_were_computed_from() {
    let mut state = topology();
    let bind = |name: &str| Box::new(Command::Bind { fqdn: fqdn(name), shard: "web-1".into(), cluster: None });
    let at_7 = |command| Command::Conditional { if_version: 7, command };
    assert!(state.apply_at(&at_7(bind("a.com")), 7).is_ok());
    let before = state.clone();
    let stale = state.apply_at(&at_7(bind("b.com")), 8).unwrap_err();
    // The refused command takes its own entry: the state is then at version 9.
    assert_eq!(stale, StateError::Stale { if_version: 7, current: 9 });
    assert_eq!(stale.to_string(), "the state is at version 9, not 7 as --if-version said: read it again and retry");
    // A version the state has not reached is no more valid.
    assert!(matches!(state.apply_at(&at_7(bind("c.com")), 6), Err(StateError::Stale { current: 7, .. })));
    assert_eq!(state, before, "a refused write changed the state");
}

fn server_ids(state: &State) -> Vec<(&str, u32)> {
    state.nodes.values().map(|n| (n.name.as_str(), n.server_id)).collect()
}

#[test]
fn server_ids_count_up_per_shard_and_never_change() {
    let mut state = topology();
    for name in ["a1", "a2", "a3"] {
        state.apply(&add_node(name, "web-1")).unwrap();
    }
    state.apply(&add_node("b1", "web-2")).unwrap();
    assert_eq!(server_ids(&state), [("a1", 1), ("a2", 2), ("a3", 3), ("b1", 1)]);

    // A removal in the middle leaves a gap the others keep their ids around.
    state.apply(&Command::RemoveNode { name: "a2".into() }).unwrap();
    state.apply(&add_node("a4", "web-1")).unwrap();
    assert_eq!(server_ids(&state), [("a1", 1), ("a3", 3), ("a4", 4), ("b1", 1)]);
    // Edits keep the id.
    state.apply(&Command::SetNode { name: "a3".into(), address: "10.0.0.3:80".into() }).unwrap();
    state.apply(&Command::SetNodeState { name: "a3".into(), state: AdminState::Maint }).unwrap();
    assert_eq!(state.nodes["a3"].server_id, 3);
    // Only the shard's current nodes count: the highest gone, the next takes one above what is left.
    state.apply(&Command::RemoveNode { name: "a4".into() }).unwrap();
    state.apply(&add_node("a5", "web-1")).unwrap();
    assert_eq!(state.nodes["a5"].server_id, 4);
    for name in ["a1", "a3", "a5"] {
        state.apply(&Command::RemoveNode { name: name.into() }).unwrap();
    }
    state.apply(&add_node("a6", "web-1")).unwrap();
    assert_eq!(state.nodes["a6"].server_id, 1, "an empty shard starts at 1");
    assert_eq!(state.nodes["a6"].admin, AdminState::Ready);
}

#[test]
fn node_admin_state_is_set_and_reported() {
    let mut state = topology();
    state.apply(&add_node("n1", "web-1")).unwrap();
    let set = |state: AdminState| Command::SetNodeState { name: "n1".into(), state };
    let drained = state.apply(&set(AdminState::Drain)).unwrap();
    assert_eq!(
        drained,
        Response::NodeStateSet {
            name: "n1".into(),
            shard: "web-1".into(),
            state: AdminState::Drain,
            previous: AdminState::Ready
        }
    );
    assert_eq!(drained.to_string(), "set node n1 to drain (was ready)");
    assert_eq!(state.nodes["n1"].admin, AdminState::Drain);
    assert_eq!(state.apply(&set(AdminState::Drain)).unwrap().to_string(), "node n1 was already drain");
    state.apply(&set(AdminState::Maint)).unwrap();
    assert_eq!(state.nodes["n1"].admin, AdminState::Maint);
    state.apply(&set(AdminState::Ready)).unwrap();
    assert_eq!(state.nodes["n1"].admin, AdminState::Ready);
}

#[test]
fn node_admin_state_of_an_unknown_node_is_refused() {
    let mut state = topology();
    state.apply(&add_node("n1", "web-1")).unwrap();
    let before = state.clone();
    let err = state.apply(&Command::SetNodeState { name: "n9".into(), state: AdminState::Drain }).unwrap_err();
    assert_eq!(err, StateError::NotFound { kind: ObjectKind::Node, name: "n9".into() });
    assert_eq!(err.to_string(), "node \"n9\" not found");
    assert_eq!(state, before);
}

#[test]
fn server_ids_and_admin_states_survive_the_state_encoding() {
    let mut state = topology();
    state.apply(&add_node("n1", "web-1")).unwrap();
    state.apply(&add_node("n2", "web-1")).unwrap();
    state.apply(&Command::SetNodeState { name: "n2".into(), state: AdminState::Maint }).unwrap();
    // Snapshots and log entries are postcard; the Raft state machine restores from exactly this.
    let bytes = crate::raft::codec::encode(&state).unwrap();
    let restored: State = crate::raft::codec::decode(&bytes).unwrap();
    assert_eq!(restored, state);
    assert_eq!((restored.nodes["n2"].server_id, restored.nodes["n2"].admin), (2, AdminState::Maint));
    let command = Command::SetNodeState { name: "n1".into(), state: AdminState::Drain };
    let decoded: Command = crate::raft::codec::decode(&crate::raft::codec::encode(&command).unwrap()).unwrap();
    assert_eq!(decoded, command);
}
