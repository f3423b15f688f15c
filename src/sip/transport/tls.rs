//! SIP over TLS (RFC 3261 §26.2.1 / RFC 5630), optionally mutual.
//!
//! rustls with the ring provider only, TLS 1.2 and 1.3. With `tls.client_ca` set, every
//! client must present a certificate chaining to it, or the handshake fails before a
//! byte of SIP is read. Handshakes are bounded in time and count against the connection
//! limits from the moment of accept.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, warn};

use super::stream::{spawn_connection, ConnHandle, Slot};
use super::{Kind, Shared, TransportError};
use crate::config::TlsSettings;
use crate::metrics;

const TRANSPORT: &str = "TLS";
/// A handshake not done by then is abandoned (slowloris on the handshake).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(what: &str, path: &Path, e: impl std::fmt::Display) -> TransportError {
    TransportError::TlsConfig(format!("{what} {}: {e}", path.display()))
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| config_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(what, path, e))?;
    if certs.is_empty() {
        return Err(config_error(what, path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| config_error("tls.key", path, e))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "tls.client_ca")? {
        roots
            .add(cert)
            .map_err(|e| config_error("tls.client_ca", path, e))?;
    }
    Ok(roots)
}

/// The listener's configuration: our chain and key, and client verification when
/// `client_ca` is set.
pub(crate) fn server_config(tls: &TlsSettings) -> Result<Arc<ServerConfig>, TransportError> {
    let provider = provider();
    let certs = load_certs(&tls.cert, "tls.cert")?;
    let key = load_key(&tls.key)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| config_error("tls.client_ca", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    tracing::info!(
        mutual = tls.client_ca.is_some(),
        "TLS server certificate loaded"
    );
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| config_error("tls.cert/tls.key", &tls.cert, e))?;
    Ok(Arc::new(config))
}

/// The configuration for connections we open (to trunks). Their certificates are verified
/// against the public web roots, as a trunk provider's `*.pstn.example.com` certificate
/// needs, plus `tls.trunk_ca` and `tls.client_ca` when set (a private PKI). Our own chain
/// is offered for peers that want mutual TLS.
pub(crate) fn client_config(tls: &TlsSettings) -> Result<Arc<ClientConfig>, TransportError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for ca in [&tls.trunk_ca, &tls.client_ca].into_iter().flatten() {
        roots.roots.extend(load_roots(ca)?.roots);
    }
    let certs = load_certs(&tls.cert, "tls.cert")?;
    let key = load_key(&tls.key)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TransportError::TlsConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| config_error("tls.cert/tls.key", &tls.cert, e))?;
    Ok(Arc::new(config))
}

/// Binds `addr` and spawns the accept loop; returns the bound address.
pub(crate) async fn start(
    addr: SocketAddr,
    config: Arc<ServerConfig>,
    shared: Arc<Shared>,
) -> Result<SocketAddr, TransportError> {
    let listener = super::tcp::bind(Kind::Tls, addr).await?;
    let local = listener
        .local_addr()
        .map_err(|source| TransportError::Bind {
            kind: TRANSPORT,
            addr,
            source,
        })?;
    tracing::info!(%local, "SIP TLS listening");
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(super::tcp::accept_loop(
        listener,
        Kind::Tls,
        Arc::clone(&shared),
        move |stream, slot, shared| {
            tokio::spawn(handshake(acceptor.clone(), stream, slot, shared));
        },
    ));
    Ok(local)
}

/// Runs the server handshake (bounded, abandoned on shutdown), then serves the stream.
async fn handshake(acceptor: TlsAcceptor, stream: TcpStream, slot: Slot, shared: Arc<Shared>) {
    let (peer, local) = match (stream.peer_addr(), stream.local_addr()) {
        (Ok(p), Ok(l)) => (p, l),
        _ => return,
    };
    let mut shutdown = shared.shutdown.clone();
    let result = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
        _ = super::shutdown_signalled(&mut shutdown) => return,
    };
    let error = match result {
        Ok(Ok(tls)) => {
            spawn_connection(tls, slot, local, shared);
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    metrics::drop("tls_handshake", TRANSPORT);
    if let Some(suppressed) = shared.refusal_log.permit() {
        warn!(%peer, %error, suppressed, "TLS handshake failed");
    } else {
        debug!(%peer, %error, "TLS handshake failed");
    }
}

/// Opens an outbound TLS connection, verifying the server as `host` (or its IP address),
/// registered and read like an accepted one.
pub(crate) async fn connect(
    addr: SocketAddr,
    host: Option<&str>,
    connector: &TlsConnector,
    shared: Arc<Shared>,
) -> Result<ConnHandle, TransportError> {
    let error = |reason: String| TransportError::Connect {
        kind: TRANSPORT,
        addr,
        reason,
    };
    let name = match host {
        Some(h) => ServerName::try_from(h.to_owned())
            .map_err(|e| error(format!("bad server name {h:?}: {e}")))?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let stream = super::connect_tcp(Kind::Tls, addr).await?;
    let local = stream.local_addr().map_err(|e| error(e.to_string()))?;
    // Held through the handshake so our own handshakes count against the totals too.
    let slot = shared.table.reserve_outbound(Kind::Tls, addr);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
        .await
        .map_err(|_| error("TLS handshake timed out".into()))?
        .map_err(|e| error(format!("TLS handshake: {e}")))?;
    Ok(spawn_connection(tls, slot, local, shared))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::ClientConfig;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    use super::super::testutil::{next, nothing, settings, start, write_file, Running};
    use super::super::{Kind, Target};
    use super::{provider, VERSIONS};

    const A: &[u8] = b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n";

    /// A throwaway CA with a server certificate (for 127.0.0.1) and a client certificate.
    struct Pki {
        dir: tempfile::TempDir,
        ca_pem: String,
        server: (String, String),
        client: (String, String),
    }

    fn pki() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca_pem: ca.pem(),
            server: leaf(vec!["127.0.0.1".into(), "sip.test".into()]),
            client: leaf(vec!["client.test".into()]),
        }
    }

    /// Starts a TLS listener with the PKI's server certificate, mutual when `mutual`.
    async fn tls_server(pki: &Pki, mutual: bool) -> Running {
        let cert = write_file(pki.dir.path(), "server.pem", &pki.server.0);
        let key = write_file(pki.dir.path(), "server.key", &pki.server.1);
        let ca = write_file(pki.dir.path(), "ca.pem", &pki.ca_pem);
        let client_ca = if mutual {
            format!("client_ca = \"{ca}\"\n")
        } else {
            String::new()
        };
        let s = settings(
            "tls = \"127.0.0.1:0\"",
            &format!("cert = \"{cert}\"\nkey = \"{key}\"\n{client_ca}"),
        );
        start(&s).await
    }

    fn client(pki: &Pki, with_cert: bool) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .unwrap()
            .with_root_certificates(roots);
        let config = if with_cert {
            let chain = vec![CertificateDer::from_pem_slice(pki.client.0.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(pki.client.1.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth()
        };
        TlsConnector::from(Arc::new(config))
    }

    fn ip_name() -> ServerName<'static> {
        ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().unwrap().into())
    }

    #[tokio::test]
    async fn handshake_then_message_arrives_and_reply_returns() {
        let pki = pki();
        let mut t = tls_server(&pki, false).await;
        let addr = t.transports.local_addr(Kind::Tls).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut c = client(&pki, false).connect(ip_name(), tcp).await.unwrap();
        c.write_all(A).await.unwrap();
        c.flush().await.unwrap();
        let m = next(&mut t.inbound).await;
        assert_eq!(&m.data[..], A);
        assert_eq!(m.kind, Kind::Tls);

        let reply = Bytes::from_static(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        let target = Target {
            kind: Kind::Tls,
            addr: m.source,
            conn: m.conn,
        };
        t.transports.send(target, reply.clone()).await.unwrap();
        let mut buf = vec![0u8; reply.len()];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, reply);
    }

    #[tokio::test]
    async fn mutual_tls_refuses_a_client_without_a_certificate() {
        let pki = pki();
        let mut t = tls_server(&pki, true).await;
        let addr = t.transports.local_addr(Kind::Tls).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        // With TLS 1.3 the client may believe the handshake done before the server
        // rejects it; either way, nothing it writes may arrive.
        if let Ok(mut c) = client(&pki, false).connect(ip_name(), tcp).await {
            let _ = c.write_all(A).await;
            let _ = c.flush().await;
            let mut buf = [0u8; 16];
            let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await;
            assert!(
                matches!(r, Ok(Ok(0)) | Ok(Err(_))),
                "connection should fail"
            );
        }
        nothing(&mut t.inbound).await;
        assert_eq!(t.transports.open_connections(), 0);
    }

    #[tokio::test]
    async fn mutual_tls_accepts_a_client_with_a_ca_signed_certificate() {
        let pki = pki();
        let mut t = tls_server(&pki, true).await;
        let addr = t.transports.local_addr(Kind::Tls).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut c = client(&pki, true).connect(ip_name(), tcp).await.unwrap();
        c.write_all(A).await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(&next(&mut t.inbound).await.data[..], A);
    }

    #[tokio::test]
    async fn outbound_tls_connects_verifies_and_reads() {
        let pki = pki();
        // The remote requires mutual TLS; ours trusts the same CA and presents our cert.
        let mut remote = tls_server(&pki, true).await;
        let mut local = tls_server(&pki, true).await;
        let target = Target {
            kind: Kind::Tls,
            addr: remote.transports.local_addr(Kind::Tls).unwrap(),
            conn: None,
        };
        local
            .transports
            .send_to_host(target, "sip.test", Bytes::from_static(A))
            .await
            .unwrap();
        let m = next(&mut remote.inbound).await;
        assert_eq!(&m.data[..], A);
        assert_eq!(local.transports.open_connections(), 1);

        // The remote answers on that connection; it comes up on our side.
        let back = Target {
            kind: Kind::Tls,
            addr: m.source,
            conn: m.conn,
        };
        remote
            .transports
            .send(back, Bytes::from_static(A))
            .await
            .unwrap();
        let m = next(&mut local.inbound).await;
        assert_eq!(m.source, target.addr);

        // A name the certificate does not carry fails verification.
        let other = tls_server(&pki, false).await;
        let target = Target {
            addr: other.transports.local_addr(Kind::Tls).unwrap(),
            ..target
        };
        let err = local
            .transports
            .send_to_host(target, "wrong.test", Bytes::from_static(A))
            .await;
        assert!(err.is_err());
    }
}
