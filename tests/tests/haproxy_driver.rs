//! The agent's HAProxy and Docker drivers against real `lbfleet/haproxy:dev` and `lbfleet/node:dev`
//! containers. Without Docker these fail when `CI` is set and otherwise do nothing.
//! Timings are printed (`--nocapture`), not asserted; `agent_bench` measures them properly.

use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use futures::StreamExt;
use lbfleet_agent::desired::AdminState;
use lbfleet_agent::desired::Backend;
use lbfleet_agent::desired::MapEntries;
use lbfleet_agent::desired::Server;
use lbfleet_agent::desired::Topology;
use lbfleet_agent::docker::ContainerEventKind;
use lbfleet_agent::docker::DockerError;
use lbfleet_agent::docker::DockerHost;
use lbfleet_agent::haproxy::AdminChange;
use lbfleet_agent::haproxy::Haproxy;
use lbfleet_agent::haproxy::HaproxyError;
use lbfleet_agent::haproxy::ReloadMode;
use lbfleet_agent::haproxy::RuntimeChange;
use lbfleet_agent::haproxy::RuntimeMode;
use lbfleet_agent::haproxy::SERVER_STATE_PATH_IN_CONTAINER;
use lbfleet_proto::names::lb_backend;
use lbfleet_tests::docker_lab::docker;
use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::http_get;
use lbfleet_tests::docker_lab::Lab;
use lbfleet_tests::docker_lab::Mounts;
use lbfleet_tests::docker_lab::MAP_PATH;
use lbfleet_tests::docker_lab::READY;
use lbfleet_tests::measure::per_second;
use lbfleet_tests::measure::percentiles;
use lbfleet_tests::poll::wait_for;

fn add(fqdn: &str, backend: &str) -> RuntimeChange {
    RuntimeChange::Add { fqdn: fqdn.into(), backend: backend.into() }
}

fn set(fqdn: &str, backend: &str) -> RuntimeChange {
    RuntimeChange::Set { fqdn: fqdn.into(), backend: backend.into() }
}

fn del(fqdn: &str) -> RuntimeChange {
    RuntimeChange::Del { fqdn: fqdn.into() }
}

fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn sorted_map(haproxy: &Haproxy) -> Vec<(String, String)> {
    let mut shown = haproxy.show_map().await.expect("show map");
    shown.sort();
    shown
}

fn big_map(n: usize) -> MapEntries {
    (0..n).map(|i| (format!("site-{i:07}.example.com"), lb_backend(&format!("web-{}", i % 7)))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_add_set_del_with_missing_keys_and_duplicates() {
    if !docker_available() {
        return;
    }
    let mut lab = Lab::new("runtime").expect("lab");
    let lb = lab.start_haproxy("lb", Mounts::ALL).expect("haproxy");
    let haproxy = lb.driver(RuntimeMode::Auto, ReloadMode::Hitless).await.expect("HAProxy answers");
    assert_eq!(haproxy.runtime_path(), RuntimeMode::Socket);

    let report = haproxy
        .apply_runtime(&[
            add("a.example.com", "shard-web-1"),
            add("b.example.com", "shard-web-1"),
            // Fact 1: `set map` on a new key answers "entry not found."; the driver adds it.
            set("c.example.com", "shard-web-2"),
            set("a.example.com", "shard-web-2"),
            del("b.example.com"),
            del("never-there.example.com"),
        ])
        .await
        .expect("applied");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!((report.added, report.set, report.deleted), (3, 1, 1));
    assert_eq!((report.set_missing, report.already_absent), (1, 1));
    assert_eq!(
        sorted_map(&haproxy).await,
        entries(&[("a.example.com", "shard-web-2"), ("c.example.com", "shard-web-2")])
    );

    // A key added twice is held twice: show_map must let reconcile see that.
    haproxy.apply_runtime(&[add("a.example.com", "shard-web-3")]).await.expect("duplicate add");
    assert_eq!(
        sorted_map(&haproxy).await,
        entries(&[
            ("a.example.com", "shard-web-2"),
            ("a.example.com", "shard-web-3"),
            ("c.example.com", "shard-web-2")
        ])
    );

    // Nothing of a batch with an unsafe word reaches HAProxy.
    let evil = format!("x.example.com shard-web-1\nclear map {MAP_PATH}");
    let err = haproxy.apply_runtime(&[add("ok.example.com", "shard-web-1"), add(&evil, "shard-web-1")]).await;
    assert!(matches!(err, Err(HaproxyError::UnsafeWord { .. })), "{err:?}");
    let err = haproxy.apply_runtime(&[add("y.example.com", "shard-web-1;del")]).await;
    assert!(matches!(err, Err(HaproxyError::UnsafeWord { .. })), "{err:?}");
    assert_eq!(haproxy.show_map().await.expect("show map").len(), 3);

    // One change per session, as `bind` produces them.
    let mut samples = Vec::new();
    for i in 0..500 {
        let started = Instant::now();
        let report = haproxy.apply_runtime(&[add(&format!("one-{i}.example.com"), "shard-web-1")]).await.expect("add");
        samples.push(started.elapsed());
        assert_eq!(report.added, 1);
    }
    let (p50, p99) = percentiles(&mut samples);
    println!("socket: one change per session: p50 {p50:?}, p99 {p99:?}");

    // Many changes pipelined in one session.
    let changes: Vec<_> = (0..50_000).map(|i| add(&format!("bulk-{i}.example.com"), "shard-web-2")).collect();
    let started = Instant::now();
    let report = haproxy.apply_runtime(&changes).await.expect("bulk add");
    let elapsed = started.elapsed();
    assert_eq!(report.added, 50_000);
    println!("socket: 50,000 add map pipelined in {elapsed:?} ({:.0} ops/s)", per_second(50_000, elapsed));
    assert_eq!(haproxy.show_map().await.expect("show map").len(), 3 + 500 + 50_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_runtime_map_swaps_100k_entries() {
    if !docker_available() {
        return;
    }
    let mut lab = Lab::new("replace").expect("lab");
    let lb = lab.start_haproxy("lb", Mounts::ALL).expect("haproxy");
    let haproxy = lb.driver(RuntimeMode::Auto, ReloadMode::Hitless).await.expect("HAProxy answers");
    haproxy.apply_runtime(&[add("stale.example.com", "shard-old")]).await.expect("stale entry");

    let map = big_map(100_000);
    let started = Instant::now();
    haproxy.write_map_file(&map).await.expect("map file");
    let file_elapsed = started.elapsed();
    let started = Instant::now();
    haproxy.replace_runtime_map(&map).await.expect("replaced");
    let replace_elapsed = started.elapsed();
    let started = Instant::now();
    let shown = haproxy.show_map().await.expect("show map");
    let show_elapsed = started.elapsed();
    println!(
        "socket: 100,000 entries: map file {file_elapsed:?}, replace_runtime_map {replace_elapsed:?}, \
         show_map {show_elapsed:?}"
    );
    assert_eq!(shown.len(), map.len());
    let shown: MapEntries = shown.into_iter().collect();
    assert_eq!(shown, map, "exactly the new map, the stale entry gone");

    let file = std::fs::read_to_string(lb.map_dir.join("fqdn-to-shard.map")).expect("map file");
    assert_eq!(file.lines().count(), 100_000);
    assert!(file.starts_with("site-0000000.example.com shard-web-0\n"));

    let small = big_map(3);
    haproxy.replace_runtime_map(&small).await.expect("replaced again");
    assert_eq!(sorted_map(&haproxy).await, small.into_iter().collect::<Vec<_>>());
    haproxy.replace_runtime_map(&MapEntries::new()).await.expect("emptied");
    assert!(haproxy.show_map().await.expect("show map").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_file_survives_a_restart_and_runtime_only_entries_do_not() {
    if !docker_available() {
        return;
    }
    let mut lab = Lab::new("restart").expect("lab");
    let lb = lab.start_haproxy("lb", Mounts::ALL).expect("haproxy");
    let haproxy = lb.driver(RuntimeMode::Auto, ReloadMode::Hitless).await.expect("HAProxy answers");
    let docker = DockerHost::connect(None).await.expect("docker");

    let file_map: MapEntries = [("a.example.com", "shard-web-1"), ("b.example.com", "shard-web-2")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    haproxy.write_map_file(&file_map).await.expect("map file");
    haproxy.replace_runtime_map(&file_map).await.expect("runtime map");
    haproxy.apply_runtime(&[add("runtime-only.example.com", "shard-web-3")]).await.expect("runtime-only entry");
    assert_eq!(haproxy.show_map().await.expect("show map").len(), 3);

    let before = docker.inspect(&lb.container).await.expect("inspect");
    let mut events = Box::pin(docker.events(&lb.container));
    docker.restart(&lb.container).await.expect("restart");
    let mut seen = Vec::new();
    while !seen.contains(&"start") {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("event in time")
            .expect("event stream open")
            .expect("event");
        assert!(before.id.starts_with(&event.container_id) || event.container_id.starts_with(&before.id));
        seen.push(match event.kind {
            ContainerEventKind::Die => "die",
            ContainerEventKind::Start => "start",
            ContainerEventKind::Restart => "restart",
        });
    }
    assert_eq!(seen.first(), Some(&"die"), "{seen:?}");
    let after = docker.inspect(&lb.container).await.expect("inspect");
    assert!(after.running);
    assert_ne!(after.started_at, before.started_at);

    // Fact 2: the file is all that survives.
    let shown =
        wait_for("HAProxy after the restart", READY, || async { haproxy.show_map().await.ok() }).await.expect("up");
    let mut shown = shown;
    shown.sort();
    assert_eq!(shown, file_map.into_iter().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_config_routes_to_a_node_and_refuses_an_invalid_config() {
    if !docker_available() {
        return;
    }
    let mut lab = Lab::new("config").expect("lab");
    let node = lab.start_node("web-1-node-0", "web-1").expect("node");
    let lb = lab.start_haproxy("lb", Mounts::ALL).expect("haproxy");
    let haproxy = lb.driver(RuntimeMode::Auto, ReloadMode::Hitless).await.expect("HAProxy answers");

    let backend = |servers: Vec<Server>| Backend { name: "shard-web-1".into(), servers };
    let server = |address: String| Server { name: "web-1-node-0".into(), address, id: 1, admin: AdminState::Ready };
    let topology = Topology { map_path: MAP_PATH.into(), backends: vec![backend(vec![server(format!("{node}:80"))])] };
    let map: MapEntries = [("site.example.com".to_owned(), "shard-web-1".to_owned())].into();
    haproxy.write_map_file(&map).await.expect("map file");

    let started = Instant::now();
    assert!(haproxy.apply_config(&topology).await.expect("config applied"), "the default config differs");
    println!("apply_config (render, haproxy -c, rename, master reload, ready): {:?}", started.elapsed());
    let config = std::fs::read_to_string(lb.config_dir.join("haproxy.cfg")).expect("config");
    assert!(config.contains("backend shard-web-1"));
    assert!(!lb.config_dir.join("haproxy.cfg.candidate").exists());

    // The reload loaded the map file.
    assert_eq!(haproxy.show_map().await.expect("show map"), entries(&[("site.example.com", "shard-web-1")]));
    for host in ["site.example.com", "SITE.Example.com:80"] {
        let answer = http_get(lb.http().expect("published port"), host).await.expect("HTTP");
        assert_eq!(answer.status, 200, "{host}: {answer:?}");
        assert_eq!(answer.header("x-shard"), Some("web-1"));
        assert_eq!(answer.header("x-served-by"), Some("web-1-node-0"));
    }
    assert_eq!(http_get(lb.http().expect("published port"), "unknown.example.com").await.expect("HTTP").status, 404);

    let servers = wait_for("the node to be UP", READY, || async {
        let servers = haproxy.show_servers().await.ok()?;
        servers.iter().any(|s| s.server == "web-1-node-0" && s.status == "UP").then_some(servers)
    })
    .await
    .expect("node UP");
    let health = servers.iter().find(|s| s.server == "web-1-node-0").expect("server row");
    assert_eq!(health.backend, "shard-web-1");
    assert!(health.is_up());
    println!("show_servers: {servers:?}");

    assert!(!haproxy.apply_config(&topology).await.expect("unchanged"), "same topology, nothing to do");

    // A config change reloads; entries only in the runtime map do not survive it (fact 2).
    haproxy.apply_runtime(&[add("runtime-only.example.com", "shard-web-1")]).await.expect("runtime add");
    let mut grown = topology.clone();
    grown.backends.push(Backend { name: "shard-web-2".into(), servers: vec![] });
    assert!(haproxy.apply_config(&grown).await.expect("backend added"));
    assert_eq!(haproxy.show_map().await.expect("show map"), entries(&[("site.example.com", "shard-web-1")]));

    // Rendered fine, refused by `haproxy -c`: the old config stays and keeps serving.
    let before = std::fs::read_to_string(lb.config_dir.join("haproxy.cfg")).expect("config");
    let mut bad = grown.clone();
    bad.backends[0].servers[0].address = format!("{node}:99999");
    let err = haproxy.apply_config(&bad).await;
    match &err {
        Err(HaproxyError::InvalidConfig { output }) => assert!(output.contains("invalid port"), "{output}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(lb.config_dir.join("haproxy.cfg")).expect("config"), before);
    assert!(!lb.config_dir.join("haproxy.cfg.candidate").exists(), "candidate removed");
    let answer = http_get(lb.http().expect("published port"), "site.example.com").await.expect("HTTP");
    assert_eq!(answer.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_stopped_by_a_broken_config_starts_again_with_the_rendered_one() {
    if !docker_available() {
        return;
    }
    let mut lab = Lab::new("stopped").expect("lab");
    let lb = lab.start_haproxy("lb", Mounts::ALL).expect("haproxy");
    let haproxy = lb.driver(RuntimeMode::Auto, ReloadMode::Hitless).await.expect("HAProxy answers");
    let topology =
        Topology { map_path: MAP_PATH.into(), backends: vec![Backend { name: "shard-web-1".into(), servers: vec![] }] };
    let map: MapEntries = [("site.example.com".to_owned(), "shard-web-1".to_owned())].into();
    haproxy.write_map_file(&map).await.expect("map file");
    haproxy.apply_config(&topology).await.expect("config applied");
    assert!(!haproxy.is_stopped().await.expect("inspect"));

    // A hand edit HAProxy refuses, then a restart: HAProxy exits and the container stays down.
    let config = lb.config_dir.join("haproxy.cfg");
    let rendered = Haproxy::render_config(&topology).expect("rendered");
    let break_config = || {
        std::fs::write(&config, format!("{rendered}not-a-haproxy-keyword\n")).expect("edit");
        docker(&["restart", "-t", "2", &lb.container]).expect("restart");
    };
    let stopped = || async { haproxy.is_stopped().await.ok()?.then_some(()) };
    break_config();
    wait_for("HAProxy to exit on the edited config", READY, stopped).await.expect("stopped");

    let started = Instant::now();
    haproxy.start_stopped(&topology).await.expect("started");
    println!("start_stopped (config back, docker start, worker answers): {:?}", started.elapsed());
    assert!(!haproxy.is_stopped().await.expect("inspect"));
    assert_eq!(std::fs::read_to_string(&config).expect("config"), rendered);
    assert_eq!(haproxy.show_map().await.expect("show map"), entries(&[("site.example.com", "shard-web-1")]));
    let answer = http_get(lb.http().expect("published port"), "unknown.example.com").await.expect("HTTP");
    assert_eq!((answer.status, answer.body.as_str()), (404, "no such site\n"));

    // Without the shared config directory the file cannot be put back: the container stops
    // again at once, and that is an error, not a wait for the ready timeout.
    break_config();
    wait_for("HAProxy to exit again", READY, stopped).await.expect("stopped");
    let mut target = haproxy.target().clone();
    target.config_dir = None;
    let blind = Haproxy::new(target, Some(DockerHost::connect(None).await.expect("docker")), RuntimeMode::Auto);
    let started = Instant::now();
    let err = blind.start_stopped(&topology).await.expect_err("started on a broken config");
    assert!(matches!(err, HaproxyError::Exited { .. }), "{err:?}");
    assert!(started.elapsed() < READY, "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_fallback_without_shared_directories() {
    if !docker_available() {
        return;
    }
    let mut lab = Lab::new("exec").expect("lab");
    let node = lab.start_node("web-1-node-0", "web-1").expect("node");
    let lb = lab.start_haproxy("lb", Mounts::NONE).expect("haproxy");
    let haproxy = lb.driver(RuntimeMode::Auto, ReloadMode::Hitless).await.expect("HAProxy answers");
    assert_eq!(haproxy.runtime_path(), RuntimeMode::Exec, "no admin.sock on the host");

    let report = haproxy
        .apply_runtime(&[
            add("a.example.com", "shard-web-1"),
            set("b.example.com", "shard-web-1"),
            del("c.example.com"),
        ])
        .await
        .expect("applied over exec");
    assert_eq!((report.added, report.set_missing, report.already_absent), (2, 1, 1));
    assert_eq!(
        sorted_map(&haproxy).await,
        entries(&[("a.example.com", "shard-web-1"), ("b.example.com", "shard-web-1")])
    );

    let mut samples = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        haproxy.apply_runtime(&[add(&format!("one-{i}.example.com"), "shard-web-1")]).await.expect("add");
        samples.push(started.elapsed());
    }
    let (p50, p99) = percentiles(&mut samples);
    println!("exec: one change per session: p50 {p50:?}, p99 {p99:?}");
    let changes: Vec<_> = (0..20_000).map(|i| add(&format!("bulk-{i}.example.com"), "shard-web-2")).collect();
    let started = Instant::now();
    assert_eq!(haproxy.apply_runtime(&changes).await.expect("bulk").added, 20_000);
    let elapsed = started.elapsed();
    println!("exec: 20,000 add map pipelined in {elapsed:?} ({:.0} ops/s)", per_second(20_000, elapsed));

    let map = big_map(20_000);
    let started = Instant::now();
    haproxy.write_map_file(&map).await.expect("map file over exec");
    let file_elapsed = started.elapsed();
    let started = Instant::now();
    haproxy.replace_runtime_map(&map).await.expect("replace over exec");
    println!("exec: 20,000 entries: map file {file_elapsed:?}, replace_runtime_map {:?}", started.elapsed());
    assert_eq!(haproxy.show_map().await.expect("show map").len(), 20_000);
    let file = docker(&["exec", &lb.container, "wc", "-l", MAP_PATH]).expect("wc");
    assert!(file.starts_with("20000 "), "{file}");

    // Config through exec, reloaded with SIGUSR2 (no master socket); the map comes back from the file.
    let mut topology = Topology {
        map_path: MAP_PATH.into(),
        backends: vec![Backend {
            name: "shard-web-1".into(),
            servers: vec![Server {
                name: "web-1-node-0".into(),
                address: format!("{node}:80"),
                id: 1,
                admin: AdminState::Ready,
            }],
        }],
    };
    let started = Instant::now();
    assert!(haproxy.apply_config(&topology).await.expect("config over exec"));
    println!("exec: apply_config with SIGUSR2 reload: {:?}", started.elapsed());
    let config = docker(&["exec", &lb.container, "cat", "/usr/local/etc/haproxy/haproxy.cfg"]).expect("cat");
    assert!(config.contains("server web-1-node-0"));
    assert_eq!(haproxy.show_map().await.expect("show map").len(), 20_000);

    // The old stop + start, kept as a fallback mode.
    let mut target = haproxy.target().clone();
    target.reload = ReloadMode::Restart;
    let restarting = Haproxy::new(target, Some(DockerHost::connect(None).await.expect("docker")), RuntimeMode::Auto);
    let before = docker(&["inspect", "-f", "{{.State.StartedAt}}", &lb.container]).expect("inspect");
    // Maint must survive the stop + start: the state file is written through exec before the stop.
    let maint = AdminChange { backend: "shard-web-1".into(), server: "web-1-node-0".into(), state: AdminState::Maint };
    assert!(haproxy.set_admin_states(&[maint]).await.expect("maint").is_empty());
    topology.backends.push(Backend { name: "shard-web-2".into(), servers: vec![] });
    let started = Instant::now();
    assert!(restarting.apply_config(&topology).await.expect("config with restart"));
    println!("exec: apply_config with stop + start: {:?}", started.elapsed());
    assert_ne!(docker(&["inspect", "-f", "{{.State.StartedAt}}", &lb.container]).expect("inspect"), before);
    assert_eq!(restarting.show_map().await.expect("show map").len(), 20_000);
    let state = docker(&["exec", &lb.container, "cat", SERVER_STATE_PATH_IN_CONTAINER]).expect("state file");
    assert!(state.contains(" web-1-node-0 "), "{state}");
    let servers = restarting.show_servers().await.expect("servers");
    assert_eq!(servers.iter().find(|s| s.server == "web-1-node-0").map(|s| s.admin), Some(AdminState::Maint));
    let ready = AdminChange { backend: "shard-web-1".into(), server: "web-1-node-0".into(), state: AdminState::Ready };
    assert!(restarting.set_admin_states(&[ready]).await.expect("ready").is_empty());
    let answer = wait_for("web-1 serving", READY, || async {
        let answer = http_get(lb.http().ok()?, "site-0000001.example.com").await.ok()?;
        (answer.status == 200).then_some(answer)
    })
    .await
    .expect("HTTP");
    assert_eq!(answer.header("x-shard"), Some("web-1"), "{answer:?}");
    // Every exec session ended its socat (no process left waiting on a half-closed socket).
    wait_for("socat to exit", Duration::from_secs(5), || async {
        let processes = docker(&["exec", &lb.container, "sh", "-c", "cat /proc/[0-9]*/comm"]).ok()?;
        (!processes.lines().any(|name| name == "socat")).then_some(())
    })
    .await
    .expect("no socat left");
    // shard-web-2 has no servers yet; shard-web-3 is not in the config, so the default backend answers.
    assert_eq!(
        http_get(lb.http().expect("published port"), "site-0000002.example.com").await.expect("HTTP").status,
        503
    );
    assert_eq!(
        http_get(lb.http().expect("published port"), "site-0000003.example.com").await.expect("HTTP").status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_host_inspects_execs_and_names_missing_containers() {
    if !docker_available() {
        return;
    }
    let mut lab = Lab::new("docker").expect("lab");
    let lb = lab.start_haproxy("lb", Mounts::NONE).expect("haproxy");
    let docker = DockerHost::connect(None).await.expect("docker");
    docker.ping().await.expect("ping");
    println!("Docker API version negotiated: {}", docker.api_version());

    let info = docker.inspect(&lb.container).await.expect("inspect");
    assert!(info.running);
    assert!(!info.started_at.is_empty());
    assert!(info.ip_addresses.contains_key(&lab.network), "{:?}", info.ip_addresses);

    let out = docker.exec(&lb.container, &["cat"], Some(b"hello\n".to_vec())).await.expect("exec cat");
    assert_eq!((out.exit_code, out.stdout.as_slice()), (0, &b"hello\n"[..]));
    let out = docker.exec(&lb.container, &["sh", "-c", "echo oops >&2; exit 3"], None).await.expect("exec sh");
    assert_eq!((out.exit_code, out.stderr.as_slice()), (3, &b"oops\n"[..]));
    let failed = out.success(&lb.container, &["sh"]);
    assert!(matches!(failed, Err(DockerError::ExecFailed { exit_code: 3, .. })), "{failed:?}");

    let missing = docker.inspect("lbft-no-such-container").await;
    assert!(matches!(missing, Err(DockerError::NotFound { .. })), "{missing:?}");
    let unreachable = DockerHost::connect(Some(Path::new("/nonexistent/docker.sock"))).await;
    assert!(matches!(unreachable, Err(DockerError::Unreachable { .. })), "{unreachable:?}");
}
