//! The deployment files in `deploy/`: the systemd unit passes `systemd-analyze verify` and
//! gives a drain time to finish; the HAProxy example passes `haproxy -c`.

mod common;

use common::programs::{haproxy, program};
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

fn unit() -> String {
    std::fs::read_to_string(deploy_file("electrum-gateway.service")).unwrap()
}

/// The value of `key=` in the unit (the last one, as systemd reads it).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .next()
}

#[test]
fn systemd_unit_stops_by_draining_within_its_timeout() {
    let unit = unit();
    assert_eq!(unit_value(&unit, "KillSignal").as_deref(), Some("SIGTERM"));
    let timeout: f64 = unit_value(&unit, "TimeoutStopSec")
        .expect("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    let drain = electrum_gateway::config::Config::default()
        .listen
        .drain_secs;
    assert!(
        timeout > drain + 5.0,
        "TimeoutStopSec={timeout} leaves no room for a drain of {drain} s"
    );
    let exec = unit_value(&unit, "ExecStart").expect("ExecStart");
    assert!(exec.contains(" serve ") && exec.contains("--data-dir /var/lib/electrum-gateway"));
    assert_eq!(
        unit_value(&unit, "StateDirectory").as_deref(),
        Some("electrum-gateway")
    );
}

#[test]
#[ignore = "needs systemd-analyze (Debian package systemd)"]
fn systemd_unit_verifies() {
    let analyze = program("systemd-analyze", "apt-get install systemd");
    // `verify` checks that ExecStart's program exists: point it at the one just built.
    let unit = unit().replace(
        "/usr/local/bin/electrum-gateway",
        env!("CARGO_BIN_EXE_electrum-gateway"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("electrum-gateway.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // Unknown keys and bad values are only warnings, with a success status.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("electrum-gateway"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
#[ignore = "needs haproxy (Debian package haproxy)"]
fn haproxy_example_is_valid() {
    let out = Command::new(haproxy())
        .arg("-c")
        .arg("-f")
        .arg(deploy_file("haproxy.cfg"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haproxy -c: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
