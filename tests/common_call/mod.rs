//! Harness for the end-to-end call tests (`tests/call_*.rs`): the real `dialtone` binary on
//! free loopback ports, the test's own websocket agent, SIPp and baresip as callers, a
//! raw-UDP SIP caller for the edge cases, a tcpdump capture of the RTP that comes back, and
//! the audio checks (decode with the crate's codecs, Goertzel tone detection).
//!
//! Every wait is bounded. Each test gets its own ports and temporary directory, so the
//! tests can run in parallel. When a test fails, the server's log tail is printed.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

pub mod agent;
pub mod audio;
pub mod baresip;
pub mod capture;
pub mod flow;
pub mod pcap;
pub mod sip;
pub mod sipp;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The API key every test server is started with.
pub const API_KEY: &str = "e2e-test-key-0123";

/// The repository root.
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// `tests/e2e/` (pcaps, SIPp scenarios).
pub fn e2e_dir() -> PathBuf {
    Path::new(REPO).join("tests/e2e")
}

/// The binary under test; `DIALTONE_TEST_BIN` may point at another build.
pub fn binary() -> PathBuf {
    match std::env::var_os("DIALTONE_TEST_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_dialtone")),
    }
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

// ---------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------

/// Ports handed out by this process, so two tests in one binary never get the same.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn claim(ports: &[u16]) -> bool {
    let mut guard = HANDED_OUT.lock().unwrap();
    let set = guard.get_or_insert_with(HashSet::new);
    if ports.iter().any(|p| set.contains(p)) {
        return false;
    }
    set.extend(ports.iter().copied());
    true
}

/// A loopback port free for UDP right now (and not handed out before by this process).
pub fn free_udp_port() -> u16 {
    for _ in 0..200 {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind UDP on loopback");
        let port = s.local_addr().unwrap().port();
        if claim(&[port]) {
            return port;
        }
    }
    panic!("no free UDP port after 200 tries");
}

/// A loopback port free for both UDP and TCP right now.
pub fn free_udp_tcp_port() -> u16 {
    for _ in 0..200 {
        let t = TcpListener::bind("127.0.0.1:0").expect("bind TCP on loopback");
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() && claim(&[port]) {
            return port;
        }
    }
    panic!("no port free for UDP and TCP after 200 tries");
}

/// A loopback TCP port free right now.
pub fn free_tcp_port() -> u16 {
    for _ in 0..200 {
        let t = TcpListener::bind("127.0.0.1:0").expect("bind TCP on loopback");
        let port = t.local_addr().unwrap().port();
        if claim(&[port]) {
            return port;
        }
    }
    panic!("no free TCP port after 200 tries");
}

/// `len` consecutive loopback ports, starting at an even number, all free for UDP and TCP
/// right now. Drawn at random below the kernel's ephemeral range (32768+), so that
/// parallel test processes rarely collide and the kernel never hands them out itself.
pub fn free_port_block(len: u16) -> u16 {
    for _ in 0..500 {
        let base = rand::random_range(10_000u16..32_000) & !1;
        let ports: Vec<u16> = (base..base + len).collect();
        let all_free = ports.iter().all(|&p| {
            UdpSocket::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p)).is_ok()
        });
        if all_free && claim(&ports) {
            return base;
        }
    }
    panic!("no block of {len} free ports after 500 tries");
}

/// A string unique within this machine and run: usable in tags, branches, names.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}{}x{}x{}",
        std::process::id(),
        now % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------
// Minimal HTTP/1.1 client (the API is JSON over plain HTTP on loopback)
// ---------------------------------------------------------------------------------------

/// One HTTP exchange: returns the status and the body. Bounded by `timeout`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
        );
        if let Some(k) = key {
            req.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PATCH" {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("HTTP {method} {path}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("HTTP {method} {path}: {e}"));
    parse_http_response(&raw).unwrap_or_else(|| {
        panic!(
            "HTTP {method} {path}: unparseable response {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_http_response(raw: &[u8]) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_str = std::str::from_utf8(&rest[..eol]).ok()?;
            let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

// ---------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------

/// A running `dialtone` process on its own ports; killed on drop. Its log is printed when
/// the test fails.
pub struct Dialtone {
    child: Child,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    pub rtp_ports: (u16, u16),
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
}

impl Dialtone {
    /// Starts the server with the test defaults.
    pub async fn start() -> Dialtone {
        Self::start_with(&[]).await
    }

    /// Starts the server with extra `DIALTONE__…` environment overrides.
    pub async fn start_with(extra_env: &[(&str, &str)]) -> Dialtone {
        let mut last_log = String::new();
        // A port may be taken between probing and binding; retry a few times with new ones.
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("dialtone-e2e-")
                .tempdir()
                .expect("temp dir");
            let sip_port = free_udp_tcp_port();
            let http_port = free_tcp_port();
            let rtp_lo = free_port_block(64);
            let rtp_ports = (rtp_lo, rtp_lo + 63);
            let log_path = dir.path().join("dialtone.log");
            let log = std::fs::File::create(&log_path).expect("log file");
            let mut cmd = Command::new(binary());
            cmd.arg("--config")
                .arg(Path::new(REPO).join("config/default.toml"))
                .current_dir(dir.path())
                .env("DIALTONE__SIP__UDP", format!("127.0.0.1:{sip_port}"))
                .env("DIALTONE__SIP__TCP", "")
                .env("DIALTONE__SIP__PUBLIC_HOST", "127.0.0.1")
                .env("DIALTONE__HTTP__LISTEN", format!("127.0.0.1:{http_port}"))
                .env("DIALTONE__API__KEYS", API_KEY)
                .env(
                    "DIALTONE__DATABASE__URL",
                    format!("sqlite://{}/db.sqlite", dir.path().display()),
                )
                .env(
                    "DIALTONE__MEDIA__RTP_PORTS",
                    format!("{}-{}", rtp_ports.0, rtp_ports.1),
                )
                .env("DIALTONE__MEDIA__PUBLIC_IP", "127.0.0.1")
                .env("DIALTONE__LOG__FILTER", "info,dialtone=debug")
                .env("DIALTONE__SHUTDOWN__GRACE_PERIOD_MS", "1000")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            for (k, v) in extra_env {
                cmd.env(k, v);
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
            let mut server = Dialtone {
                child,
                sip: SocketAddr::from(([127, 0, 0, 1], sip_port)),
                http: SocketAddr::from(([127, 0, 0, 1], http_port)),
                rtp_ports,
                dir,
                log_path,
            };
            match server.wait_healthy(Duration::from_secs(20)).await {
                Ok(()) => return server,
                Err(log) => {
                    last_log = log;
                    let _ = server.child.kill();
                    let _ = server.child.wait();
                    if !last_log.contains("in use") {
                        break;
                    }
                }
            }
        }
        panic!("dialtone did not become healthy; its log:\n{last_log}");
    }

    async fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("(exited with {status})\n{}", self.log()));
            }
            let ok = tokio::time::timeout(Duration::from_secs(2), async {
                let mut s = tokio::net::TcpStream::connect(self.http).await.ok()?;
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .ok()?;
                let mut raw = Vec::new();
                s.read_to_end(&mut raw).await.ok()?;
                parse_http_response(&raw)
            })
            .await;
            if let Ok(Some((200, _))) = ok {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("(not healthy within {limit:?})\n{}", self.log()))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The process id (for /proc measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// An authenticated API call; returns status and JSON body (Null when not JSON).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = http(self.http, method, path, Some(API_KEY), body.as_ref()).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates an audio-websocket agent; returns its `agent_id`.
    pub async fn create_agent(&self, ws_url: &str, encoding: &str) -> String {
        let (status, body) = self
            .api(
                "POST",
                "/create-agent",
                Some(json!({
                    "agent_name": unique("e2e-agent-"),
                    "response_engine": {
                        "type": "audio-websocket",
                        "url": ws_url,
                        "audio_encoding": encoding,
                        "headers": {"X-E2E": "yes"},
                    }
                })),
            )
            .await;
        assert!(
            status == 200 || status == 201,
            "create-agent: {status} {body}"
        );
        body["agent_id"]
            .as_str()
            .unwrap_or_else(|| panic!("create-agent: no agent_id in {body}"))
            .to_string()
    }

    /// Registers a call for `agent_id`; returns the call object (asserts 201 and its shape).
    pub async fn register_call(&self, agent_id: &str) -> Value {
        let (status, body) = self
            .api(
                "POST",
                "/v2/register-phone-call",
                Some(json!({
                    "agent_id": agent_id,
                    "metadata": {"suite": "e2e"},
                    "retell_llm_dynamic_variables": {"customer": "Ada"},
                })),
            )
            .await;
        assert_eq!(status, 201, "register-phone-call: {body}");
        assert_eq!(body["call_status"], "registered", "{body}");
        let call_id = body["call_id"].as_str().expect("call_id").to_string();
        assert!(!call_id.is_empty(), "{body}");
        if let Some(uri) = body["sip_uri"].as_str() {
            assert!(
                uri.starts_with(&format!("sip:{call_id}@")),
                "sip_uri {uri} should be sip:{call_id}@host"
            );
        } else {
            panic!("register-phone-call: no sip_uri in {body}");
        }
        body
    }

    /// `GET /v2/get-call/{id}`.
    pub async fn get_call(&self, call_id: &str) -> Value {
        let (status, body) = self
            .api("GET", &format!("/v2/get-call/{call_id}"), None)
            .await;
        assert_eq!(status, 200, "get-call {call_id}: {body}");
        body
    }

    /// Polls the call object until its status is one of `statuses`; returns the last one
    /// read either way (the caller asserts).
    pub async fn wait_call_status(
        &self,
        call_id: &str,
        statuses: &[&str],
        limit: Duration,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let call = self.get_call(call_id).await;
            let status = call["call_status"].as_str().unwrap_or("");
            if statuses.contains(&status) || Instant::now() >= deadline {
                return call;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until the call is over (`ended`, `error`, `not_connected`).
    pub async fn wait_call_final(&self, call_id: &str, limit: Duration) -> Value {
        self.wait_call_status(call_id, &["ended", "error", "not_connected"], limit)
            .await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let (status, text) = http(self.http, "GET", "/metrics", None, None).await;
        assert_eq!(status, 200, "/metrics: {text}");
        text
    }
}

impl Drop for Dialtone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(300);
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "---- dialtone log (last {} lines of {}) ----",
                lines.len() - from,
                self.log_path.display()
            );
            for l in &lines[from..] {
                let _ = writeln!(err, "{l}");
            }
            let _ = writeln!(err, "---- end of dialtone log ----");
        }
    }
}

/// Asserts what every answered-then-hung-up call object must say afterwards.
pub fn assert_ended_by_caller(call: &Value, started_after_ms: i64) {
    assert_eq!(call["call_status"], "ended", "call object: {call}");
    assert_eq!(
        call["disconnection_reason"], "user_hangup",
        "call object: {call}"
    );
    let start = call["start_timestamp"]
        .as_i64()
        .unwrap_or_else(|| panic!("no start_timestamp: {call}"));
    let end = call["end_timestamp"]
        .as_i64()
        .unwrap_or_else(|| panic!("no end_timestamp: {call}"));
    let now = now_ms();
    assert!(
        start >= started_after_ms - 1000 && start <= now,
        "start_timestamp {start} not within the test ({started_after_ms}..{now}): {call}"
    );
    assert!(
        end >= start && end <= now + 1000,
        "end_timestamp {end} before start or in the future: {call}"
    );
    let duration = call["duration_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("no duration_ms: {call}"));
    assert!(
        (duration - (end - start)).abs() <= 1000,
        "duration_ms {duration} disagrees with end - start = {}: {call}",
        end - start
    );
}
