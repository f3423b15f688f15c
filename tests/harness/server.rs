//! The server under test: the real `dialtone` binary on free loopback ports, with the
//! shipped config file overridden through `DIALTONE__…` environment variables, a database
//! in its own temporary directory, and its log in a file there. Killed on drop; the tail of
//! its log is printed when the test failed.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::http::http_request;
use super::ports::{free_port_block, free_tcp_port, free_udp_tcp_port};
use super::{print_log_if_failing, read_text, tail, REPO};

/// The API key every test server accepts.
pub const API_KEY: &str = "test-key-0123456789";

/// How many RTP ports each server gets (its own block, so parallel servers never share).
const RTP_PORTS: u16 = 64;

/// The binary under test. `DIALTONE_TEST_BIN` may point at another build (e.g. a release
/// binary) to run the same suite against it.
pub fn binary() -> PathBuf {
    match std::env::var_os("DIALTONE_TEST_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_dialtone")),
    }
}

/// How to start a server. Defaults: SIP over UDP and TCP on one free port, TLS off, HTTP on
/// a free port, a block of RTP ports, the shipped `config/default.toml`, API key
/// [`API_KEY`], a 1 s shutdown grace period, log filter `info,dialtone=debug` (or
/// `DIALTONE_TEST_LOG`).
#[derive(Debug)]
pub struct ServerBuilder {
    env: Vec<(String, String)>,
    tls: bool,
    config: PathBuf,
}

impl ServerBuilder {
    /// Sets an environment variable for the server (`DIALTONE__SECTION__KEY` overrides a
    /// setting). Applied after the harness's own, so it wins.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Listens for SIP over TLS on a free port; the caller supplies `DIALTONE__TLS__CERT`
    /// and `KEY` (and `CLIENT_CA`, `TRUNK_CA` as needed) through [`ServerBuilder::env`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Uses another config file than `config/default.toml`.
    pub fn config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = path.into();
        self
    }

    /// Starts the server and waits until it has started (at most 20 s): see
    /// [`Server::wait_started`]. Retries on fresh ports when the chosen ones were taken
    /// meanwhile by a parallel test.
    pub fn start(self) -> Server {
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let mut server = self.spawn();
            match server.wait_started(Duration::from_secs(20)) {
                Ok(()) => return server,
                Err(log) => {
                    let lower = log.to_lowercase();
                    if !(lower.contains("in use") || lower.contains("cannot bind")) {
                        panic!("dialtone did not start; its log:\n{log}");
                    }
                    last_log = log;
                }
            }
        }
        panic!("dialtone could not bind its ports after 5 attempts; last log:\n{last_log}");
    }

    /// Starts the process without waiting for it to serve: for tests of how it fails to
    /// start.
    pub fn spawn(&self) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("dialtone-test-")
            .tempdir()
            .expect("create a temp dir");
        let sip_port = free_udp_tcp_port();
        let http_port = free_tcp_port();
        let tls_port = self.tls.then(free_tcp_port);
        let rtp_lo = free_port_block(RTP_PORTS);
        let rtp_ports = (rtp_lo, rtp_lo + RTP_PORTS - 1);
        let log_path = dir.path().join("dialtone.log");
        let log = File::create(&log_path).expect("create the server log");

        let mut cmd = Command::new(binary());
        cmd.arg("--config").arg(&self.config);
        cmd.current_dir(dir.path());
        // Nothing from the caller's environment leaks into the server's configuration.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DIALTONE__") {
                cmd.env_remove(&key);
            }
        }
        cmd.env_remove("RUST_LOG");
        let log_filter =
            std::env::var("DIALTONE_TEST_LOG").unwrap_or_else(|_| "info,dialtone=debug".into());
        let sip = format!("127.0.0.1:{sip_port}");
        cmd.env("DIALTONE__SIP__UDP", &sip)
            .env("DIALTONE__SIP__TCP", &sip)
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
                format!("sqlite://{}/data/dialtone.db", dir.path().display()),
            )
            .env(
                "DIALTONE__MEDIA__RTP_PORTS",
                format!("{}-{}", rtp_ports.0, rtp_ports.1),
            )
            .env("DIALTONE__MEDIA__PUBLIC_IP", "127.0.0.1")
            .env("DIALTONE__SHUTDOWN__GRACE_PERIOD_MS", "1000")
            .env("DIALTONE__LOG__FILTER", log_filter)
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary().display()));
        Server {
            child,
            exit: None,
            sip_port,
            http_port,
            tls_port,
            rtp_ports,
            log_path,
            dir,
        }
    }
}

/// A running `dialtone` process. Killed on drop; its log tail is printed if the test failed.
pub struct Server {
    child: Child,
    exit: Option<ExitStatus>,
    sip_port: u16,
    http_port: u16,
    tls_port: Option<u16>,
    rtp_ports: (u16, u16),
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    /// How to start a server other than with the defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            env: Vec::new(),
            tls: false,
            config: Path::new(REPO).join("config/default.toml"),
        }
    }

    /// Starts a server with the defaults.
    pub fn start() -> Server {
        Server::builder().start()
    }

    /// Starts a server with these environment overrides.
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        env.iter()
            .fold(Server::builder(), |b, (k, v)| b.env(k, *v))
            .start()
    }

    /// Where SIP is served over UDP and TCP (one port for both).
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port))
    }

    /// Where SIP is served over TLS; panics when started without [`ServerBuilder::tls`].
    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port.expect("TLS not enabled")))
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// `http://host:port`, for clients that take a base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// The RTP port range the server was given (inclusive).
    pub fn rtp_ports(&self) -> (u16, u16) {
        self.rtp_ports
    }

    /// The server's temporary working directory; tests put their own files there too.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The SQLite database file (its directory does not exist until the server makes it).
    pub fn db_path(&self) -> PathBuf {
        self.dir().join("data/dialtone.db")
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the server logged so far (stderr and stdout).
    pub fn log(&self) -> String {
        read_text(&self.log_path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited (never blocks).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait on dialtone");
        }
        self.exit
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

    /// Panics with the server's log when the process is no longer running.
    pub fn assert_alive(&mut self, context: &str) {
        if let Some(status) = self.try_exit() {
            panic!(
                "dialtone is no longer running after {context} ({status}); its log:\n{}",
                tail(&self.log(), 200)
            );
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, ...) through `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits until the server has started; on failure returns its log.
    ///
    /// `/healthz` answers 200 as soon as HTTP is served, but start-up goes on after that:
    /// the built-in echo agent is created, and only then are the signal handlers installed
    /// (a SIGTERM before that kills the process outright). The server logs
    /// `dialtone started` when it is done, so this waits for that line as well, which needs
    /// a log filter (`DIALTONE_TEST_LOG`) that keeps `info` for `dialtone`.
    fn wait_started(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return Err(format!("(exited with {status})\n{}", self.log()));
            }
            if let Ok(r) = http_request(self.http_addr(), "GET", "/healthz", &[], None) {
                if r.status == 200 && self.log().contains("dialtone started") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "(no 200 from /healthz and `dialtone started` in the log within {limit:?})\n{}",
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let what = format!("dialtone log ({})", self.log_path.display());
        print_log_if_failing(&what, &self.log());
    }
}
