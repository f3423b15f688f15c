//! A bad configuration value stops the binary at once with exit code 2 and one line on
//! stderr naming the key; a missing config file fails clearly.

mod harness;

use std::time::Duration;

use harness::server::{Server, ServerBuilder};

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

/// Runs the binary as `builder` says (good listen addresses, so an accepted bad value cannot
/// collide with anything), and waits at most 10 s for it to exit.
fn run(builder: ServerBuilder) -> Outcome {
    let mut server = builder.spawn();
    let Some(status) = server.wait_exit(Duration::from_secs(10)) else {
        panic!(
            "still running after 10 s as {builder:?}; stderr:\n{}",
            server.log()
        );
    };
    Outcome {
        code: status.code(),
        stderr: server.log(),
    }
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
        let out = run(Server::builder().env(key, value));
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
    let out = run(Server::builder().config("/nonexistent.toml"));
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
    let out = run(Server::builder().tls());
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("tls.cert"), "stderr: {}", out.stderr);
}
