//! A bad configuration value stops the binary at once with exit code 2 and one line on
//! stderr naming the key; a missing config file fails clearly.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

/// Runs the binary with good listen addresses (so an accepted bad value cannot collide with
/// anything) plus `overrides`, and waits at most 10 s for it to exit.
fn run(config: &str, overrides: &[(&str, &str)]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let sip = free_port_udp_tcp();
    let http = free_tcp_port();
    let stderr_path = dir.path().join("stderr.log");
    let mut cmd = Command::new(binary());
    cmd.arg("--config").arg(config).current_dir(dir.path());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DIALTONE__") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("DIALTONE__SIP__UDP", format!("127.0.0.1:{sip}"))
        .env("DIALTONE__SIP__TCP", format!("127.0.0.1:{sip}"))
        .env("DIALTONE__HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env(
            "DIALTONE__DATABASE__URL",
            format!("sqlite://{}/d.db", dir.path().display()),
        );
    for (k, v) in overrides {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&stderr_path).unwrap()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("still running after 10 s with {overrides:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code,
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

fn default_config_path() -> String {
    default_config().display().to_string()
}

#[test]
fn bad_values_exit_2_with_one_line_naming_the_key() {
    let cases = [
        ("DIALTONE__SIP__UDP", "nonsense", "sip.udp"),
        ("DIALTONE__SIP__ALLOW", "10.0.0.0/99", "sip.allow"),
        ("DIALTONE__MEDIA__RTP_PORTS", "9-1", "media.rtp_ports"),
        ("DIALTONE__HTTP__LISTEN", "8080", "http.listen"),
        ("DIALTONE__SIP__T1_MS", "0", "sip.t1_ms"),
        ("DIALTONE__API__KEYS", "short", "api.keys"),
    ];
    let mut failures = Vec::new();
    for (key, value, name) in cases {
        let out = run(&default_config_path(), &[(key, value)]);
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let ok = out.code == Some(2) && lines.len() == 1 && lines[0].contains(name);
        if !ok {
            failures.push(format!(
                "{key}={value}: exit {:?}, stderr {} line(s):\n{}",
                out.code,
                lines.len(),
                out.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn missing_config_file_fails_clearly() {
    let out = run("/nonexistent.toml", &[]);
    assert!(
        matches!(out.code, Some(c) if c != 0),
        "exit code {:?}",
        out.code
    );
    assert!(
        out.stderr.contains("/nonexistent.toml"),
        "stderr names the file: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "a clean error, not a panic: {}",
        out.stderr
    );
}

#[test]
fn tls_listener_without_certificate_is_a_config_error() {
    let tls = free_tcp_port();
    let out = run(
        &default_config_path(),
        &[("DIALTONE__SIP__TLS", &format!("127.0.0.1:{tls}"))],
    );
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("tls.cert"), "stderr: {}", out.stderr);
}
