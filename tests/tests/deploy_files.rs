//! The example configs under deploy/examples/ load with the daemons' own config loaders, every
//! key shown commented out included, and the systemd units under deploy/systemd/ start the
//! daemons with those files and let them write where the files say they write.

use std::path::Path;
use std::path::PathBuf;

use clap::Parser;
use lbfleet_agent::config::AgentSettings;
use lbfleet_coordinator::daemon::config::CoordinatorSettings;
use lbfleet_coordinator::daemon::restore::RestoreArgs;
use lbfleet_proto::process::read_config;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The example with every `# key = value` line uncommented, written to a temporary file.
fn uncommented(example: &Path, dir: &Path) -> PathBuf {
    let text: String = read(example)
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(setting)
                if setting
                    .split_once(" = ")
                    .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_')) =>
            {
                format!("{setting}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert_ne!(text, read(example), "{} shows no optional setting", example.display());
    let path = dir.join(example.file_name().expect("a file"));
    std::fs::write(&path, text).expect("write the uncommented example");
    path
}

/// The values of `key=` lines of a unit file, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines().filter_map(|line| line.strip_prefix(key)?.strip_prefix('=')).map(str::to_string).collect()
}

/// The unit's ExecStart split into words, checked to run `binary` with `--config` on `installed`.
fn exec_start(unit: &str, binary: &str, installed: &str) -> Vec<String> {
    let exec = unit_values(unit, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart: {exec:?}");
    let words: Vec<String> = exec[0].split_whitespace().map(str::to_string).collect();
    assert_eq!(words[0], format!("/usr/local/bin/{binary}"));
    let config = words.iter().position(|w| w == "--config").expect("ExecStart gives --config");
    assert_eq!(words[config + 1], installed);
    words
}

/// Whether the unit lets the service write at `path`.
fn writable(unit: &str, path: &Path) -> bool {
    let paths: Vec<String> =
        unit_values(unit, "ReadWritePaths").iter().flat_map(|v| v.split_whitespace()).map(str::to_string).collect();
    paths.iter().any(|allowed| path.starts_with(allowed))
}

fn hardened(unit: &str) {
    for setting in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "Restart=on-failure",
        "RestartPreventExitStatus=64",
        "ExecReload=/bin/kill -HUP $MAINPID",
        // The daemons speak sd_notify: READY=1, then watchdog pings while they are live.
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
    ] {
        assert!(unit.lines().any(|line| line == setting), "missing {setting}");
    }
}

#[test]
fn the_coordinator_example_and_unit_agree_with_the_daemon() {
    let example = deploy("examples/coordinator.toml");
    let unit = read(&deploy("systemd/lbfleet-coordinator.service"));
    hardened(&unit);
    let words = exec_start(&unit, "lbfleet", "/etc/lbfleet/coordinator.toml");
    assert_eq!(words[1..3], ["coordinator", "run"]);

    // The unit's flags, with the example in place of the installed file, through the real parser and loader.
    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        settings: CoordinatorSettings,
    }
    let mut argv: Vec<String> = words[2..].to_vec();
    let config = argv.iter().position(|w| w == "--config").expect("--config") + 1;
    argv[config] = example.display().to_string();
    let run = Run::try_parse_from(&argv).expect("the unit's flags parse");
    let config = run.settings.resolve().unwrap_or_else(|e| panic!("the example does not load: {e}"));
    assert_eq!(config.node_id, 1);
    assert_eq!(config.bootstrap.len(), 3);
    assert_eq!(config.advertise.as_deref(), Some("10.0.0.1:7400"));
    assert!(writable(&unit, &config.data_dir), "the unit must let it write {}", config.data_dir.display());

    let dir = tempfile::tempdir().expect("temp dir");
    let all = uncommented(&example, dir.path());
    let shown: CoordinatorSettings = read_config(&all).unwrap_or_else(|e| panic!("the example does not parse: {e}"));
    assert_eq!(shown.change_log_capacity, Some(2_000_000), "the example shows change_log_capacity");
    let all = CoordinatorSettings { config: Some(all), ..Default::default() };
    let all = all.resolve().unwrap_or_else(|e| panic!("a setting shown does not load: {e}"));
    assert_eq!(all.snapshot_every, 10_000);
    assert_eq!(all.change_log_capacity, 2_000_000);
    assert_eq!(all.metrics_listen.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:9100"));

    // `coordinator restore --config` reads the same file.
    let restore = RestoreArgs {
        from: "backup.lbfs".into(),
        config: Some(example.clone()),
        node_id: None,
        data_dir: None,
        advertise: None,
        listen: None,
    };
    let target = restore.resolve().unwrap_or_else(|e| panic!("restore does not read the example: {e}"));
    assert_eq!((target.node_id, target.address.as_str()), (1, "10.0.0.1:7400"));
    assert_eq!(target.data_dir, config.data_dir);
}

#[test]
fn the_agent_example_and_unit_agree_with_the_daemon() {
    let example = deploy("examples/agent.toml");
    let unit = read(&deploy("systemd/lbfleet-agent.service"));
    hardened(&unit);
    assert_eq!(unit_values(&unit, "Requires"), ["docker.service"]);
    assert!(unit_values(&unit, "After").iter().any(|after| after.split_whitespace().any(|u| u == "docker.service")));
    let mut argv = exec_start(&unit, "lbfleet-agent", "/etc/lbfleet/agent.toml");
    let config = argv.iter().position(|w| w == "--config").expect("--config") + 1;
    argv[config] = example.display().to_string();
    let config = AgentSettings::try_parse_from(&argv)
        .expect("the unit's flags parse")
        .resolve()
        .unwrap_or_else(|e| panic!("the example does not load: {e}"));
    assert_eq!(config.host_id, "lb-1");
    assert_eq!(config.endpoints.len(), 3);
    for dir in [&config.map_dir, &config.config_dir] {
        let dir = dir.as_ref().expect("the example shares the map and config dirs");
        assert!(writable(&unit, dir), "the unit must let it write {}", dir.display());
    }
    let runtime_dirs = unit_values(&unit, "RuntimeDirectory");
    let socket_dir = config.socket_dir.expect("the example shares the socket dir");
    assert!(runtime_dirs.iter().any(|d| socket_dir == Path::new("/run").join(d)), "{runtime_dirs:?}");

    let dir = tempfile::tempdir().expect("temp dir");
    let all = AgentSettings { config: Some(uncommented(&example, dir.path())), ..Default::default() };
    let all = all.resolve().unwrap_or_else(|e| panic!("a setting shown does not load: {e}"));
    assert_eq!(all.container.as_deref(), Some("hosting-haproxy"));
    assert_eq!(all.report_interval, std::time::Duration::from_secs(5));
}
