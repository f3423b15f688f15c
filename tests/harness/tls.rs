//! TLS for the tests: throwaway certificates ([`Pki`]), and OpenSSL's command-line client
//! and server as TLS peers (an implementation independent of the server's rustls).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::ports::free_tcp_port;
use super::require_tool;
use super::sip::{complete_message_len, SipMsg};

/// What a leaf certificate is for (its extended key usage).
#[derive(Debug, Clone, Copy)]
pub enum Usage {
    Server,
    Client,
    /// No extended key usage: anything.
    Any,
}

/// Throwaway certificate authorities and the certificates they sign, as PEM files
/// (`name.pem`, `name.key`) in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
    issuers: HashMap<String, (Certificate, KeyPair)>,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            dir: tempfile::Builder::new()
                .prefix("dialtone-pki-")
                .tempdir()
                .expect("create a temp dir"),
            issuers: HashMap::new(),
        }
    }

    /// A file of the PKI (e.g. `ca.pem`), as a string for environment variables and
    /// command lines.
    pub fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A certificate authority `name` (common name `cn`) that can sign leaves.
    pub fn ca(&mut self, name: &str, cn: &str) {
        let (params, key) = params(Vec::new(), cn, true);
        let cert = params.self_signed(&key).expect("self-sign a CA");
        self.write(name, &cert, &key);
        self.issuers.insert(name.to_string(), (cert, key));
    }

    /// A certificate for `names` (IP addresses or DNS names), common name `cn`, signed by
    /// the CA `issuer`.
    pub fn leaf(&mut self, name: &str, issuer: &str, cn: &str, names: &[&str], usage: Usage) {
        let (mut params, key) = params(names.iter().map(|n| n.to_string()).collect(), cn, false);
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Any => Vec::new(),
        };
        let (ca, ca_key) = self
            .issuers
            .get(issuer)
            .unwrap_or_else(|| panic!("no CA named {issuer}"));
        let cert = params
            .signed_by(&key, ca, ca_key)
            .expect("sign a certificate");
        self.write(name, &cert, &key);
    }

    /// A self-signed certificate for `names`, marked as a CA so that a peer can trust it
    /// directly as its root.
    pub fn self_signed(&mut self, name: &str, names: &[&str]) {
        let (params, key) = params(names.iter().map(|n| n.to_string()).collect(), name, true);
        let cert = params.self_signed(&key).expect("self-sign a certificate");
        self.write(name, &cert, &key);
    }

    /// `name.pem` and `name.key` in one file (`name.bundle.pem`), as some peers want.
    pub fn bundle(&self, name: &str) -> String {
        let cert = std::fs::read_to_string(self.path(&format!("{name}.pem"))).unwrap();
        let key = std::fs::read_to_string(self.path(&format!("{name}.key"))).unwrap();
        let path = self.path(&format!("{name}.bundle.pem"));
        std::fs::write(&path, format!("{cert}{key}")).unwrap();
        path.display().to_string()
    }

    fn write(&self, name: &str, cert: &Certificate, key: &KeyPair) {
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// Certificate parameters (P-256 key) for `names`, common name `cn`: a CA's (signs
/// certificates) or a leaf's (signs handshakes).
fn params(names: Vec<String>, cn: &str, ca: bool) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().expect("generate a key");
    let mut params = CertificateParams::new(names).expect("certificate names");
    params.distinguished_name.push(DnType::CommonName, cn);
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    (params, key)
}

/// What a TLS exchange through `openssl s_client` produced.
#[derive(Debug)]
pub struct TlsExchange {
    /// The first final response read, if any.
    pub response: Option<SipMsg>,
    /// Whether the connection ended (s_client exited) within the wait.
    pub closed: bool,
    pub stdout: String,
    pub stderr: String,
}

/// The first final SIP response among the whole messages at the start of `buf`.
fn first_final(buf: &[u8]) -> Option<SipMsg> {
    let mut rest = buf;
    while let Some(n) = complete_message_len(rest) {
        if let Some(r) = SipMsg::parse_response(&rest[..n]).filter(|r| r.code() >= 200) {
            return Some(r);
        }
        rest = &rest[n..];
    }
    None
}

/// Connects with `openssl s_client -quiet` plus `args`, writes `message`, and reads until a
/// final SIP response arrives, the connection ends, or `timeout` passes.
pub fn tls_exchange(
    addr: SocketAddr,
    args: &[&str],
    message: &[u8],
    timeout: Duration,
) -> TlsExchange {
    require_tool("openssl");
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
    let mut closed = false;
    let response = loop {
        if let Some(r) = first_final(&collected.lock().unwrap()) {
            break Some(r);
        }
        if child.try_wait().unwrap().is_some() {
            closed = true;
            // One last look at what arrived before the end.
            thread::sleep(Duration::from_millis(50));
            break first_final(&collected.lock().unwrap());
        }
        if Instant::now() > deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
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

/// `openssl s_server` on a free loopback port with a given certificate: a TLS peer that
/// completes handshakes and nothing more. Killed on drop.
pub struct TlsServer {
    child: Child,
    pub addr: SocketAddr,
}

impl TlsServer {
    /// Starts it with `cert` and `key` (PEM paths) and waits until it accepts connections.
    pub fn start(cert: &str, key: &str) -> TlsServer {
        require_tool("openssl");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-accept", &addr.to_string()])
            .args(["-cert", cert, "-key", key])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_server");
        let server = TlsServer { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not listen");
            thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
