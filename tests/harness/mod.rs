//! The one harness of the end-to-end tests (`tests/*.rs`): it starts the real `dialtone`
//! binary ([`server`], its API in [`api`] and [`metrics`]) and the peers the tests talk to
//! it through: hand-made SIP ([`sip`], and a caller leg in [`uac`]), SIPp, baresip, the
//! test's own websocket agent, a webhook receiver, a DNS server, TLS peers and a Pipecat
//! bot. It captures RTP with tcpdump ([`capture`], read by [`pcap`]) and checks audio
//! ([`audio`]); [`pcap_call`] is the whole SIPp-with-a-tone call several tests share.
//!
//! Every wait is bounded. Each test gets its own ports and temporary directory, so tests
//! run in parallel. Every process a test starts is killed when its handle drops, and when
//! the test fails the logs of the processes it started are printed.
//!
//! Blocking or async: the server, its API, hand-made SIP, SIPp, DNS and the TLS peers
//! block (std); the websocket agent, the webhook receiver, baresip, tcpdump and Pipecat
//! run on tokio. Async tests call the blocking parts directly: `#[tokio::test]` polls the
//! test body on its own thread and runs spawned tasks (the agent, the receiver) on its
//! workers, so a blocking call holds up only the test body, which waits for it anyway.

// Each test crate compiles this module and uses a different part of it: without this,
// every crate would warn about the parts it does not use.
#![allow(dead_code)]

pub mod agent;
pub mod api;
pub mod audio;
pub mod baresip;
pub mod capture;
pub mod dns;
pub mod http;
pub mod metrics;
pub mod pcap;
pub mod pcap_call;
pub mod pipecat;
pub mod ports;
pub mod server;
pub mod sip;
pub mod sipp;
pub mod tls;
pub mod uac;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The repository root.
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A path under `tests/` (test data, SIPp scenarios, pcaps, scripts).
pub fn tests_path(relative: &str) -> PathBuf {
    Path::new(REPO).join("tests").join(relative)
}

/// Fails the test with a clear message when an external tool is missing (the tests need
/// them; they are listed in `tests/e2e/apt-packages.txt`). Never skips silently.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed; install the packages in tests/e2e/apt-packages.txt"
    );
}

/// A string unique within this machine and run (process id, time and a counter), usable in
/// branches, Call-IDs, tags and names.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{nanos:x}x{n}", std::process::id())
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Prints the tail of a process's log when the test is failing; for the `Drop` of the
/// handles of the processes a test starts.
pub fn print_log_if_failing(what: &str, log: &str) {
    if std::thread::panicking() {
        eprintln!(
            "----- {what} (last 300 lines) -----\n{}\n----- end of {what} -----",
            tail(log, 300)
        );
    }
}

/// Reads a file a process wrote, as text (empty when it is not there).
pub fn read_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}
