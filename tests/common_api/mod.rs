//! Starts the real `dialtone` binary for API tests: free ports, a fresh SQLite file in a
//! temp dir, one API key, SIP TCP off. The process is killed when the handle drops.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)] // not every test reads every field
pub struct Server {
    pub base_url: String,
    pub key: String,
    pub http: SocketAddr,
    pub db_path: PathBuf,
    /// The server's stderr, when started with [`Server::start_logging`].
    pub log_path: Option<PathBuf>,
    child: Child,
    _dir: tempfile::TempDir,
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Server {
    /// Starts the binary and waits until `/healthz` answers 200.
    #[allow(dead_code)] // not every test binary uses it
    pub fn start() -> Server {
        Server::start_with(None)
    }

    /// Like [`Server::start`], with `RUST_LOG=rust_log` and stderr written to
    /// [`Server::log_path`], for tests that read the log.
    #[allow(dead_code)] // not every test binary reads logs
    pub fn start_logging(rust_log: &str) -> Server {
        Server::start_with(Some(rust_log))
    }

    fn start_with(rust_log: Option<&str>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log_path = rust_log.map(|_| dir.path().join("server.log"));
        let db_path = dir.path().join("data").join("t.db");
        let key = "sdk-test-key-0123456789".to_owned();
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml");
        // A port can be taken between probing and binding; retry a few times.
        for _ in 0..5 {
            let http = free_tcp();
            let mut child = Command::new(env!("CARGO_BIN_EXE_dialtone"))
                .args(["--config", config])
                .env("DIALTONE__HTTP__LISTEN", http.to_string())
                .env("DIALTONE__SIP__UDP", free_udp().to_string())
                .env("DIALTONE__SIP__TCP", "")
                .env("DIALTONE__SIP__TLS", "")
                .env(
                    "DIALTONE__DATABASE__URL",
                    format!("sqlite://{}", db_path.display()),
                )
                .env("DIALTONE__API__KEYS", &key)
                .env("RUST_LOG", rust_log.unwrap_or("warn"))
                .stdout(Stdio::null())
                .stderr(match &log_path {
                    Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                    None => Stdio::inherit(),
                })
                .spawn()
                .expect("start the dialtone binary");
            if wait_healthy(http, &mut child) {
                return Server {
                    base_url: format!("http://{http}"),
                    key,
                    http,
                    db_path,
                    log_path,
                    child,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dialtone did not become healthy");
    }
}

/// Polls `GET /healthz` for up to 20 s; false if the process exits or never answers 200.
fn wait_healthy(addr: SocketAddr, child: &mut Child) -> bool {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
