//! Shared harness for the integration tests: start the real `dialtone` binary on free
//! loopback ports, talk to it over raw UDP/TCP, TLS (through `openssl s_client`), HTTP and
//! SIPp, and read its metrics.
//!
//! Every wait is bounded. The server's stderr goes to a file that is printed when a test
//! fails, and the process is killed when the [`Server`] is dropped.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The API key every test server is started with.
pub const API_KEY: &str = "testkey-123456";

/// The repository root.
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The RFC 4475 torture messages and their manifest.
pub const RFC4475_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc4475");

/// The binary under test. `DIALTONE_TEST_BIN` may point at another build (e.g. a release
/// binary) to run the same suite against it.
pub fn binary() -> PathBuf {
    match std::env::var_os("DIALTONE_TEST_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_dialtone")),
    }
}

/// The shipped configuration file; tests start from it and override through the environment.
pub fn default_config() -> PathBuf {
    Path::new(REPO).join("config/default.toml")
}

/// A path to a SIPp scenario under `tests/sipp/`.
pub fn sipp_scenario(name: &str) -> PathBuf {
    Path::new(REPO).join("tests/sipp").join(name)
}

// ---------------------------------------------------------------------------------------
// Ports and unique identifiers
// ---------------------------------------------------------------------------------------

/// A loopback port that is free for both UDP and TCP right now (SIP uses one port number
/// for both). Another process may still take it before we bind it; [`ServerBuilder::start`]
/// retries with new ports when the server cannot bind.
pub fn free_port_udp_tcp() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port on loopback");
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP after 100 tries");
}

/// A loopback TCP port that is free right now.
pub fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port on loopback");
    l.local_addr().unwrap().port()
}

/// A string unique within this test run (process id, time and a counter), usable in
/// branches, Call-IDs and tags.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{nanos:x}x{n}", std::process::id())
}

/// A fresh RFC 3261 branch (magic cookie included).
pub fn branch() -> String {
    unique("z9hG4bK-t")
}

// ---------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------

/// How to start a server. Defaults: UDP and TCP on one free port, TLS off, HTTP on a free
/// port, the shipped config file, API key [`API_KEY`], a database in a temporary directory.
pub struct ServerBuilder {
    env: Vec<(String, String)>,
    tcp: bool,
    udp: bool,
    tls: bool,
    config: PathBuf,
    wait_healthy: bool,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    pub fn new() -> Self {
        ServerBuilder {
            env: Vec::new(),
            tcp: true,
            udp: true,
            tls: false,
            config: default_config(),
            wait_healthy: true,
        }
    }

    /// Sets `DIALTONE__...` (or any other) environment variable for the server. Applied after
    /// the harness's own settings, so it wins.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Turns the TCP listener off.
    pub fn no_tcp(mut self) -> Self {
        self.tcp = false;
        self
    }

    /// Turns the UDP listener off.
    pub fn no_udp(mut self) -> Self {
        self.udp = false;
        self
    }

    /// Listens for TLS on a free port; the caller supplies `DIALTONE__TLS__CERT`/`KEY`
    /// (and optionally `CLIENT_CA`) through [`ServerBuilder::env`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Uses another config file than `config/default.toml`.
    pub fn config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = path.into();
        self
    }

    /// Starts the server and waits until `/healthz` answers 200 (at most 20 s). Retries on
    /// fresh ports when the chosen ones were taken meanwhile by a parallel test.
    pub fn start(self) -> Server {
        let mut last_err = String::new();
        for _attempt in 0..5 {
            match self.try_start() {
                Ok(server) => return server,
                Err(StartError::PortTaken(log)) => last_err = log,
                Err(StartError::Failed(msg)) => panic!("{msg}"),
            }
        }
        panic!("dialtone could not bind its ports after 5 attempts; last stderr:\n{last_err}");
    }

    fn try_start(&self) -> Result<Server, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("dialtone-test-")
            .tempdir()
            .expect("create a temp dir");
        let sip_port = free_port_udp_tcp();
        let http_port = free_tcp_port();
        let tls_port = self.tls.then(free_tcp_port);
        let stderr_path = dir.path().join("dialtone.stderr.log");
        let stdout_path = dir.path().join("dialtone.stdout.log");

        let mut cmd = Command::new(binary());
        cmd.arg("--config").arg(&self.config);
        cmd.current_dir(dir.path());
        // Nothing from the caller's environment leaks into the server's configuration.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DIALTONE__") {
                cmd.env_remove(&key);
            }
        }
        let on = |enabled: bool, port: u16| {
            if enabled {
                format!("127.0.0.1:{port}")
            } else {
                String::new()
            }
        };
        let log_filter =
            std::env::var("DIALTONE_TEST_LOG").unwrap_or_else(|_| "info,dialtone=debug".into());
        cmd.env("DIALTONE__SIP__UDP", on(self.udp, sip_port))
            .env("DIALTONE__SIP__TCP", on(self.tcp, sip_port))
            .env(
                "DIALTONE__SIP__TLS",
                tls_port
                    .map(|p| format!("127.0.0.1:{p}"))
                    .unwrap_or_default(),
            )
            .env("DIALTONE__SIP__PUBLIC_HOST", "127.0.0.1")
            .env("DIALTONE__HTTP__LISTEN", format!("127.0.0.1:{http_port}"))
            .env("DIALTONE__API__KEYS", API_KEY)
            .env(
                "DIALTONE__DATABASE__URL",
                format!("sqlite://{}/dialtone.db", dir.path().display()),
            )
            .env("DIALTONE__LOG__FILTER", log_filter)
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(File::create(&stdout_path).unwrap()))
            .stderr(Stdio::from(File::create(&stderr_path).unwrap()));
        let child = cmd
            .spawn()
            .map_err(|e| StartError::Failed(format!("cannot run {:?}: {e}", binary())))?;

        let mut server = Server {
            child,
            sip_port,
            tls_port,
            http_port,
            stderr_path,
            exit: None,
            dir,
        };
        if !self.wait_healthy {
            return Ok(server);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.try_exit() {
                let log = server.stderr_text();
                let lower = log.to_lowercase();
                if lower.contains("in use") || lower.contains("cannot bind") {
                    return Err(StartError::PortTaken(log));
                }
                return Err(StartError::Failed(format!(
                    "dialtone exited during start-up ({status}); stderr:\n{log}"
                )));
            }
            if let Ok(r) = http_request(server.http_addr(), "GET", "/healthz", &[]) {
                if r.status == 200 {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                return Err(StartError::Failed(format!(
                    "dialtone did not answer GET /healthz with 200 within 20 s; stderr:\n{}",
                    server.stderr_text()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

enum StartError {
    PortTaken(String),
    Failed(String),
}

/// A running `dialtone` process. Killed on drop; its stderr is printed if the test failed.
pub struct Server {
    child: Child,
    pub sip_port: u16,
    pub tls_port: Option<u16>,
    pub http_port: u16,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server with the default settings.
    pub fn start() -> Server {
        ServerBuilder::new().start()
    }

    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    pub fn udp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port))
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port))
    }

    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port.expect("TLS not enabled")))
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// The server's temporary working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        let bytes = std::fs::read(&self.stderr_path).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The exit status, if the process has exited (never blocks).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Panics with the server's stderr when the process is no longer running.
    pub fn assert_alive(&mut self, context: &str) {
        if let Some(status) = self.try_exit() {
            panic!(
                "dialtone is no longer running after {context} ({status}); stderr:\n{}",
                tail(&self.stderr_text(), 200)
            );
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, ...) through the shell's `kill` built-in.
    pub fn signal(&self, name: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{name} {}", self.child.id()))
            .status()
            .expect("run sh -c kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// `GET path` without credentials.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_request(self.http_addr(), "GET", path, &[])
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `GET path` with `Authorization: Bearer key`.
    pub fn get_with_key(&self, path: &str, key: &str) -> HttpResponse {
        let auth = format!("Bearer {key}");
        http_request(
            self.http_addr(),
            "GET",
            path,
            &[("Authorization", auth.as_str())],
        )
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The current `/metrics` page, parsed.
    pub fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.body);
        Metrics::parse(&r.body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "----- dialtone stderr (last 300 lines) -----\n{}\n----- end of dialtone stderr -----",
                tail(&self.stderr_text(), 300)
            );
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// A minimal HTTP/1.1 client (one request per connection, `Connection: close`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_http_response(&raw).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unparseable HTTP response: {:?}",
                String::from_utf8_lossy(&raw)
            ),
        )
    })
}

fn parse_http_response(raw: &[u8]) -> Option<HttpResponse> {
    let end = find(raw, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Some(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_sample)
            .collect();
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// The sum of every sample of `name` whose labels include all of `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether any sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.find('{') {
        None => (series.to_string(), HashMap::new()),
        Some(i) => {
            let inner = series[i + 1..].strip_suffix('}')?;
            (series[..i].to_string(), parse_labels(inner)?)
        }
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if s.is_empty() {
            return Some(out);
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        let rest = s[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key, value);
        s = &rest[end? + 1..];
    }
}

// ---------------------------------------------------------------------------------------
// SIP messages
// ---------------------------------------------------------------------------------------

/// Transport as written in Via.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn via(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// A request built by the tests. `to_bytes` renders it with a correct Content-Length.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub uri: String,
    pub transport: Transport,
    /// The address placed in Via and Contact (where responses should go).
    pub local: SocketAddr,
    pub branch: String,
    pub call_id: String,
    pub from_tag: String,
    pub to: String,
    pub to_tag: Option<String>,
    pub cseq: u32,
    pub cseq_method: Option<String>,
    pub extra: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// A minimal SDP offer (PCMU, 8 kHz) for INVITEs.
pub fn sdp_offer(local: SocketAddr) -> String {
    let ip = local.ip();
    format!(
        "v=0\r\no=test 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

impl Request {
    pub fn new(method: &str, user: &str, transport: Transport, local: SocketAddr) -> Request {
        Request {
            method: method.to_string(),
            uri: format!("sip:{user}@127.0.0.1"),
            transport,
            local,
            branch: branch(),
            call_id: unique("cid-"),
            from_tag: unique("ft"),
            to: format!("<sip:{user}@127.0.0.1>"),
            to_tag: None,
            cseq: 1,
            cseq_method: None,
            extra: Vec::new(),
            content_type: None,
            body: Vec::new(),
        }
    }

    pub fn options(transport: Transport, local: SocketAddr) -> Request {
        let mut r = Request::new("OPTIONS", "probe", transport, local);
        r.extra.push(("Accept".into(), "application/sdp".into()));
        r
    }

    /// An INVITE with an SDP offer to `user` (no such user exists yet: expect 404).
    pub fn invite(user: &str, transport: Transport, local: SocketAddr) -> Request {
        let mut r = Request::new("INVITE", user, transport, local);
        r.content_type = Some("application/sdp".into());
        r.body = sdp_offer(local).into_bytes();
        r
    }

    /// The ACK for a non-2xx final response to this INVITE (RFC 3261 §17.1.1.3): same
    /// branch, Call-ID, From, Request-URI and CSeq number; To as in the response.
    pub fn ack_for(&self, response: &Response) -> Request {
        let mut ack = self.clone();
        ack.method = "ACK".into();
        ack.cseq_method = None;
        ack.to_tag = response.to_tag();
        ack.extra.clear();
        ack.content_type = None;
        ack.body.clear();
        ack
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.extra.push((name.into(), value.into()));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = String::new();
        s.push_str(&format!("{} {} SIP/2.0\r\n", self.method, self.uri));
        s.push_str(&format!(
            "Via: SIP/2.0/{} {};branch={};rport\r\n",
            self.transport.via(),
            self.local,
            self.branch
        ));
        s.push_str("Max-Forwards: 70\r\n");
        s.push_str(&format!(
            "From: <sip:tester@{}>;tag={}\r\n",
            self.local.ip(),
            self.from_tag
        ));
        match &self.to_tag {
            Some(tag) => s.push_str(&format!("To: {};tag={tag}\r\n", self.to)),
            None => s.push_str(&format!("To: {}\r\n", self.to)),
        }
        s.push_str(&format!("Call-ID: {}\r\n", self.call_id));
        let cseq_method = self.cseq_method.as_deref().unwrap_or(&self.method);
        s.push_str(&format!("CSeq: {} {cseq_method}\r\n", self.cseq));
        if self.method != "ACK" {
            s.push_str(&format!(
                "Contact: <sip:tester@{};transport={}>\r\n",
                self.local,
                self.transport.via().to_ascii_lowercase()
            ));
        }
        for (n, v) in &self.extra {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(ct) = &self.content_type {
            s.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        s.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = s.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A SIP response as received, lightly parsed (enough for assertions).
#[derive(Debug, Clone)]
pub struct Response {
    pub code: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub raw: Vec<u8>,
}

/// Long form of a compact header name (RFC 3261 §7.3.3 and extensions).
pub fn long_header_name(name: &str) -> String {
    let long = match name.to_ascii_lowercase().as_str() {
        "v" => "via",
        "i" => "call-id",
        "f" => "from",
        "t" => "to",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        "s" => "subject",
        "e" => "content-encoding",
        "o" => "event",
        "r" => "refer-to",
        "b" => "referred-by",
        "u" => "allow-events",
        "x" => "session-expires",
        other => return other.to_string(),
    };
    long.to_string()
}

impl Response {
    /// Parses a whole message; `None` if it is not a SIP response.
    pub fn parse(raw: &[u8]) -> Option<Response> {
        let end = find(raw, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let rest = status_line.strip_prefix("SIP/2.0 ")?;
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().ok()?;
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            let (n, v) = line.split_once(':')?;
            headers.push((long_header_name(n.trim()), v.trim().to_string()));
        }
        Some(Response {
            code,
            reason: reason.to_string(),
            headers,
            body: raw[end + 4..].to_vec(),
            raw: raw.to_vec(),
        })
    }

    /// First value of header `name` (case-insensitive, compact forms accepted).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = long_header_name(name);
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, comma-separated lists split.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let name = long_header_name(name);
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, v)| v.split(',').map(|p| p.trim().to_string()))
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// The tag parameter of To, if any.
    pub fn to_tag(&self) -> Option<String> {
        let to = self.header("to")?;
        tag_param(to)
    }

    /// The method named in CSeq.
    pub fn cseq_method(&self) -> Option<String> {
        self.header("cseq")?
            .split_whitespace()
            .nth(1)
            .map(str::to_string)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// The `tag` parameter of a From/To value.
pub fn tag_param(value: &str) -> Option<String> {
    // Parameters after the closing '>' when there is one, else after the URI.
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    params
        .split(';')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("tag"))
        .map(|(_, v)| v.trim().to_string())
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// If `buf` starts with one whole SIP message (framed by Content-Length, 0 when absent),
/// its length.
pub fn complete_message_len(buf: &[u8]) -> Option<usize> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut cl = 0usize;
    for line in head.split("\r\n").skip(1) {
        if let Some((n, v)) = line.split_once(':') {
            if long_header_name(n.trim()) == "content-length" {
                cl = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let total = end + 4 + cl;
    (buf.len() >= total).then_some(total)
}

// ---------------------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------------------

/// A UDP socket on loopback talking to one server address.
pub struct UdpClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl UdpClient {
    pub fn new(server: SocketAddr) -> UdpClient {
        Self::bind("127.0.0.1:0".parse().unwrap(), server)
    }

    pub fn bind(local: SocketAddr, server: SocketAddr) -> UdpClient {
        let sock = UdpSocket::bind(local).unwrap_or_else(|e| panic!("bind UDP {local}: {e}"));
        UdpClient { sock, server }
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    pub fn send(&self, bytes: &[u8]) {
        self.sock
            .send_to(bytes, self.server)
            .unwrap_or_else(|e| panic!("UDP send of {} bytes: {e}", bytes.len()));
    }

    pub fn send_request(&self, req: &Request) {
        self.send(&req.to_bytes());
    }

    /// One datagram within `timeout`, or `None`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => return Some(buf[..n].to_vec()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                // ICMP port unreachable from an earlier send; keep listening.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => panic!("UDP recv: {e}"),
            }
        }
    }

    /// Every SIP response received until a final one (≥ 200) arrives or `timeout` passes.
    pub fn responses_until_final(&self, timeout: Duration) -> Vec<Response> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while let Some(d) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            match Response::parse(&d) {
                Some(r) => {
                    let fin = r.code >= 200;
                    out.push(r);
                    if fin {
                        break;
                    }
                }
                None => panic!(
                    "received something that is not a SIP response: {:?}",
                    String::from_utf8_lossy(&d)
                ),
            }
        }
        out
    }

    /// The final response, skipping provisional ones; panics after `timeout`.
    pub fn final_response(&self, timeout: Duration) -> Response {
        let all = self.responses_until_final(timeout);
        match all.last() {
            Some(r) if r.code >= 200 => r.clone(),
            _ => panic!(
                "no final response within {timeout:?} (got {:?})",
                all.iter().map(|r| r.code).collect::<Vec<_>>()
            ),
        }
    }

    /// Sends `req` and returns its final response.
    pub fn request(&self, req: &Request) -> Response {
        self.send_request(req);
        self.final_response(Duration::from_secs(5))
    }
}

/// A stream (TCP) connection with its own read buffer.
pub struct TcpClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

/// What a read on a stream produced.
#[derive(Debug)]
pub enum StreamRead {
    Message(Vec<u8>),
    Timeout,
    Closed,
}

impl TcpClient {
    pub fn connect(addr: SocketAddr) -> io::Result<TcpClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(TcpClient {
            stream,
            buf: Vec::new(),
            closed: false,
        })
    }

    pub fn local(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    /// Writes everything; errors (the peer closed early) are returned, not panicked on.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    pub fn send_request(&mut self, req: &Request) {
        self.send(&req.to_bytes()).expect("TCP send");
    }

    /// Reads more bytes into the buffer; false on timeout, marks `closed` on EOF/reset.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || self.closed {
            return false;
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// Raw bytes received within `timeout` (at least one read), for keep-alive checks.
    pub fn read_raw(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        while self.buf.is_empty() && self.fill(deadline) {}
        std::mem::take(&mut self.buf)
    }

    /// The next whole SIP message (stray CRLFs before it skipped).
    pub fn read_message(&mut self, timeout: Duration) -> StreamRead {
        let deadline = Instant::now() + timeout;
        loop {
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(n) = complete_message_len(&self.buf) {
                let msg: Vec<u8> = self.buf.drain(..n).collect();
                return StreamRead::Message(msg);
            }
            if self.closed {
                return StreamRead::Closed;
            }
            if !self.fill(deadline) {
                if self.closed {
                    return StreamRead::Closed;
                }
                if Instant::now() >= deadline {
                    return StreamRead::Timeout;
                }
            }
        }
    }

    /// Responses until a final one, the connection closing, or `timeout`.
    pub fn responses_until_final(&mut self, timeout: Duration) -> (Vec<Response>, StreamRead) {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            match self.read_message(deadline.saturating_duration_since(Instant::now())) {
                StreamRead::Message(m) => {
                    let r = Response::parse(&m).unwrap_or_else(|| {
                        panic!(
                            "received something that is not a SIP response: {:?}",
                            String::from_utf8_lossy(&m)
                        )
                    });
                    let fin = r.code >= 200;
                    out.push(r);
                    if fin {
                        return (out, StreamRead::Message(Vec::new()));
                    }
                }
                end => return (out, end),
            }
        }
    }

    pub fn final_response(&mut self, timeout: Duration) -> Response {
        let (all, end) = self.responses_until_final(timeout);
        match all.last() {
            Some(r) if r.code >= 200 => r.clone(),
            _ => panic!(
                "no final response within {timeout:?} (got {:?}, then {end:?})",
                all.iter().map(|r| r.code).collect::<Vec<_>>()
            ),
        }
    }

    pub fn request(&mut self, req: &Request) -> Response {
        self.send_request(req);
        self.final_response(Duration::from_secs(5))
    }

    /// Whether the peer closes the connection within `timeout` (data read meanwhile is
    /// discarded).
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.closed && Instant::now() < deadline {
            self.fill(deadline);
            self.buf.clear();
        }
        self.closed
    }
}

/// Sends a good OPTIONS over UDP; its final response within 3 s, if any.
pub fn try_udp_options(server: SocketAddr) -> Option<Response> {
    let c = UdpClient::new(server);
    c.send_request(&Request::options(Transport::Udp, c.local()));
    c.responses_until_final(Duration::from_secs(3))
        .into_iter()
        .find(|r| r.code >= 200)
}

/// Sends a good OPTIONS over a new TCP connection; its final response within 3 s, if any.
pub fn try_tcp_options(server: SocketAddr) -> Option<Response> {
    let mut c = TcpClient::connect(server).ok()?;
    let local = c.local();
    c.send(&Request::options(Transport::Tcp, local).to_bytes())
        .ok()?;
    let (all, _) = c.responses_until_final(Duration::from_secs(3));
    all.into_iter().find(|r| r.code >= 200)
}

/// Sends a good OPTIONS over UDP and returns its final response.
pub fn udp_options(server: SocketAddr) -> Response {
    let c = UdpClient::new(server);
    c.request(&Request::options(Transport::Udp, c.local()))
}

/// Sends a good OPTIONS over a new TCP connection and returns its final response.
pub fn tcp_options(server: SocketAddr) -> Response {
    let mut c = TcpClient::connect(server).expect("TCP connect");
    let local = c.local();
    c.request(&Request::options(Transport::Tcp, local))
}

// ---------------------------------------------------------------------------------------
// External tools: SIPp and openssl
// ---------------------------------------------------------------------------------------

/// The result of one SIPp run.
#[derive(Debug)]
pub struct SippRun {
    /// Exit code (0: every call succeeded; 1: some failed; 99: no call processed); `None`
    /// when SIPp had to be killed.
    pub code: Option<i32>,
    pub output: String,
    pub errors: String,
    pub messages: String,
}

impl SippRun {
    pub fn assert_success(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "SIPp did not succeed.\n--- SIPp errors ---\n{}\n--- SIPp messages ---\n{}\n--- SIPp output (tail) ---\n{}",
            self.errors,
            tail(&self.messages, 120),
            tail(&self.output, 60)
        );
    }
}

/// Runs SIPp once with a scenario from `tests/sipp/` against `target`, in the foreground,
/// bounded by `-timeout` and by a hard kill after `timeout` + 10 s.
///
/// `transport` is SIPp's `-t` value (`u1`, `t1`). SIPp's own port is a fresh free one.
pub fn run_sipp(
    scenario: &str,
    target: SocketAddr,
    transport: &str,
    calls: u32,
    timeout: Duration,
    extra: &[&str],
) -> SippRun {
    let dir = tempfile::Builder::new()
        .prefix("dialtone-sipp-")
        .tempdir()
        .unwrap();
    let errors = dir.path().join("errors.log");
    let messages = dir.path().join("messages.log");
    let output = dir.path().join("output.log");
    let port = free_port_udp_tcp();
    let mut cmd = Command::new("sipp");
    cmd.arg("-sf")
        .arg(sipp_scenario(scenario))
        .args(["-t", transport, "-i", "127.0.0.1"])
        .args(["-p", &port.to_string()])
        .args(["-m", &calls.to_string()])
        .args(["-timeout", &format!("{}s", timeout.as_secs().max(1))])
        .arg("-timeout_error")
        .arg("-nostdin")
        .arg("-trace_err")
        .arg("-error_file")
        .arg(&errors)
        .arg("-trace_msg")
        .arg("-message_file")
        .arg(&messages)
        .args(extra)
        .arg(target.to_string())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(File::create(&output).unwrap()))
        .stderr(Stdio::from(
            File::options().append(true).open(&output).unwrap(),
        ));
    let mut child = cmd
        .spawn()
        .expect("run sipp (install it with: apt-get install sip-tester)");
    let deadline = Instant::now() + timeout + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    SippRun {
        code,
        output: read(&output),
        errors: read(&errors),
        messages: read(&messages),
    }
}

/// Runs `openssl` with `args` in `dir`, panicking with its output on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a TLS exchange through `openssl s_client` produced.
#[derive(Debug)]
pub struct TlsExchange {
    /// The first final response read, if any.
    pub response: Option<Response>,
    /// Whether the connection ended (s_client exited) within the wait.
    pub closed: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Connects with `openssl s_client -quiet` plus `args`, writes `message`, and reads until a
/// final SIP response arrives, the connection ends, or `timeout` passes.
pub fn tls_exchange(
    addr: SocketAddr,
    args: &[&str],
    message: &[u8],
    timeout: Duration,
) -> TlsExchange {
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    let mut stdin = child.stdin.take().unwrap();
    let collected = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = collected.clone();
    let reader = thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let mut stderr_pipe = child.stderr.take().unwrap();
    let err_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    // The server may already have closed the connection; a failed write is an outcome.
    let _ = stdin.write_all(message);
    let _ = stdin.flush();

    let deadline = Instant::now() + timeout;
    let mut response = None;
    let mut closed = false;
    loop {
        {
            let buf = collected.lock().unwrap();
            let mut rest: &[u8] = &buf;
            while let Some(n) = complete_message_len(rest) {
                if let Some(r) = Response::parse(&rest[..n]) {
                    if r.code >= 200 {
                        response = Some(r);
                        break;
                    }
                }
                rest = &rest[n..];
            }
        }
        if response.is_some() {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            closed = true;
            // One last look at what arrived before the end.
            thread::sleep(Duration::from_millis(50));
            let buf = collected.lock().unwrap();
            if let Some(n) = complete_message_len(&buf) {
                response = Response::parse(&buf[..n]).filter(|r| r.code >= 200);
            }
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    let stdout = String::from_utf8_lossy(&collected.lock().unwrap()).into_owned();
    TlsExchange {
        response,
        closed,
        stdout,
        stderr,
    }
}
