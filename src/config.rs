//! Typed settings, loaded once at start from a TOML file with `DIALTONE__SECTION__KEY`
//! environment overrides, and validated so that a bad value stops the process with one
//! line naming the key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &["sip.allow", "sip.dns_servers", "media.allow", "api.keys"];

/// A configuration problem, always naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: cannot read {path}: {source}")]
    Load {
        path: String,
        source: config::ConfigError,
    },
    #[error("config: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The raw shape of the file; every field has a default so a partial file works.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawSettings {
    sip: RawSip,
    tls: RawTls,
    media: RawMedia,
    http: RawHttp,
    api: RawApi,
    database: RawDatabase,
    calls: RawCalls,
    shutdown: RawShutdown,
    log: RawLog,
    demo: RawDemo,
    webhooks: RawWebhooks,
    node: RawNode,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawNode {
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawWebhooks {
    signing_key: String,
    max_attempts: u32,
    timeout_ms: u64,
    max_pending: usize,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        RawWebhooks {
            signing_key: String::new(),
            max_attempts: 3,
            timeout_ms: 10_000,
            max_pending: 1000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawDemo {
    echo_agent: bool,
}

impl Default for RawDemo {
    fn default() -> Self {
        RawDemo { echo_agent: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawSip {
    udp: String,
    tcp: String,
    tls: String,
    public_host: String,
    allow: Vec<String>,
    dns_servers: Vec<String>,
    max_message_bytes: usize,
    max_headers: usize,
    max_connections_per_ip: usize,
    max_connections: usize,
    idle_connection_timeout_ms: u64,
    t1_ms: u64,
    t2_ms: u64,
    t4_ms: u64,
    rate_limit_per_ip: u32,
    rate_limit_burst: u32,
}

impl Default for RawSip {
    fn default() -> Self {
        RawSip {
            udp: "0.0.0.0:5060".into(),
            tcp: "0.0.0.0:5060".into(),
            tls: String::new(),
            public_host: "127.0.0.1".into(),
            allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
            dns_servers: Vec::new(),
            max_message_bytes: 65_535,
            max_headers: 128,
            max_connections_per_ip: 64,
            max_connections: 4096,
            idle_connection_timeout_ms: 600_000,
            t1_ms: 500,
            t2_ms: 4_000,
            t4_ms: 5_000,
            rate_limit_per_ip: 1_000,
            rate_limit_burst: 2_000,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawTls {
    cert: String,
    key: String,
    client_ca: String,
    trunk_ca: String,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawMedia {
    rtp_ports: String,
    public_ip: String,
    srtp: String,
    allow: Option<Vec<String>>,
}

impl Default for RawMedia {
    fn default() -> Self {
        RawMedia {
            rtp_ports: "20000-30000".into(),
            public_ip: String::new(),
            srtp: "optional".into(),
            allow: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawHttp {
    listen: String,
    header_read_timeout_ms: u64,
    idle_timeout_ms: u64,
    max_connections: usize,
    max_body_bytes: usize,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: "127.0.0.1:8080".into(),
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 1024,
            max_body_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawApi {
    keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawDatabase {
    url: String,
}

impl Default for RawDatabase {
    fn default() -> Self {
        RawDatabase {
            url: "sqlite://data/dialtone.db".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawCalls {
    registered_call_timeout_ms: u64,
    agent_connect_timeout_ms: u64,
    no_audio_timeout_ms: u64,
    hangup_drain_ms: u64,
    max_call_duration_ms: u64,
    max_concurrent: usize,
    inactive_timeout_ms: u64,
}

impl Default for RawCalls {
    fn default() -> Self {
        RawCalls {
            registered_call_timeout_ms: 300_000,
            agent_connect_timeout_ms: 5_000,
            no_audio_timeout_ms: 20_000,
            hangup_drain_ms: 5_000,
            max_call_duration_ms: 7_200_000,
            max_concurrent: 1000,
            inactive_timeout_ms: 600_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawShutdown {
    grace_period_ms: u64,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            grace_period_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawLog {
    filter: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            filter: "info".into(),
        }
    }
}

/// Validated settings. Listen addresses that are `None` are off.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sip: SipSettings,
    pub tls: Option<TlsSettings>,
    pub media: MediaSettings,
    pub http: HttpSettings,
    pub api: ApiSettings,
    pub database: DatabaseSettings,
    pub calls: CallSettings,
    pub shutdown_grace: Duration,
    pub log_filter: String,
    /// Whether the built-in echo agent (`agent_id` "echo") is made available at start.
    pub demo_echo_agent: bool,
    pub webhooks: WebhookSettings,
    /// This node's identity: the owner recorded on every call it carries.
    pub node_id: String,
}

/// Delivery of call events (`call_started`, `call_ended`) to agents' `webhook_url`.
#[derive(Clone)]
pub struct WebhookSettings {
    /// HMAC key of `x-retell-signature`: `webhooks.signing_key`, else the first API key (as
    /// Retell signs with the API key); `None` when there is neither. A secret: never printed.
    pub signing_key: Option<String>,
    /// Tries per event, the first included.
    pub max_attempts: u32,
    /// Budget of one try (connect, send, read the answer).
    pub timeout: Duration,
    /// Events queued or being delivered at once; more are dropped and counted.
    pub max_pending: usize,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field(
                "signing_key",
                &self.signing_key.as_ref().map(|_| "<redacted>"),
            )
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .field("max_pending", &self.max_pending)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct SipSettings {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub public_host: String,
    pub allow: Vec<IpNet>,
    /// Name servers for RFC 3263 lookups of trunk hosts; empty means the system's.
    pub dns_servers: Vec<SocketAddr>,
    pub limits: SipLimits,
    pub timers: TimerSettings,
    /// Requests per second one source address may send (sustained, and in a burst);
    /// more are dropped and counted (`rate_limited`).
    pub rate_limit: RateLimit,
}

/// A token bucket's size and refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// Bounds on what one peer may make the server hold.
#[derive(Debug, Clone, Copy)]
pub struct SipLimits {
    pub max_message_bytes: usize,
    pub max_headers: usize,
    pub max_connections_per_ip: usize,
    pub max_connections: usize,
    pub idle_connection_timeout: Duration,
}

/// RFC 3261 timer base values (T1, T2, T4).
#[derive(Debug, Clone, Copy)]
pub struct TimerSettings {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for TimerSettings {
    fn default() -> Self {
        TimerSettings {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate chaining to this CA.
    pub client_ca: Option<PathBuf>,
    /// Trunks we dial over TLS are verified against the public web roots, plus this CA
    /// (a private PKI) when set.
    pub trunk_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct MediaSettings {
    pub rtp_ports: (u16, u16),
    pub public_ip: Option<IpAddr>,
    pub srtp: SrtpMode,
    /// Who may send RTP/RTCP and be sent media (SDP addresses): `media.allow`, or
    /// `sip.allow` when unset.
    pub allow: Vec<IpNet>,
}

/// `media.srtp`: whether calls use SRTP with SDES keys. SDES keys travel in the SDP, so
/// SRTP is only ever used on calls whose signalling is TLS (see `call::engine::srtp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpMode {
    /// Plain RTP only; RTP/SAVP offers are refused.
    Off,
    /// Over TLS: RTP/SAVP offers are answered with SRTP and RTP/AVP offers with RTP; our
    /// own offers are plain RTP/AVP.
    Optional,
    /// Every call's media is SRTP: plain offers are refused and our offers are RTP/SAVP,
    /// so calls whose signalling is not TLS fail.
    Required,
}

impl SrtpMode {
    fn parse(text: &str) -> Option<SrtpMode> {
        match text.trim() {
            "off" => Some(SrtpMode::Off),
            "optional" => Some(SrtpMode::Optional),
            "required" => Some(SrtpMode::Required),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub listen: Option<SocketAddr>,
    /// A client must send its whole request head within this.
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the listen queue.
    pub max_connections: usize,
    /// Largest request body; a larger one gets 413.
    pub max_body_bytes: usize,
}

#[derive(Clone)]
pub struct ApiSettings {
    /// Bearer keys; never printed (see the Debug impl).
    pub keys: Vec<String>,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiSettings {{ keys: <{} redacted> }}", self.keys.len())
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: String,
}

#[derive(Debug, Clone)]
pub struct CallSettings {
    pub registered_call_timeout: Duration,
    /// How long the agent's websocket may take to open before the call is refused.
    pub agent_connect_timeout: Duration,
    /// After answer, how long without any RTP from the caller before the call ends as
    /// `error_no_audio_received`.
    pub no_audio_timeout: Duration,
    /// When the agent hangs up, how much of its queued audio is still played out.
    pub hangup_drain: Duration,
    /// A ceiling on every call's length, whatever its agent allows.
    pub max_call_duration: Duration,
    /// Calls set up or connected at once; more are refused (503 with Retry-After, 429 on
    /// the API).
    pub max_concurrent: usize,
    /// A call whose media direction carries no audio from the caller (hold, sendonly,
    /// recvonly, inactive) ends after this long (`inactivity`).
    pub inactive_timeout: Duration,
}

impl Settings {
    /// Loads `path`, applies `DIALTONE__…` overrides from the process environment, validates.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// Like [`Settings::load`], with an explicit environment (for tests).
    pub fn load_with_env(
        path: &Path,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, ConfigError> {
        let mut environment = config::Environment::with_prefix("DIALTONE")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .try_parsing(true);
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        if let Some(env) = env {
            environment = environment.source(Some(env));
        }
        let raw: RawSettings = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(environment)
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|source| ConfigError::Load {
                path: path.display().to_string(),
                source,
            })?;
        raw.validate()
    }
}

fn listen_addr(key: &'static str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| invalid(key, format!("'{value}' is not an ip:port listen address")))
}

/// An optional file setting: empty means unset; otherwise the file must exist.
fn optional_file(key: &'static str, value: &str) -> Result<Option<PathBuf>, ConfigError> {
    match value.trim() {
        "" => Ok(None),
        path => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(invalid(key, format!("no file at '{}'", path.display())));
            }
            Ok(Some(path))
        }
    }
}

fn positive_ms(key: &'static str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(Duration::from_millis(ms))
}

/// Parses one allowlist entry: a CIDR, or a bare address meaning just that host.
fn parse_net(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .ok()
        .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
}

/// An allowlist: CIDRs or bare addresses; empty entries are skipped.
fn parse_nets(key: &'static str, entries: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    entries
        .iter()
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            parse_net(entry)
                .ok_or_else(|| invalid(key, format!("'{entry}' is not a CIDR or IP address")))
        })
        .collect()
}

fn parse_port_range(value: &str) -> Option<(u16, u16)> {
    let (lo, hi) = value.trim().split_once('-')?;
    let lo: u16 = lo.trim().parse().ok()?;
    let hi: u16 = hi.trim().parse().ok()?;
    // RTP wants an even port per call (RFC 3550 §11), so the range must hold at least one.
    (lo > 0 && lo < hi).then_some((lo, hi))
}

impl RawSettings {
    fn validate(self) -> Result<Settings, ConfigError> {
        let sip = &self.sip;
        let udp = listen_addr("sip.udp", &sip.udp)?;
        let tcp = listen_addr("sip.tcp", &sip.tcp)?;
        let tls_addr = listen_addr("sip.tls", &sip.tls)?;
        if sip.public_host.trim().is_empty() || sip.public_host.contains(char::is_whitespace) {
            return Err(invalid("sip.public_host", "must be a host name or address"));
        }
        let allow = parse_nets("sip.allow", &sip.allow)?;
        let mut dns_servers = Vec::with_capacity(sip.dns_servers.len());
        for entry in &sip.dns_servers {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let server = entry.parse::<SocketAddr>().ok().or_else(|| {
                entry
                    .parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            dns_servers.push(server.ok_or_else(|| {
                invalid(
                    "sip.dns_servers",
                    format!("'{entry}' is not an IP address or ip:port"),
                )
            })?);
        }
        if sip.max_message_bytes < 1024 || sip.max_message_bytes > 1 << 20 {
            return Err(invalid(
                "sip.max_message_bytes",
                "must be between 1024 and 1048576",
            ));
        }
        if sip.max_headers < 16 {
            return Err(invalid("sip.max_headers", "must be at least 16"));
        }
        if sip.max_connections_per_ip == 0 || sip.max_connections == 0 {
            return Err(invalid(
                "sip.max_connections_per_ip",
                "connection limits must be greater than 0",
            ));
        }
        let timers = TimerSettings {
            t1: positive_ms("sip.t1_ms", sip.t1_ms)?,
            t2: positive_ms("sip.t2_ms", sip.t2_ms)?,
            t4: positive_ms("sip.t4_ms", sip.t4_ms)?,
        };
        if timers.t2 < timers.t1 {
            return Err(invalid("sip.t2_ms", "must not be less than sip.t1_ms"));
        }
        if sip.rate_limit_per_ip == 0 || sip.rate_limit_burst < sip.rate_limit_per_ip {
            return Err(invalid(
                "sip.rate_limit_per_ip",
                "must be greater than 0, and sip.rate_limit_burst at least as large",
            ));
        }
        let rate_limit = RateLimit {
            per_second: sip.rate_limit_per_ip,
            burst: sip.rate_limit_burst,
        };
        let limits = SipLimits {
            max_message_bytes: sip.max_message_bytes,
            max_headers: sip.max_headers,
            max_connections_per_ip: sip.max_connections_per_ip,
            max_connections: sip.max_connections,
            idle_connection_timeout: positive_ms(
                "sip.idle_connection_timeout_ms",
                sip.idle_connection_timeout_ms,
            )?,
        };

        let tls = if self.tls.cert.trim().is_empty() && self.tls.key.trim().is_empty() {
            if tls_addr.is_some() {
                return Err(invalid(
                    "tls.cert",
                    "sip.tls is set, so tls.cert and tls.key are required",
                ));
            }
            None
        } else {
            let cert = PathBuf::from(self.tls.cert.trim());
            let key = PathBuf::from(self.tls.key.trim());
            if !cert.is_file() {
                return Err(invalid(
                    "tls.cert",
                    format!("no file at '{}'", cert.display()),
                ));
            }
            if !key.is_file() {
                return Err(invalid(
                    "tls.key",
                    format!("no file at '{}'", key.display()),
                ));
            }
            Some(TlsSettings {
                cert,
                key,
                client_ca: optional_file("tls.client_ca", &self.tls.client_ca)?,
                trunk_ca: optional_file("tls.trunk_ca", &self.tls.trunk_ca)?,
            })
        };

        let rtp_ports = parse_port_range(&self.media.rtp_ports).ok_or_else(|| {
            invalid(
                "media.rtp_ports",
                format!(
                    "'{}' is not a range like \"20000-30000\"",
                    self.media.rtp_ports
                ),
            )
        })?;
        let public_ip =
            match self.media.public_ip.trim() {
                "" => None,
                ip => Some(ip.parse().map_err(|_| {
                    invalid("media.public_ip", format!("'{ip}' is not an IP address"))
                })?),
            };
        let srtp = SrtpMode::parse(&self.media.srtp).ok_or_else(|| {
            invalid(
                "media.srtp",
                format!(
                    "'{}' is not one of \"off\", \"optional\", \"required\"",
                    self.media.srtp
                ),
            )
        })?;

        let media_allow = match &self.media.allow {
            None => allow.clone(),
            Some(entries) => parse_nets("media.allow", entries)?,
        };

        let http_listen = listen_addr("http.listen", &self.http.listen)?;
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be greater than 0"));
        }
        if !(1024..=64 << 20).contains(&self.http.max_body_bytes) {
            return Err(invalid(
                "http.max_body_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        let http = HttpSettings {
            listen: http_listen,
            header_read_timeout: positive_ms(
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            )?,
            idle_timeout: positive_ms("http.idle_timeout_ms", self.http.idle_timeout_ms)?,
            max_connections: self.http.max_connections,
            max_body_bytes: self.http.max_body_bytes,
        };
        let keys: Vec<String> = self
            .api
            .keys
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        if keys.iter().any(|k| k.len() < 8) {
            return Err(invalid(
                "api.keys",
                "every key must be at least 8 characters",
            ));
        }
        if let Some(addr) = http_listen.filter(|a| !a.ip().is_loopback()) {
            if keys.iter().any(|k| k == DEVELOPMENT_KEY) {
                return Err(invalid(
                    "api.keys",
                    format!(
                        "the development key {DEVELOPMENT_KEY} is refused when http.listen ({addr}) is not a loopback address; set a key of your own"
                    ),
                ));
            }
        }
        if self.calls.max_concurrent == 0 {
            return Err(invalid("calls.max_concurrent", "must be greater than 0"));
        }

        let url = self.database.url.trim().to_string();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite: or postgres://",
            ));
        }

        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            return Err(invalid(
                "log.filter",
                format!("'{}' is not a tracing filter", self.log.filter),
            ));
        }

        let webhooks = self.webhooks.validate(&keys)?;

        Ok(Settings {
            sip: SipSettings {
                udp,
                tcp,
                tls: tls_addr,
                public_host: sip.public_host.trim().to_string(),
                allow,
                dns_servers,
                limits,
                timers,
                rate_limit,
            },
            tls,
            media: MediaSettings {
                rtp_ports,
                public_ip,
                srtp,
                allow: media_allow,
            },
            http,
            api: ApiSettings { keys },
            database: DatabaseSettings { url },
            calls: CallSettings {
                registered_call_timeout: positive_ms(
                    "calls.registered_call_timeout_ms",
                    self.calls.registered_call_timeout_ms,
                )?,
                agent_connect_timeout: positive_ms(
                    "calls.agent_connect_timeout_ms",
                    self.calls.agent_connect_timeout_ms,
                )?,
                no_audio_timeout: positive_ms(
                    "calls.no_audio_timeout_ms",
                    self.calls.no_audio_timeout_ms,
                )?,
                hangup_drain: Duration::from_millis(self.calls.hangup_drain_ms),
                max_call_duration: positive_ms(
                    "calls.max_call_duration_ms",
                    self.calls.max_call_duration_ms,
                )?,
                max_concurrent: self.calls.max_concurrent,
                inactive_timeout: positive_ms(
                    "calls.inactive_timeout_ms",
                    self.calls.inactive_timeout_ms,
                )?,
            },
            shutdown_grace: Duration::from_millis(self.shutdown.grace_period_ms),
            log_filter: self.log.filter,
            demo_echo_agent: self.demo.echo_agent,
            webhooks,
            node_id: node_id(&self.node.id)?,
        })
    }
}

/// The key the shipped configuration carries, for trying dialtone on one machine.
pub const DEVELOPMENT_KEY: &str = "dialtone-dev-key";

/// `node.id`, or the machine's host name when empty.
fn node_id(configured: &str) -> Result<String, ConfigError> {
    let id = match configured.trim() {
        "" => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "dialtone".to_string()),
        id => id.to_string(),
    };
    let ok = id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(invalid(
            "node.id",
            format!("'{id}' must be at most 64 letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(id)
}

impl RawWebhooks {
    fn validate(&self, api_keys: &[String]) -> Result<WebhookSettings, ConfigError> {
        let signing_key = match self.signing_key.trim() {
            "" => api_keys.first().cloned(),
            key if key.len() < 8 => {
                return Err(invalid(
                    "webhooks.signing_key",
                    "must be at least 8 characters (or empty: the first api.keys)",
                ))
            }
            key => Some(key.to_string()),
        };
        if !(1..=10).contains(&self.max_attempts) {
            return Err(invalid("webhooks.max_attempts", "must be between 1 and 10"));
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return Err(invalid(
                "webhooks.timeout_ms",
                "must be between 1 and 60000",
            ));
        }
        if !(1..=100_000).contains(&self.max_pending) {
            return Err(invalid(
                "webhooks.max_pending",
                "must be between 1 and 100000",
            ));
        }
        Ok(WebhookSettings {
            signing_key,
            max_attempts: self.max_attempts,
            timeout: Duration::from_millis(self.timeout_ms),
            max_pending: self.max_pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn shipped_default_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let s = Settings::load_with_env(&path, env(&[])).unwrap();
        assert!(s.sip.udp.is_some());
        assert_eq!(s.media.rtp_ports, (20000, 30000));
        assert_eq!(s.media.srtp, SrtpMode::Optional);
        assert_eq!(s.calls.registered_call_timeout, Duration::from_secs(300));
        assert_eq!(
            s.media.allow, s.sip.allow,
            "media.allow defaults to sip.allow"
        );
        assert_eq!(s.calls.max_concurrent, 1000);
        assert!(!s.node_id.is_empty());
    }

    #[test]
    fn the_development_key_only_listens_on_loopback() {
        let f = file("[api]\nkeys = [\"dialtone-dev-key\"]\n");
        for listen in ["127.0.0.1:8080", "[::1]:8080"] {
            let vars = env(&[("DIALTONE__HTTP__LISTEN", listen)]);
            assert!(Settings::load_with_env(f.path(), vars).is_ok(), "{listen}");
        }
        let vars = env(&[("DIALTONE__HTTP__LISTEN", "0.0.0.0:8080")]);
        let err = Settings::load_with_env(f.path(), vars)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config: api.keys: the development key")
                && err.contains("0.0.0.0:8080"),
            "{err}"
        );
        let vars = env(&[
            ("DIALTONE__HTTP__LISTEN", "0.0.0.0:8080"),
            ("DIALTONE__API__KEYS", "a-key-of-our-own"),
        ]);
        assert!(Settings::load_with_env(f.path(), vars).is_ok());
    }

    #[test]
    fn media_allow_and_node_id_are_checked() {
        let f = file("[media]\nallow = [\"203.0.113.0/24\"]\n[node]\nid = \"node-a\"\n");
        let s = Settings::load_with_env(f.path(), env(&[])).unwrap();
        assert_eq!(
            s.media.allow,
            vec!["203.0.113.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(s.node_id, "node-a");
        let bad = file("[node]\nid = \"a b\"\n");
        let err = Settings::load_with_env(bad.path(), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config: node.id:"), "{err}");
        let bad = file("[media]\nallow = [\"nonsense\"]\n");
        let err = Settings::load_with_env(bad.path(), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config: media.allow:"), "{err}");
    }

    #[test]
    fn environment_overrides_keys_and_lists() {
        let f = file("[sip]\nudp = \"127.0.0.1:5060\"\n");
        let s = Settings::load_with_env(
            f.path(),
            env(&[
                ("DIALTONE__SIP__UDP", "127.0.0.1:6000"),
                ("DIALTONE__SIP__ALLOW", "10.0.0.0/8,192.0.2.7"),
                ("DIALTONE__API__KEYS", "abcdefgh1,abcdefgh2"),
                ("DIALTONE__CALLS__REGISTERED_CALL_TIMEOUT_MS", "1000"),
                ("DIALTONE__SIP__DNS_SERVERS", "10.0.0.2,127.0.0.1:5353"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.sip.dns_servers,
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]
        );
        assert_eq!(s.sip.udp, Some("127.0.0.1:6000".parse().unwrap()));
        assert_eq!(s.sip.allow.len(), 2);
        assert_eq!(s.sip.allow[1], "192.0.2.7/32".parse::<IpNet>().unwrap());
        assert_eq!(s.api.keys.len(), 2);
        assert_eq!(s.calls.registered_call_timeout, Duration::from_secs(1));
    }

    #[test]
    fn empty_listen_address_means_off() {
        let f = file("[sip]\ntcp = \"\"\n");
        let s = Settings::load_with_env(f.path(), env(&[])).unwrap();
        assert!(s.sip.tcp.is_none());
        assert!(s.sip.tls.is_none());
    }

    #[test]
    fn media_srtp_takes_its_three_modes() {
        for (text, mode) in [
            ("off", SrtpMode::Off),
            ("optional", SrtpMode::Optional),
            ("required", SrtpMode::Required),
        ] {
            let f = file(&format!("[media]\nsrtp = \"{text}\"\n"));
            let s = Settings::load_with_env(f.path(), env(&[])).unwrap();
            assert_eq!(s.media.srtp, mode);
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[sip]\nudp = \"nonsense\"\n", "sip.udp"),
            ("[sip]\nallow = [\"10.0.0.0/99\"]\n", "sip.allow"),
            ("[sip]\ndns_servers = [\"ns.example\"]\n", "sip.dns_servers"),
            ("[media]\nrtp_ports = \"30000-20000\"\n", "media.rtp_ports"),
            ("[media]\npublic_ip = \"x.y\"\n", "media.public_ip"),
            ("[media]\nsrtp = \"yes\"\n", "media.srtp"),
            ("[http]\nlisten = \"8080\"\n", "http.listen"),
            ("[database]\nurl = \"mysql://x\"\n", "database.url"),
            (
                "[calls]\nregistered_call_timeout_ms = 0\n",
                "calls.registered_call_timeout_ms",
            ),
            ("[sip]\ntls = \"127.0.0.1:5061\"\n", "tls.cert"),
            (
                "[tls]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.pem\"\n",
                "tls.cert",
            ),
            ("[api]\nkeys = [\"short\"]\n", "api.keys"),
            (
                "[webhooks]\nsigning_key = \"short\"\n",
                "webhooks.signing_key",
            ),
            ("[webhooks]\nmax_attempts = 0\n", "webhooks.max_attempts"),
            ("[webhooks]\ntimeout_ms = 0\n", "webhooks.timeout_ms"),
            ("[webhooks]\nmax_pending = 0\n", "webhooks.max_pending"),
        ];
        for (text, key) in cases {
            let f = file(text);
            let err = Settings::load_with_env(f.path(), env(&[])).unwrap_err();
            let line = err.to_string();
            assert!(
                line.contains(key),
                "{text:?} gave {line:?}, expected key {key}"
            );
            assert!(!line.contains('\n'), "one line: {line:?}");
        }
    }

    #[test]
    fn wrong_type_is_reported_with_its_key() {
        let f = file("[sip]\nmax_headers = \"many\"\n");
        let err = Settings::load_with_env(f.path(), env(&[])).unwrap_err();
        assert!(err.to_string().contains("max_headers"), "{err}");
    }

    #[test]
    fn webhook_signing_key_defaults_to_the_first_api_key_and_is_not_printed() {
        let f = file("[api]\nkeys = [\"first-key-123\", \"second-key-456\"]\n");
        let s = Settings::load_with_env(f.path(), env(&[])).unwrap();
        assert_eq!(s.webhooks.signing_key.as_deref(), Some("first-key-123"));
        assert_eq!(s.webhooks.max_attempts, 3);
        let s = Settings::load_with_env(
            f.path(),
            env(&[("DIALTONE__WEBHOOKS__SIGNING_KEY", "hook-secret-789")]),
        )
        .unwrap();
        assert_eq!(s.webhooks.signing_key.as_deref(), Some("hook-secret-789"));
        assert!(!format!("{s:?}").contains("hook-secret-789"));
        let none = file("[api]\nkeys = []\n");
        let s = Settings::load_with_env(none.path(), env(&[])).unwrap();
        assert!(s.webhooks.signing_key.is_none());
    }

    #[test]
    fn api_keys_are_not_printed() {
        let f = file("[api]\nkeys = [\"supersecretkey\"]\n");
        let s = Settings::load_with_env(f.path(), env(&[])).unwrap();
        assert!(!format!("{s:?}").contains("supersecretkey"));
    }
}
