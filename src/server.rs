//! Wiring: starts the transports, the SIP endpoint and the HTTP server, and runs the
//! shutdown sequence.
//!
//! Shutdown has two speeds. Graceful (SIGTERM): new transactions get 503, `/healthz`
//! reports draining, and the process waits for transactions in flight, at most the grace
//! period, then stops every task and returns. Fast (SIGINT): stop everything now.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use std::sync::Arc;

use crate::call::engine::{Engine, EngineSettings};
use crate::config::Settings;
use crate::http;
use crate::media::ports::PortPool;
use crate::metrics;
use crate::sip::endpoint::{self, Endpoint};
use crate::sip::transport::{Kind, Transports};
use crate::sip::uri::host_for_uri;
use crate::store::{self, Store, StoreError};
use crate::webhook::events::CallEvents;

/// Depth of the queue between the transports and the endpoint.
const INBOUND_QUEUE: usize = 8192;
/// How often registrations whose window passed are ended.
const REGISTRATION_SWEEP: Duration = Duration::from_secs(1);
/// On a graceful stop, how long pending call webhooks (the last calls' `call_ended`) get.
const WEBHOOK_DRAIN: Duration = Duration::from_secs(5);

/// How the process was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Graceful,
    Fast,
}

/// A running server, for `main` and for tests that embed it.
pub struct Running {
    pub engine: Engine,
    pub endpoint: Endpoint,
    pub transports: Transports,
    pub http_addr: Option<std::net::SocketAddr>,
    pub store: Store,
    /// Call-event webhooks still being delivered get [`WEBHOOK_DRAIN`] at shutdown.
    events: CallEvents,
    draining_tx: watch::Sender<bool>,
    shutdown_tx: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
    grace: Duration,
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Transport(#[from] crate::sip::transport::TransportError),
    /// The message names the setting but never its value (the URL may hold a password).
    #[error("cannot open the database (database.url): {0}")]
    Store(#[from] StoreError),
    #[error("cannot bind HTTP on {addr}: {source}")]
    HttpBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The host part handed out in `sip:{call_id}@host`: the public host, with the SIP port
/// when it is not the default 5060.
fn sip_uri_host(settings: &Settings, transports: &Transports) -> String {
    let host = host_for_uri(&settings.sip.public_host);
    let port = transports
        .local_addr(Kind::Udp)
        .or_else(|| transports.local_addr(Kind::Tcp))
        .map(|a| a.port());
    match port {
        Some(port) if port != 5060 => format!("{host}:{port}"),
        _ => host.into_owned(),
    }
}

/// The id of the built-in demo agent.
pub const ECHO_AGENT_ID: &str = "echo";

/// Makes sure the demo agent `echo` exists and points at this server's echo endpoint.
async fn ensure_echo_agent(store: &Store, http: std::net::SocketAddr) {
    let ip = match http.ip() {
        ip if ip.is_unspecified() && ip.is_ipv6() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip if ip.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!(
        "ws://{}/agents/echo",
        std::net::SocketAddr::new(ip, http.port())
    );
    let now = store::now_ms();
    let agent = crate::model::Agent {
        agent_id: ECHO_AGENT_ID.to_string(),
        agent_name: Some("built-in echo".to_string()),
        version: 0,
        response_engine: crate::model::ResponseEngine {
            kind: "audio-websocket".to_string(),
            url: url.clone(),
            audio_encoding: crate::model::AudioEncoding::Mulaw8000,
            headers: Default::default(),
        },
        webhook_url: None,
        max_call_duration_ms: 600_000,
        end_call_after_silence_ms: 60_000,
        ring_duration_ms: 30_000,
        forward_early_media: false,
        last_modification_timestamp: now,
    };
    let result = match store.get_agent(ECHO_AGENT_ID).await {
        Ok(Some(existing)) if existing.response_engine.url == url => Ok(()),
        Ok(Some(_)) => store
            .update_agent(ECHO_AGENT_ID, now, |a: &mut crate::model::Agent| {
                a.response_engine.url = url.clone();
                Ok::<(), StoreError>(())
            })
            .await
            .map(|_| ()),
        Ok(None) => store.create_agent(&agent).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => info!(agent_id = ECHO_AGENT_ID, %url, "demo echo agent ready"),
        Err(err) => warn!(%err, "could not set up the demo echo agent"),
    }
}

/// Binds every listener the configuration asks for and starts serving.
pub async fn start(settings: &Settings) -> Result<Running, StartError> {
    let store = Store::connect(&settings.database.url).await?;
    info!(backend = ?store.backend(), "database ready");
    let prometheus = metrics::install();
    let (draining_tx, draining_rx) = watch::channel(false);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);

    let transports = Transports::start(settings, inbound_tx, shutdown_rx.clone()).await?;
    let endpoint = Endpoint::new(
        transports.clone(),
        &settings.sip.limits,
        settings.sip.timers,
        draining_rx.clone(),
        settings.sip.public_host.clone(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(endpoint.clone().run(inbound_rx, shutdown_rx.clone()));
    endpoint::log_listening(&transports);

    let media_ip = settings
        .media
        .public_ip
        .or_else(|| settings.sip.public_host.parse().ok());
    let bind_ip = match media_ip {
        Some(std::net::IpAddr::V6(_)) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    if !settings.sip.dns_servers.is_empty() {
        crate::sip::resolve::SystemLookup::configure(&settings.sip.dns_servers);
        tracing::info!(servers = ?settings.sip.dns_servers, "trunk hosts resolved with the configured name servers");
    }
    let events = CallEvents::new(store.clone(), &settings.webhooks);
    let engine = Engine::new(
        endpoint.clone(),
        store.clone(),
        PortPool::new(settings.media.rtp_ports, bind_ip),
        EngineSettings {
            calls: settings.calls.clone(),
            timers: settings.sip.timers,
            media_ip,
            srtp: settings.media.srtp,
        },
        events.clone(),
    );
    endpoint.set_handler(Arc::new(engine.clone()));
    tasks.spawn({
        let sweeper = store::spawn_registration_sweeper(
            store.clone(),
            REGISTRATION_SWEEP,
            shutdown_rx.clone(),
            {
                let events = events.clone();
                move |call_id: &str| events.call_ended(call_id)
            },
        );
        async move {
            if let Err(err) = sweeper.await {
                warn!(%err, "registration sweeper stopped");
            }
        }
    });

    let mut http_addr = None;
    if let Some(addr) = settings.http.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::HttpBind { addr, source })?;
        http_addr = listener.local_addr().ok();
        let services = http::ApiServices {
            store: store.clone(),
            calls: Arc::new(engine.clone()),
            public_host: sip_uri_host(settings, &transports),
            registered_call_timeout: settings.calls.registered_call_timeout,
            events: events.clone(),
        };
        // Before serving: once /healthz answers, the API must find the demo agent.
        if settings.demo_echo_agent {
            if let Some(http) = http_addr {
                ensure_echo_agent(&store, http).await;
            }
        }
        let state = http::AppState::new(&settings.api.keys, prometheus, draining_rx, services);
        let shutdown = shutdown_rx.clone();
        tasks.spawn(async move {
            if let Err(err) = http::serve(listener, state, shutdown).await {
                warn!(%err, "HTTP server stopped");
            }
        });
        info!(http = %addr, "HTTP listening");
    }
    if transports.local_addr(Kind::Udp).is_none()
        && transports.local_addr(Kind::Tcp).is_none()
        && transports.local_addr(Kind::Tls).is_none()
    {
        warn!("no SIP transport is enabled (sip.udp, sip.tcp and sip.tls are all empty)");
    }
    Ok(Running {
        engine,
        endpoint,
        transports,
        http_addr,
        store,
        events,
        draining_tx,
        shutdown_tx,
        tasks,
        grace: settings.shutdown_grace,
    })
}

impl Running {
    /// Stops the server. Graceful: drain in-flight transactions within the grace period.
    pub async fn stop(mut self, how: Stop) {
        if how == Stop::Graceful {
            let _ = self.draining_tx.send(true);
            let in_flight = self.endpoint.in_flight();
            info!(
                in_flight,
                grace_ms = self.grace.as_millis() as u64,
                "draining: new transactions get 503"
            );
            let engine = self.engine.clone();
            let endpoint = self.endpoint.clone();
            let idle = async move {
                endpoint.wait_idle().await;
                // Live calls end on their own (BYE, agent hangup, timeouts); wait for them.
                while engine.live_calls() > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                endpoint.wait_idle().await;
            };
            match tokio::time::timeout(self.grace, idle).await {
                Ok(()) => info!("drained: no transaction in flight"),
                Err(_) => warn!(
                    in_flight = self.endpoint.in_flight(),
                    "grace period over; stopping with transactions in flight"
                ),
            }
        }
        if how == Stop::Graceful {
            // Deliveries read the store, so they go before it closes.
            self.events.drain(WEBHOOK_DRAIN).await;
        }
        let _ = self.shutdown_tx.send(true);
        // Tasks see the shutdown signal and end; give them a moment, then cut them off.
        let wait = tokio::time::timeout(Duration::from_secs(2), async {
            while self.tasks.join_next().await.is_some() {}
        });
        if wait.await.is_err() {
            self.tasks.abort_all();
        }
        // Everything committed is on disk already; closing just ends the connections cleanly.
        self.store.close().await;
        info!(?how, "stopped");
    }
}

/// SIGTERM (graceful stop) and SIGINT (fast stop), caught from the moment they are
/// installed: install them before starting, so a signal during start-up is not fatal.
pub struct Signals {
    #[cfg(unix)]
    handlers: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Installs the handlers (inside the runtime).
    pub fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let handlers = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => {
                    warn!("cannot install signal handlers; falling back to Ctrl-C only");
                    None
                }
            };
            Signals { handlers }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for the first signal.
    pub async fn wait(&mut self) -> Stop {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.handlers {
            return tokio::select! {
                _ = term.recv() => Stop::Graceful,
                _ = int.recv() => Stop::Fast,
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        Stop::Fast
    }
}
