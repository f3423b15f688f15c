//! RFC 3263 §4 server location for outbound requests: from a [`Destination`] (what the
//! URI says) to the transports and socket addresses to try, in order.
//!
//! - A literal IP needs no DNS.
//! - A host with an explicit port: A/AAAA only, with the URI's transport (UDP by default,
//!   TLS for `sips:`).
//! - Otherwise SRV: only the service the URI's transport names when it names one
//!   (`_sips._tcp` for TLS, `_sip._tcp`, `_sip._udp`); else `_sip._udp` then `_sip._tcp`
//!   (RFC 3263 §4.1 queries `_sip` for SIP URIs and leaves the choice among supported
//!   transports to the client; UDP first as RFC 3261's default). Records are ordered by
//!   priority, then weighted random (RFC 2782), and each target's A/AAAA records follow.
//!   When no SRV record exists, A/AAAA with the default port.
//!
//! NAPTR (RFC 3263 §4.1's first step) is skipped: trunk providers publish SRV and A
//! records, a NAPTR that only repeats them adds a round trip, and one that points
//! elsewhere is rare enough that the explicit `;transport=` in the termination URI is the
//! better fix. The transports found are all returned; the sender skips the ones it has
//! not enabled.
//!
//! The DNS queries go through the [`Lookup`] trait so that the ordering logic is tested
//! without a network; [`SystemLookup`] is the real one (hickory, `/etc/resolv.conf`).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use rand::Rng;

use crate::sip::route::Destination;
use crate::sip::transport::Kind;

/// The whole resolution (all SRV and address queries) gives up after this.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// One DNS query's timeout, and tries, in the system resolver.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;
/// SRV records used per service name; more is a misconfiguration or an attack.
const MAX_SRV_RECORDS: usize = 16;
/// Targets returned at most.
const MAX_TARGETS: usize = 32;

/// One place to send the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedTarget {
    pub kind: Kind,
    pub addr: SocketAddr,
}

/// One SRV record (RFC 2782). `target` is `"."` when the service is decidedly not
/// available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// A failed DNS query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name does not exist or has no records of that type.
    #[error("no records")]
    NoRecords,
    /// The query itself failed (timeout, SERVFAIL, no name server reachable, ...).
    #[error("{0}")]
    Failed(String),
}

/// The DNS queries server location needs.
pub trait Lookup: Send + Sync {
    /// SRV records of `name` (e.g. `_sip._udp.example.com`).
    fn srv(&self, name: &str) -> impl Future<Output = Result<Vec<SrvRecord>, LookupError>> + Send;
    /// A and AAAA records of `host`.
    fn ip(&self, host: &str) -> impl Future<Output = Result<Vec<IpAddr>, LookupError>> + Send;
}

/// Why no target was found. Every variant names the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no address found for '{host}'")]
    NotFound { host: String },
    #[error("'{host}' publishes that it offers no SIP service (SRV target '.')")]
    Unavailable { host: String },
    #[error("resolving '{host}' timed out after {after:?}")]
    Timeout { host: String, after: Duration },
    #[error("resolving '{host}' failed: {reason}")]
    Dns { host: String, reason: String },
}

/// Resolves with the system resolver, [`RESOLVE_TIMEOUT`] and real randomness.
pub async fn resolve(dest: &Destination) -> Result<Vec<ResolvedTarget>, ResolveError> {
    resolve_with(
        SystemLookup::shared(),
        dest,
        |max| rand::rng().random_range(0..=max),
        RESOLVE_TIMEOUT,
    )
    .await
}

/// [`resolve`] with the lookup, the randomness (`random(max)` returns a uniform number in
/// `0..=max`) and the time budget given.
pub async fn resolve_with<L: Lookup>(
    lookup: &L,
    dest: &Destination,
    random: impl FnMut(u32) -> u32 + Send,
    budget: Duration,
) -> Result<Vec<ResolvedTarget>, ResolveError> {
    if let Some(addr) = dest.literal_addr() {
        return Ok(vec![ResolvedTarget {
            kind: dest.kind,
            addr,
        }]);
    }
    match tokio::time::timeout(budget, locate(lookup, dest, random)).await {
        Ok(result) => result,
        Err(_) => Err(ResolveError::Timeout {
            host: dest.host.clone(),
            after: budget,
        }),
    }
}

async fn locate<L: Lookup>(
    lookup: &L,
    dest: &Destination,
    mut random: impl FnMut(u32) -> u32 + Send,
) -> Result<Vec<ResolvedTarget>, ResolveError> {
    if dest.port.is_some() {
        return addresses(lookup, dest, dest.kind, dest.port_or_default()).await;
    }
    let services: &[Kind] = if dest.transport_explicit {
        std::slice::from_ref(&dest.kind)
    } else {
        &[Kind::Udp, Kind::Tcp]
    };
    let answers = futures_util::future::join_all(
        services
            .iter()
            .map(|&kind| lookup.srv_bounded(format!("{}.{}", service(kind), dest.host))),
    )
    .await;

    let mut usable = Vec::new();
    let mut unavailable = false;
    for (&kind, answer) in services.iter().zip(answers) {
        match answer {
            Ok(records) if !records.is_empty() => {
                let live: Vec<SrvRecord> = records
                    .into_iter()
                    .filter(|r| r.target != "." && !r.target.is_empty())
                    .collect();
                if live.is_empty() {
                    unavailable = true;
                } else {
                    usable.push((kind, order_srv(live, &mut random)));
                }
            }
            Ok(_) | Err(LookupError::NoRecords) => {}
            // A failing SRV query is treated like a missing one: the A/AAAA fallback
            // then either works or reports the DNS failure.
            Err(LookupError::Failed(reason)) => {
                tracing::debug!(host = %dest.host, reason, "SRV lookup failed");
            }
        }
    }
    if usable.is_empty() {
        if unavailable {
            return Err(ResolveError::Unavailable {
                host: dest.host.clone(),
            });
        }
        return addresses(lookup, dest, dest.kind, dest.port_or_default()).await;
    }

    let records: Vec<(Kind, SrvRecord)> = usable
        .into_iter()
        .flat_map(|(kind, records)| records.into_iter().map(move |r| (kind, r)))
        .collect();
    let ips =
        futures_util::future::join_all(records.iter().map(|(_, r)| lookup.ip(&r.target))).await;
    let mut out = Vec::new();
    let mut failure = None;
    for ((kind, record), ips) in records.iter().zip(ips) {
        match ips {
            Ok(ips) => {
                for ip in ips {
                    push_unique(&mut out, *kind, SocketAddr::new(ip, record.port));
                }
            }
            Err(e) => {
                tracing::debug!(host = %dest.host, target = %record.target, error = %e, "SRV target has no address");
                if let LookupError::Failed(reason) = e {
                    failure.get_or_insert(format!("{}: {reason}", record.target));
                }
            }
        }
    }
    if out.is_empty() {
        return Err(match failure {
            Some(reason) => ResolveError::Dns {
                host: dest.host.clone(),
                reason,
            },
            None => ResolveError::NotFound {
                host: dest.host.clone(),
            },
        });
    }
    Ok(out)
}

/// A/AAAA records of the destination's host, all with `kind` and `port`.
async fn addresses<L: Lookup>(
    lookup: &L,
    dest: &Destination,
    kind: Kind,
    port: u16,
) -> Result<Vec<ResolvedTarget>, ResolveError> {
    let host = || dest.host.clone();
    let ips = lookup.ip(&dest.host).await.map_err(|e| match e {
        LookupError::NoRecords => ResolveError::NotFound { host: host() },
        LookupError::Failed(reason) => ResolveError::Dns {
            host: host(),
            reason,
        },
    })?;
    let mut out = Vec::new();
    for ip in ips {
        push_unique(&mut out, kind, SocketAddr::new(ip, port));
    }
    if out.is_empty() {
        return Err(ResolveError::NotFound { host: host() });
    }
    Ok(out)
}

fn push_unique(out: &mut Vec<ResolvedTarget>, kind: Kind, addr: SocketAddr) {
    let t = ResolvedTarget { kind, addr };
    if out.len() < MAX_TARGETS && !out.contains(&t) {
        out.push(t);
    }
}

/// The SRV service and protocol labels for a transport (RFC 3263 §4.1).
fn service(kind: Kind) -> &'static str {
    match kind {
        Kind::Udp => "_sip._udp",
        Kind::Tcp => "_sip._tcp",
        Kind::Tls => "_sips._tcp",
    }
}

/// Orders SRV records as RFC 2782 says: ascending priority; within a priority, repeatedly
/// pick one at random with probability proportional to its weight (zero-weight records
/// first in the running sum, so they are rarely but possibly picked first).
/// `random(max)` must return a uniform number in `0..=max`.
pub fn order_srv(
    mut records: Vec<SrvRecord>,
    mut random: impl FnMut(u32) -> u32,
) -> Vec<SrvRecord> {
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    for group in records.chunk_by(|a, b| a.priority == b.priority) {
        let mut pending: Vec<&SrvRecord> = group.iter().filter(|r| r.weight == 0).collect();
        pending.extend(group.iter().filter(|r| r.weight != 0));
        while !pending.is_empty() {
            let total: u32 = pending.iter().map(|r| u32::from(r.weight)).sum();
            // RFC 2782 draws from 0..=total, which hands the first record one extra
            // chance; that chance is meant for zero-weight records, so without any the
            // draw is 1..=total and the odds match the weights exactly.
            // cannot panic: the loop runs only while `pending` is not empty
            let pick = if pending[0].weight == 0 {
                random(total).min(total)
            } else {
                1 + random(total - 1).min(total - 1)
            };
            let mut running = 0;
            let index = pending
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                // cannot fail: the last running sum equals total >= pick; 0 keeps it total
                .unwrap_or(0);
            out.push(pending.remove(index).clone());
        }
    }
    out
}

trait LookupExt: Lookup {
    /// An SRV query with its answer capped at [`MAX_SRV_RECORDS`].
    async fn srv_bounded(&self, name: String) -> Result<Vec<SrvRecord>, LookupError> {
        let mut records = self.srv(&name).await?;
        records.truncate(MAX_SRV_RECORDS);
        Ok(records)
    }
}

impl<L: Lookup> LookupExt for L {}

/// The real DNS: hickory's resolver configured from `/etc/resolv.conf`.
static SHARED: OnceLock<SystemLookup> = OnceLock::new();

#[derive(Debug, Clone)]
pub struct SystemLookup {
    resolver: TokioResolver,
}

impl SystemLookup {
    /// From the system configuration; when that cannot be read, name servers on localhost
    /// (what the C library assumes without `/etc/resolv.conf`), never a public resolver
    /// the operator did not choose.
    pub fn new() -> SystemLookup {
        SystemLookup::with_servers(&[])
    }

    /// With these name servers (UDP, then TCP for truncated answers), or the system's
    /// when the list is empty.
    pub fn with_servers(servers: &[SocketAddr]) -> SystemLookup {
        let configured = (!servers.is_empty()).then(|| {
            let mut group = NameServerConfigGroup::new();
            for server in servers {
                group.push(NameServerConfig::new(*server, Protocol::Udp));
                group.push(NameServerConfig::new(*server, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                TokioConnectionProvider::default(),
            )
        });
        let system = || match TokioResolver::builder_tokio() {
            Ok(builder) => builder,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the system DNS configuration; using name servers on localhost");
                let servers = NameServerConfigGroup::from_ips_clear(
                    &[
                        IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(Ipv6Addr::LOCALHOST),
                    ],
                    53,
                    true,
                );
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), servers),
                    TokioConnectionProvider::default(),
                )
            }
        };
        let mut builder = configured.unwrap_or_else(system);
        let options = builder.options_mut();
        options.timeout = QUERY_TIMEOUT;
        options.attempts = QUERY_ATTEMPTS;
        SystemLookup {
            resolver: builder.build(),
        }
    }

    /// One resolver for the process, so its cache is shared: the one [`Self::configure`]
    /// set, or else the system's.
    pub fn shared() -> &'static SystemLookup {
        SHARED.get_or_init(SystemLookup::new)
    }

    /// Sets the process's resolver to use `servers` (`sip.dns_servers`). Call once at
    /// start, before any lookup; false if the resolver was already in use.
    pub fn configure(servers: &[SocketAddr]) -> bool {
        SHARED.set(SystemLookup::with_servers(servers)).is_ok()
    }
}

impl Default for SystemLookup {
    fn default() -> Self {
        SystemLookup::new()
    }
}

fn lookup_error(e: hickory_resolver::ResolveError) -> LookupError {
    if e.is_no_records_found() || e.is_nx_domain() {
        LookupError::NoRecords
    } else {
        LookupError::Failed(e.to_string())
    }
}

impl Lookup for SystemLookup {
    async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, LookupError> {
        let lookup = self.resolver.srv_lookup(name).await.map_err(lookup_error)?;
        Ok(lookup
            .iter()
            .take(MAX_SRV_RECORDS)
            .map(|srv| SrvRecord {
                priority: srv.priority(),
                weight: srv.weight(),
                port: srv.port(),
                target: if srv.target().is_root() {
                    ".".to_string()
                } else {
                    srv.target().to_ascii()
                },
            })
            .collect())
    }

    async fn ip(&self, host: &str) -> Result<Vec<IpAddr>, LookupError> {
        let lookup = self.resolver.lookup_ip(host).await.map_err(lookup_error)?;
        Ok(lookup.iter().take(MAX_TARGETS).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::route::destination;
    use rand::SeedableRng;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Canned DNS answers; records every query.
    #[derive(Default)]
    struct Fake {
        srv: HashMap<String, Result<Vec<SrvRecord>, LookupError>>,
        ip: HashMap<String, Result<Vec<IpAddr>, LookupError>>,
        hang: bool,
        queries: Mutex<Vec<String>>,
    }

    impl Fake {
        fn srv(mut self, name: &str, records: &[(u16, u16, u16, &str)]) -> Self {
            let records = records
                .iter()
                .map(|&(priority, weight, port, target)| SrvRecord {
                    priority,
                    weight,
                    port,
                    target: target.into(),
                })
                .collect();
            self.srv.insert(name.into(), Ok(records));
            self
        }
        fn ip(mut self, host: &str, ips: &[&str]) -> Self {
            let ips = ips.iter().map(|s| s.parse().unwrap()).collect();
            self.ip.insert(host.into(), Ok(ips));
            self
        }
        fn fail_ip(mut self, host: &str) -> Self {
            self.ip
                .insert(host.into(), Err(LookupError::Failed("SERVFAIL".into())));
            self
        }
        fn queries(&self) -> Vec<String> {
            self.queries.lock().unwrap().clone()
        }
    }

    impl Lookup for Fake {
        async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, LookupError> {
            self.queries.lock().unwrap().push(format!("SRV {name}"));
            if self.hang {
                std::future::pending::<()>().await;
            }
            self.srv
                .get(name)
                .cloned()
                .unwrap_or(Err(LookupError::NoRecords))
        }
        async fn ip(&self, host: &str) -> Result<Vec<IpAddr>, LookupError> {
            self.queries.lock().unwrap().push(format!("A {host}"));
            if self.hang {
                std::future::pending::<()>().await;
            }
            self.ip
                .get(host)
                .cloned()
                .unwrap_or(Err(LookupError::NoRecords))
        }
    }

    async fn run(fake: &Fake, uri: &str) -> Result<Vec<(Kind, String)>, ResolveError> {
        let dest = destination(uri).unwrap();
        let targets = resolve_with(fake, &dest, |_| 0, Duration::from_secs(1)).await?;
        Ok(targets
            .into_iter()
            .map(|t| (t.kind, t.addr.to_string()))
            .collect())
    }

    fn t(kind: Kind, addr: &str) -> (Kind, String) {
        (kind, addr.to_string())
    }

    #[tokio::test]
    async fn literal_ips_skip_dns() {
        let fake = Fake::default();
        assert_eq!(
            run(&fake, "sip:+14155550100@192.0.2.7").await.unwrap(),
            [t(Kind::Udp, "192.0.2.7:5060")]
        );
        assert_eq!(
            run(&fake, "sip:a@192.0.2.7:5080;transport=tcp")
                .await
                .unwrap(),
            [t(Kind::Tcp, "192.0.2.7:5080")]
        );
        assert_eq!(
            run(&fake, "sips:a@[2001:db8::1]").await.unwrap(),
            [t(Kind::Tls, "[2001:db8::1]:5061")]
        );
        assert!(fake.queries().is_empty());
    }

    #[tokio::test]
    async fn explicit_port_means_addresses_only() {
        let fake = Fake::default()
            .srv(
                "_sip._udp.trunk.example.com",
                &[(1, 1, 5999, "x.example.com")],
            )
            .ip("trunk.example.com", &["192.0.2.1", "2001:db8::2"]);
        assert_eq!(
            run(&fake, "sip:+1@trunk.example.com:5070").await.unwrap(),
            [
                t(Kind::Udp, "192.0.2.1:5070"),
                t(Kind::Udp, "[2001:db8::2]:5070")
            ]
        );
        assert_eq!(
            run(&fake, "sips:+1@trunk.example.com:5071").await.unwrap()[0],
            t(Kind::Tls, "192.0.2.1:5071")
        );
        assert_eq!(
            run(&fake, "sip:+1@trunk.example.com:5072;transport=TCP")
                .await
                .unwrap()[0],
            t(Kind::Tcp, "192.0.2.1:5072")
        );
        assert!(fake.queries().iter().all(|q| q.starts_with("A ")));
    }

    #[tokio::test]
    async fn srv_per_transport_ordered_by_priority() {
        let fake = Fake::default()
            .srv(
                "_sip._udp.example.com",
                &[
                    (20, 0, 5062, "backup.example.com."),
                    (10, 0, 5060, "main.example.com."),
                ],
            )
            .srv(
                "_sip._tcp.example.com",
                &[(10, 0, 5060, "main.example.com.")],
            )
            .srv(
                "_sips._tcp.example.com",
                &[(10, 0, 5061, "tls.example.com.")],
            )
            .ip("main.example.com.", &["192.0.2.10"])
            .ip("backup.example.com.", &["192.0.2.20", "192.0.2.21"])
            .ip("tls.example.com.", &["192.0.2.30"])
            .ip("example.com", &["192.0.2.99"]);
        assert_eq!(
            run(&fake, "sip:+1@example.com").await.unwrap(),
            [
                t(Kind::Udp, "192.0.2.10:5060"),
                t(Kind::Udp, "192.0.2.20:5062"),
                t(Kind::Udp, "192.0.2.21:5062"),
                t(Kind::Tcp, "192.0.2.10:5060"),
            ]
        );
        // An explicit transport asks for its service only.
        let before = fake.queries().len();
        assert_eq!(
            run(&fake, "sip:+1@example.com;transport=tcp")
                .await
                .unwrap(),
            [t(Kind::Tcp, "192.0.2.10:5060")]
        );
        assert_eq!(
            run(&fake, "sips:+1@example.com").await.unwrap(),
            [t(Kind::Tls, "192.0.2.30:5061")]
        );
        assert_eq!(
            run(&fake, "sip:+1@example.com;transport=tls")
                .await
                .unwrap(),
            [t(Kind::Tls, "192.0.2.30:5061")]
        );
        let srv: Vec<String> = fake.queries()[before..]
            .iter()
            .filter(|q| q.starts_with("SRV"))
            .cloned()
            .collect();
        assert_eq!(
            srv,
            [
                "SRV _sip._tcp.example.com",
                "SRV _sips._tcp.example.com",
                "SRV _sips._tcp.example.com"
            ]
        );
    }

    #[tokio::test]
    async fn no_srv_falls_back_to_addresses_on_the_default_port() {
        let fake = Fake::default().ip("pbx.example.com", &["192.0.2.5"]);
        assert_eq!(
            run(&fake, "sip:pbx.example.com").await.unwrap(),
            [t(Kind::Udp, "192.0.2.5:5060")]
        );
        assert_eq!(
            run(&fake, "sips:pbx.example.com").await.unwrap(),
            [t(Kind::Tls, "192.0.2.5:5061")]
        );
        assert_eq!(
            run(&fake, "sip:pbx.example.com;transport=tcp")
                .await
                .unwrap(),
            [t(Kind::Tcp, "192.0.2.5:5060")]
        );
        assert_eq!(
            fake.queries()[..3],
            [
                "SRV _sip._udp.pbx.example.com",
                "SRV _sip._tcp.pbx.example.com",
                "A pbx.example.com"
            ]
        );
    }

    #[tokio::test]
    async fn errors_name_the_host() {
        let fake = Fake::default()
            .srv("_sip._udp.gone.example.com", &[(0, 0, 0, ".")])
            .srv(
                "_sip._udp.dead.example.com",
                &[(1, 0, 5060, "a.dead.example.com.")],
            )
            .fail_ip("a.dead.example.com.")
            .srv(
                "_sip._udp.empty.example.com",
                &[(1, 0, 5060, "x.example.com.")],
            )
            .fail_ip("broken.example.com");
        let err = |uri: &'static str| {
            let fake = &fake;
            async move { run(fake, uri).await.unwrap_err() }
        };
        assert_eq!(
            err("sip:gone.example.com").await,
            ResolveError::Unavailable {
                host: "gone.example.com".into()
            }
        );
        let e = err("sip:dead.example.com").await;
        assert!(
            matches!(&e, ResolveError::Dns { host, reason } if host == "dead.example.com" && reason.contains("SERVFAIL")),
            "{e}"
        );
        assert_eq!(
            err("sip:empty.example.com").await,
            ResolveError::NotFound {
                host: "empty.example.com".into()
            }
        );
        assert_eq!(
            err("sip:nowhere.example.com:5060").await.to_string(),
            "no address found for 'nowhere.example.com'"
        );
        assert!(err("sip:broken.example.com")
            .await
            .to_string()
            .contains("broken.example.com"));
    }

    #[tokio::test]
    async fn one_target_without_address_is_skipped() {
        let fake = Fake::default()
            .srv(
                "_sip._tcp.example.com",
                &[
                    (1, 0, 5060, "a.example.com."),
                    (2, 0, 5060, "b.example.com."),
                ],
            )
            .fail_ip("a.example.com.")
            .ip("b.example.com.", &["192.0.2.2"]);
        assert_eq!(
            run(&fake, "sip:example.com;transport=tcp").await.unwrap(),
            [t(Kind::Tcp, "192.0.2.2:5060")]
        );
    }

    #[tokio::test]
    async fn resolution_is_time_bounded() {
        let fake = Fake {
            hang: true,
            ..Fake::default()
        };
        let dest = destination("sip:slow.example.com").unwrap();
        let e = resolve_with(&fake, &dest, |_| 0, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(&e, ResolveError::Timeout { host, .. } if host == "slow.example.com"));
        assert!(e.to_string().contains("slow.example.com"));
    }

    fn rec(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 5060,
            target: target.into(),
        }
    }

    fn names(records: &[SrvRecord]) -> Vec<&str> {
        records.iter().map(|r| r.target.as_str()).collect()
    }

    #[test]
    fn srv_weighted_order_follows_rfc2782() {
        let records = vec![
            rec(10, 0, "a"),
            rec(10, 10, "b"),
            rec(10, 30, "c"),
            rec(5, 0, "z"),
        ];
        // Running sums within priority 10, zero weights first: a=0, b=10, c=40.
        // Draws: z (total 0); a, b, c from 0..=40 (a zero weight is there): 0 picks a;
        // b, c from 1..=40: 1 + 11 passes b's running sum 10 and picks c; then b.
        let mut picks = vec![0u32, 0, 11, 0].into_iter();
        let order = order_srv(records.clone(), |_| picks.next().unwrap());
        assert_eq!(names(&order), ["z", "a", "c", "b"]);

        let seen = std::cell::RefCell::new(Vec::new());
        let _ = order_srv(records.clone(), |max| {
            seen.borrow_mut().push(max);
            max
        });
        // Picking the maximum takes the last each time: z; c of a, b, c (0..=40); b of a, b
        // (0..=10); a (0..=0).
        assert_eq!(*seen.borrow(), [0, 40, 10, 0]);

        // An out-of-range random number is clamped, not a panic.
        let order = order_srv(records, |_| u32::MAX);
        assert_eq!(names(&order), ["z", "c", "b", "a"]);
        assert!(order_srv(Vec::new(), |_| 0).is_empty());
    }

    #[test]
    fn srv_weights_set_the_odds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2782);
        let records = vec![rec(1, 1, "light"), rec(1, 3, "heavy"), rec(2, 100, "later")];
        let mut heavy_first = 0;
        for _ in 0..4000 {
            let order = order_srv(records.clone(), |max| rng.random_range(0..=max));
            assert_eq!(order[2].target, "later");
            if order[0].target == "heavy" {
                heavy_first += 1;
            }
        }
        // Expected 3000 of 4000.
        assert!((2800..3200).contains(&heavy_first), "{heavy_first}");
    }

    #[test]
    fn resolution_futures_can_be_spawned() {
        fn send<T: Send>(_: T) {}
        let dest = destination("sip:example.com").unwrap();
        send(resolve(&dest));
        send(resolve_with(
            &Fake::default(),
            &dest,
            |_| 0,
            RESOLVE_TIMEOUT,
        ));
    }

    /// The only test against the real resolver; `localhost` never leaves the machine.
    #[tokio::test]
    async fn system_resolver_finds_localhost() {
        let lookup = SystemLookup::new();
        let ips = lookup.ip("localhost").await.unwrap();
        assert!(
            ips.iter().all(IpAddr::is_loopback) && !ips.is_empty(),
            "{ips:?}"
        );
        let targets = resolve(&destination("sip:a@localhost:5080;transport=tcp").unwrap())
            .await
            .unwrap();
        assert!(!targets.is_empty());
        for target in targets {
            assert_eq!(target.kind, Kind::Tcp);
            assert_eq!(target.addr.port(), 5080);
            assert!(target.addr.ip().is_loopback());
        }
    }
}
