//! UAC digest authentication: answering `401`/`407` challenges from a trunk provider
//! (RFC 3261 §22, RFC 7616 for SHA-256/SHA-512-256 and `-sess`, RFC 8760 for SIP).
//!
//! Written by hand because rsip's helpers reject `algorithm=SHA-256` and qop lists and
//! print `nc` wrongly (see DEPENDENCIES.md). The digest `uri` is always the raw
//! Request-URI string as it will go on the wire, never a re-rendered URI: a single changed
//! letter (`transport=TCP` vs `tcp`) makes the server compute a different hash.
//!
//! Parsing never panics and allocates at most in proportion to its (bounded) input:
//! slicing happens only at ASCII delimiters, and oversized values, too many challenges
//! or parameters are dropped rather than processed.

use std::fmt::{self, Write as _};

use crate::sip::lex::{is_token_byte, is_ws, trim_start_ws, trim_ws};
use crate::sip::message::{Method, Request, Response};

/// Header values longer than this are ignored (no real challenge comes close).
const MAX_HEADER_VALUE: usize = 16 * 1024;
/// Challenges considered per response.
const MAX_CHALLENGES: usize = 16;
/// Parameters per challenge.
const MAX_PARAMS: usize = 32;
/// Longest parameter value accepted (nonces are typically under 100 bytes).
const MAX_PARAM_VALUE: usize = 1024;
/// Realms remembered per authenticator (a proxy chain is short).
const MAX_REALMS: usize = 8;
/// Consecutive challenges answered for one request before giving up, whatever they say.
const MAX_ROUNDS: u32 = 3;

/// A digest hash algorithm (RFC 7616 §3.2, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
    Sha512_256,
    Sha512_256Sess,
}

impl Algorithm {
    /// Reads an `algorithm` value (any case). `None` for algorithms we cannot compute.
    pub fn parse(s: &str) -> Option<Algorithm> {
        let all = [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
            Algorithm::Sha512_256,
            Algorithm::Sha512_256Sess,
        ];
        all.into_iter().find(|a| a.as_str().eq_ignore_ascii_case(s))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
            Algorithm::Sha512_256 => "SHA-512-256",
            Algorithm::Sha512_256Sess => "SHA-512-256-sess",
        }
    }

    /// The session variants hash the nonce and cnonce into A1 (RFC 7616 §3.4.2).
    pub fn is_sess(self) -> bool {
        matches!(
            self,
            Algorithm::Md5Sess | Algorithm::Sha256Sess | Algorithm::Sha512_256Sess
        )
    }

    /// Our order of preference: the stronger hash wins; `-sess` ranks as its base hash.
    fn strength(self) -> u8 {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => 1,
            Algorithm::Sha256 | Algorithm::Sha256Sess => 2,
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => 3,
        }
    }

    /// Lower-case hex of H(parts joined by ':').
    fn hash(self, parts: &[&[u8]]) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hash_hex::<md5::Md5>(parts),
            Algorithm::Sha256 | Algorithm::Sha256Sess => hash_hex::<sha2::Sha256>(parts),
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => {
                hash_hex::<sha2::Sha512_256>(parts)
            }
        }
    }
}

fn hash_hex<D: sha2::Digest>(parts: &[&[u8]]) -> String {
    let mut h = D::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(part);
    }
    let out = h.finalize();
    let mut hex = String::with_capacity(out.len() * 2);
    for b in out.iter() {
        // cannot fail: writing to a String is infallible
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Quality of protection (RFC 7616 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    /// Authenticates method and Request-URI.
    Auth,
    /// Also authenticates the body.
    AuthInt,
}

impl Qop {
    pub fn as_str(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }
}

/// Which header carried a challenge; it decides which header carries the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    /// `WWW-Authenticate` (a UAS, usually in a 401), answered in `Authorization`.
    Www,
    /// `Proxy-Authenticate` (a proxy, usually in a 407), answered in `Proxy-Authorization`.
    Proxy,
}

impl ChallengeKind {
    pub fn challenge_header(self) -> &'static str {
        match self {
            ChallengeKind::Www => "WWW-Authenticate",
            ChallengeKind::Proxy => "Proxy-Authenticate",
        }
    }
    pub fn answer_header(self) -> &'static str {
        match self {
            ChallengeKind::Www => "Authorization",
            ChallengeKind::Proxy => "Proxy-Authorization",
        }
    }
}

/// A Digest challenge we know how to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub kind: ChallengeKind,
    pub realm: String,
    pub nonce: String,
    /// Echoed back unchanged when present.
    pub opaque: Option<String>,
    /// `MD5` when the challenge names none.
    pub algorithm: Algorithm,
    /// The offered qop values we support, in the server's order. Empty: the challenge had
    /// no `qop` (RFC 2069 compatibility); a `qop` offering only unknown values is not
    /// answerable and never becomes a `Challenge`.
    pub qop: Vec<Qop>,
    /// The previous answer used an expired nonce; the credentials themselves were fine.
    pub stale: bool,
    /// The server wants the username hashed (RFC 7616 §3.4.4).
    pub userhash: bool,
}

/// A username and password. The password never appears in Debug output or logs.
#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }
    pub fn username(&self) -> &str {
        &self.username
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

// ---- parsing ------------------------------------------------------------------------

/// One auth scheme with its parameters, as read from a challenge or credentials header.
#[derive(Debug, Default)]
struct RawAuth<'a> {
    scheme: &'a str,
    params: Vec<(&'a str, String)>,
    /// Something in it did not follow the grammar (or exceeded a bound).
    broken: bool,
}

impl RawAuth<'_> {
    /// The value of a parameter (name in any case).
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate`/`Proxy-Authenticate` (or `Authorization`) value into its
/// schemes and parameters (RFC 7235 §2.1: a comma-separated list where a new element that
/// starts with `token SP` opens a new challenge). Commas inside quoted strings do not split.
fn parse_auth_list(value: &str) -> Vec<RawAuth<'_>> {
    let mut out: Vec<RawAuth<'_>> = Vec::new();
    if value.len() > MAX_HEADER_VALUE {
        return out;
    }
    for item in split_unquoted_commas(value) {
        let item = trim_ws(item);
        if item.is_empty() {
            continue; // RFC 7230 §7: empty list elements are allowed
        }
        match classify(item) {
            Item::Scheme(scheme, first) => {
                if out.len() == MAX_CHALLENGES {
                    break;
                }
                let mut raw = RawAuth {
                    scheme,
                    ..RawAuth::default()
                };
                match first {
                    Some(Some(p)) => raw.params.push(p),
                    // A token68 (e.g. Basic credentials) or garbage: not a Digest parameter.
                    Some(None) => raw.broken = true,
                    None => {}
                }
                out.push(raw);
            }
            Item::Param(p) => match out.last_mut() {
                Some(raw) if raw.params.len() < MAX_PARAMS => raw.params.push(p),
                Some(raw) => raw.broken = true,
                None => {}
            },
            Item::Garbage => {
                if let Some(raw) = out.last_mut() {
                    raw.broken = true;
                }
            }
        }
    }
    out
}

enum Item<'a> {
    /// A scheme, and when something followed it on the same element, that first
    /// parameter (`Some(None)` when it was not a `name=value`).
    Scheme(&'a str, Option<Option<(&'a str, String)>>),
    Param((&'a str, String)),
    Garbage,
}

fn classify(item: &str) -> Item<'_> {
    let n = item.bytes().take_while(|&c| is_token_byte(c)).count();
    if n == 0 {
        return Item::Garbage;
    }
    let (token, rest) = item.split_at(n);
    let after = trim_start_ws(rest);
    if after.starts_with('=') {
        return match parse_param(item) {
            Some(p) => Item::Param(p),
            None => Item::Garbage,
        };
    }
    if after.is_empty() {
        return Item::Scheme(token, None);
    }
    if after.len() == rest.len() {
        // No whitespace between the token and what follows: not a scheme.
        return Item::Garbage;
    }
    Item::Scheme(token, Some(parse_param(after)))
}

/// `token BWS "=" BWS value`; `None` otherwise (a token68 or garbage).
fn parse_param(s: &str) -> Option<(&str, String)> {
    let n = s.bytes().take_while(|&c| is_token_byte(c)).count();
    if n == 0 {
        return None;
    }
    let (name, rest) = s.split_at(n);
    let value = trim_start_ws(rest).strip_prefix('=')?;
    Some((name, parse_value(value)?))
}

/// A parameter value: a quoted string (unescaped) or a bare word. `None` when malformed
/// or longer than [`MAX_PARAM_VALUE`].
fn parse_value(s: &str) -> Option<String> {
    let s = trim_ws(s);
    if s.len() > MAX_PARAM_VALUE + 2 {
        return None;
    }
    let value = if let Some(inner) = s.strip_prefix('"') {
        let mut v = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => v.push(chars.next()?),
                c => v.push(c),
            }
        }
        if !trim_ws(chars.as_str()).is_empty() {
            return None;
        }
        v
    } else {
        // Lenient: servers send unquoted nonces with '/', '+' and '='.
        if s.bytes().any(|c| c == b'"' || c == b'\\' || is_ws(c)) {
            return None;
        }
        s.to_string()
    };
    (value.len() <= MAX_PARAM_VALUE).then_some(value)
}

/// Splits at commas outside quoted strings. A quoted string left open runs to the end.
fn split_unquoted_commas(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1, // skip the escaped byte (never a delimiter we slice at)
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&s[start.min(s.len())..]);
    parts
}

/// Turns a parsed scheme into a [`Challenge`] if it is a well-formed Digest challenge we
/// can answer: realm and nonce present, no parameter repeated, a known algorithm, and
/// (if `qop` is given) at least one qop we support.
fn to_challenge(raw: &RawAuth<'_>, kind: ChallengeKind) -> Option<Challenge> {
    if raw.broken || !raw.scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    for (i, (name, _)) in raw.params.iter().enumerate() {
        if raw.params[..i]
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            return None; // RFC 7235 §2.1: each parameter name only once
        }
    }
    let algorithm = match raw.param("algorithm") {
        None => Algorithm::Md5,
        Some(a) => Algorithm::parse(trim_ws(a))?,
    };
    let qop = match raw.param("qop") {
        None => Vec::new(),
        Some(list) => {
            let offered: Vec<Qop> = list
                .split(',')
                .filter_map(|q| match trim_ws(q).to_ascii_lowercase().as_str() {
                    "auth" => Some(Qop::Auth),
                    "auth-int" => Some(Qop::AuthInt),
                    _ => None,
                })
                .collect();
            if offered.is_empty() {
                return None;
            }
            offered
        }
    };
    let flag = |name: &str| {
        raw.param(name)
            .is_some_and(|v| trim_ws(v).eq_ignore_ascii_case("true"))
    };
    Some(Challenge {
        kind,
        realm: raw.param("realm")?.to_string(),
        nonce: raw.param("nonce")?.to_string(),
        opaque: raw.param("opaque").map(str::to_string),
        algorithm,
        qop,
        stale: flag("stale"),
        userhash: flag("userhash"),
    })
}

/// Every answerable Digest challenge in one header value (other schemes, malformed
/// challenges and unsupported algorithms are skipped).
pub fn parse_challenges(value: &str, kind: ChallengeKind) -> Vec<Challenge> {
    parse_auth_list(value)
        .iter()
        .filter_map(|raw| to_challenge(raw, kind))
        .collect()
}

/// Every answerable Digest challenge in a response, `WWW-Authenticate` and
/// `Proxy-Authenticate` alike (a forking proxy may merge both into one response, RFC 3261
/// §16.7), in header order.
pub fn challenges(response: &Response) -> Vec<Challenge> {
    let mut out = Vec::new();
    for (name, value) in response.headers.iter() {
        let kind = if name.eq_ignore_ascii_case("WWW-Authenticate") {
            ChallengeKind::Www
        } else if name.eq_ignore_ascii_case("Proxy-Authenticate") {
            ChallengeKind::Proxy
        } else {
            continue;
        };
        for c in parse_challenges(value, kind) {
            if out.len() == MAX_CHALLENGES {
                return out;
            }
            out.push(c);
        }
    }
    out
}

/// One challenge per (header kind, realm): the strongest algorithm we support, and among
/// equally strong ones the first listed (servers list them in their order of preference,
/// RFC 7616 §3.7, RFC 8760 §2.4). Ranking strength before server order is a deliberate
/// local policy: MD5 is never used for a realm that also offers SHA-256, so a downgrade
/// needs the server's cooperation. Realms keep their first-seen order.
pub fn select(challenges: &[Challenge]) -> Vec<&Challenge> {
    let mut chosen: Vec<&Challenge> = Vec::new();
    for c in challenges {
        match chosen
            .iter_mut()
            .find(|k| k.kind == c.kind && k.realm == c.realm)
        {
            Some(k) if c.algorithm.strength() > k.algorithm.strength() => *k = c,
            Some(_) => {}
            None => chosen.push(c),
        }
    }
    chosen
}

// ---- answering ----------------------------------------------------------------------

/// What the digest covers of the request being authorised.
#[derive(Debug, Clone, Copy)]
pub struct DigestRequest<'a> {
    pub method: &'a str,
    /// The Request-URI exactly as it goes on the wire.
    pub uri: &'a str,
    /// Hashed only for `qop=auth-int`.
    pub body: &'a [u8],
}

/// The `Authorization`/`Proxy-Authorization` value answering `challenge`, with nonce
/// count `nc` (1 for the first use of a nonce) and client nonce `cnonce`.
///
/// qop: `auth` when offered, else `auth-int` (hashing the body); none when the challenge
/// had none (RFC 2069 style, `cnonce` then only sent for `-sess`).
pub fn answer(
    challenge: &Challenge,
    credentials: &Credentials,
    request: &DigestRequest<'_>,
    cnonce: &str,
    nc: u32,
) -> String {
    let alg = challenge.algorithm;
    let qop = if challenge.qop.contains(&Qop::Auth) {
        Some(Qop::Auth)
    } else {
        challenge.qop.first().copied()
    };
    let nc_hex = format!("{nc:08x}");
    let user = credentials.username.as_bytes();
    let realm = challenge.realm.as_bytes();
    let nonce = challenge.nonce.as_bytes();

    let mut ha1 = alg.hash(&[user, realm, credentials.password.as_bytes()]);
    if alg.is_sess() {
        ha1 = alg.hash(&[ha1.as_bytes(), nonce, cnonce.as_bytes()]);
    }
    let ha2 = match qop {
        Some(Qop::AuthInt) => {
            let body = alg.hash(&[request.body]);
            alg.hash(&[
                request.method.as_bytes(),
                request.uri.as_bytes(),
                body.as_bytes(),
            ])
        }
        _ => alg.hash(&[request.method.as_bytes(), request.uri.as_bytes()]),
    };
    let response = match qop {
        Some(q) => alg.hash(&[
            ha1.as_bytes(),
            nonce,
            nc_hex.as_bytes(),
            cnonce.as_bytes(),
            q.as_str().as_bytes(),
            ha2.as_bytes(),
        ]),
        None => alg.hash(&[ha1.as_bytes(), nonce, ha2.as_bytes()]),
    };

    let username = if challenge.userhash {
        alg.hash(&[user, realm])
    } else {
        credentials.username.clone()
    };
    let mut v = String::with_capacity(256);
    v.push_str("Digest username=");
    push_quoted(&mut v, &username);
    v.push_str(", realm=");
    push_quoted(&mut v, &challenge.realm);
    v.push_str(", nonce=");
    push_quoted(&mut v, &challenge.nonce);
    v.push_str(", uri=");
    push_quoted(&mut v, request.uri);
    v.push_str(", response=");
    push_quoted(&mut v, &response);
    v.push_str(", algorithm=");
    v.push_str(alg.as_str());
    if qop.is_some() || alg.is_sess() {
        v.push_str(", cnonce=");
        push_quoted(&mut v, cnonce);
    }
    if let Some(opaque) = &challenge.opaque {
        v.push_str(", opaque=");
        push_quoted(&mut v, opaque);
    }
    if let Some(q) = qop {
        v.push_str(", qop=");
        v.push_str(q.as_str());
        v.push_str(", nc=");
        v.push_str(&nc_hex);
    }
    if challenge.userhash {
        v.push_str(", userhash=true");
    }
    v
}

/// Appends `s` as a quoted string, escaping `"` and `\` (CR/LF cannot survive
/// [`crate::sip::message::Headers`] anyway).
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// A fresh client nonce: 128 random bits in hex.
pub fn new_cnonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

// ---- the authenticator --------------------------------------------------------------

/// Why a challenged request is not sent again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a {0} response is not an authentication challenge")]
    NotAChallenge(u16),
    #[error("the {0} response carries no Digest challenge we can answer")]
    NoUsableChallenge(u16),
    /// The server refused our credentials: the caller reports
    /// `telephony_provider_permission_denied`.
    #[error("credentials for realm '{realm}' were rejected")]
    Rejected { realm: String },
    #[error("still challenged after {0} authenticated attempts")]
    TooManyRounds(u32),
    #[error("cannot resend this request with credentials: {0}")]
    NotRetryable(&'static str),
}

/// Remembers the challenges of one peer (per realm: the challenge, nonce count and
/// cnonce) so that retries and later requests in the call reuse them, and decides when to
/// give up.
///
/// Giving up (RFC 2617 §3.2.1 `stale`): when a challenge for a realm comes back without
/// `stale=true` and the rejected request already answered that realm, either with the same
/// nonce, or as our own answer to the previous challenge (a server that rotates nonces on
/// every failure), the credentials are wrong. Retrying would only risk a lockout.
/// Credentials sent preemptively with an old nonce get one fresh try.
pub struct Authenticator {
    credentials: Credentials,
    realms: Vec<RealmState>,
    cnonce: fn() -> String,
    /// The CSeq of the last retry built, to count consecutive rounds.
    last_retry: Option<u32>,
    rounds: u32,
}

#[derive(Debug, Clone)]
struct RealmState {
    challenge: Challenge,
    /// Uses of the nonce so far.
    nc: u32,
    /// One cnonce per nonce, so `-sess` session keys stay stable.
    cnonce: String,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("credentials", &self.credentials)
            .field("realms", &self.realms)
            .field("rounds", &self.rounds)
            .finish()
    }
}

impl Authenticator {
    pub fn new(credentials: Credentials) -> Authenticator {
        Authenticator::with_cnonce(credentials, new_cnonce)
    }

    /// With a chosen cnonce source (tests use a fixed one).
    pub fn with_cnonce(credentials: Credentials, cnonce: fn() -> String) -> Authenticator {
        Authenticator {
            credentials,
            realms: Vec::new(),
            cnonce,
            last_retry: None,
            rounds: 0,
        }
    }

    /// The request to send after `original` drew the 401/407 `response`: same Call-ID,
    /// tags and body, CSeq + 1, and credentials for every realm known (the new Via branch
    /// is the sender's job). Errors say why not to retry; [`AuthError::Rejected`] means
    /// the credentials are wrong.
    pub fn retry(&mut self, original: &Request, response: &Response) -> Result<Request, AuthError> {
        if matches!(original.method, Method::Ack | Method::Cancel) {
            // ACK to a non-2xx and CANCEL reuse the INVITE's CSeq and cannot be challenged.
            return Err(AuthError::NotRetryable("ACK and CANCEL are never resent"));
        }
        if !matches!(response.status, 401 | 407) {
            return Err(AuthError::NotAChallenge(response.status));
        }
        let cseq = original
            .cseq()
            .ok_or(AuthError::NotRetryable("no valid CSeq"))?;
        let next = cseq
            .seq
            .checked_add(1)
            .filter(|n| *n < 1 << 31)
            .ok_or(AuthError::NotRetryable("CSeq exhausted"))?;

        let consecutive = self.last_retry.is_some() && self.last_retry == Some(cseq.seq);
        self.rounds = if consecutive { self.rounds + 1 } else { 1 };
        if self.rounds > MAX_ROUNDS {
            return Err(AuthError::TooManyRounds(MAX_ROUNDS));
        }

        let offered = challenges(response);
        let chosen = select(&offered);
        if chosen.is_empty() {
            return Err(AuthError::NoUsableChallenge(response.status));
        }
        let sent = sent_credentials(original);
        for c in &chosen {
            if c.stale {
                continue;
            }
            let answered = sent.iter().find(|(k, r, _)| *k == c.kind && *r == c.realm);
            if let Some((_, _, nonce)) = answered {
                if *nonce == c.nonce || consecutive {
                    return Err(AuthError::Rejected {
                        realm: c.realm.clone(),
                    });
                }
            }
        }
        for c in chosen {
            self.remember(c);
        }

        let mut req = original.clone();
        req.headers
            .set("CSeq", format!("{next} {}", cseq.method.as_str()));
        self.authorize(&mut req);
        self.last_retry = Some(next);
        Ok(req)
    }

    /// Replaces the request's credentials with answers for every realm known, reusing
    /// their nonces with the next nonce count (RFC 3261 §22.3 allows this preemptively for
    /// later requests of the call, e.g. the BYE).
    pub fn authorize(&mut self, request: &mut Request) {
        request.headers.remove("Authorization");
        request.headers.remove("Proxy-Authorization");
        let digest_request = DigestRequest {
            method: request.method.as_str(),
            uri: &request.uri,
            body: &request.body,
        };
        let mut values = Vec::with_capacity(self.realms.len());
        for state in &mut self.realms {
            state.nc = state.nc.saturating_add(1);
            let value = answer(
                &state.challenge,
                &self.credentials,
                &digest_request,
                &state.cnonce,
                state.nc,
            );
            values.push((state.challenge.kind.answer_header(), value));
        }
        for (name, value) in values {
            request.headers.push(name, value);
        }
    }

    /// Whether any challenge has been seen.
    pub fn has_challenges(&self) -> bool {
        !self.realms.is_empty()
    }

    fn remember(&mut self, c: &Challenge) {
        let fresh = RealmState {
            challenge: c.clone(),
            nc: 0,
            cnonce: (self.cnonce)(),
        };
        let known = self
            .realms
            .iter()
            .position(|s| s.challenge.kind == c.kind && s.challenge.realm == c.realm);
        match known {
            Some(i) => {
                let s = &mut self.realms[i];
                if s.challenge.nonce == c.nonce && s.challenge.algorithm == c.algorithm {
                    s.challenge = c.clone();
                } else {
                    *s = fresh;
                }
            }
            None if self.realms.len() < MAX_REALMS => self.realms.push(fresh),
            None => {}
        }
    }
}

/// (kind, realm, nonce) of every Digest credential the request carries.
fn sent_credentials(req: &Request) -> Vec<(ChallengeKind, String, String)> {
    let mut out = Vec::new();
    for (name, value) in req.headers.iter() {
        let kind = if name.eq_ignore_ascii_case("Authorization") {
            ChallengeKind::Www
        } else if name.eq_ignore_ascii_case("Proxy-Authorization") {
            ChallengeKind::Proxy
        } else {
            continue;
        };
        for raw in parse_auth_list(value) {
            if !raw.scheme.eq_ignore_ascii_case("Digest") {
                continue;
            }
            if let (Some(realm), Some(nonce)) = (raw.param("realm"), raw.param("nonce")) {
                out.push((kind, realm.to_string(), nonce.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Limits, SipMessage};
    use rand::{Rng, SeedableRng};

    const LIMITS: Limits = Limits {
        max_message_bytes: 65535,
        max_headers: 200,
    };

    const RFC7616_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const RFC7616_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
    const RFC7616_OPAQUE: &str = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS";

    /// The two challenges of RFC 7616 §3.9.1, as two header lines.
    fn rfc7616_headers() -> String {
        let mut s = String::new();
        for alg in ["SHA-256", "MD5"] {
            s.push_str(&format!(
                "WWW-Authenticate: Digest\r\n    realm=\"http-auth@example.org\",\r\n    \
                 qop=\"auth, auth-int\",\r\n    algorithm={alg},\r\n    \
                 nonce=\"{RFC7616_NONCE}\",\r\n    opaque=\"{RFC7616_OPAQUE}\"\r\n"
            ));
        }
        s
    }

    fn response(status: u16, extra: &str) -> Response {
        let text = format!(
            "SIP/2.0 {status} Unauthorized\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
             From: <sip:dialtone@example.com>;tag=abc\r\nTo: <sip:+14155550100@trunk.example.com>;tag=srv\r\n\
             Call-ID: call-1\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes(), &LIMITS) {
            Ok(SipMessage::Response(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn invite(cseq: u32) -> Request {
        let text = format!(
            "INVITE sip:+14155550100@trunk.example.com;transport=TCP SIP/2.0\r\n\
             Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n\
             From: <sip:dialtone@example.com>;tag=abc\r\nTo: <sip:+14155550100@trunk.example.com>\r\n\
             Call-ID: call-1\r\nCSeq: {cseq} INVITE\r\nContent-Type: application/sdp\r\n\
             Content-Length: 4\r\n\r\nv=0\n"
        );
        match parse(text.as_bytes(), &LIMITS) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn param(value: &str, name: &str) -> Option<String> {
        let raws = parse_auth_list(value);
        raws.first()?.param(name).map(str::to_string)
    }

    fn creds() -> Credentials {
        Credentials::new("Mufasa", "Circle of Life")
    }

    fn fixed_cnonce() -> String {
        RFC7616_CNONCE.to_string()
    }

    #[test]
    fn rfc7616_md5_and_sha256_examples() {
        let resp = response(401, &rfc7616_headers());
        let all = challenges(&resp);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].algorithm, Algorithm::Sha256);
        assert_eq!(all[1].algorithm, Algorithm::Md5);
        assert_eq!(all[0].qop, [Qop::Auth, Qop::AuthInt]);
        assert_eq!(all[0].opaque.as_deref(), Some(RFC7616_OPAQUE));
        let get = DigestRequest {
            method: "GET",
            uri: "/dir/index.html",
            body: b"",
        };
        for (c, want) in [
            (&all[1], "8ca523f5e9506fed4657c9700eebdbec"),
            (
                &all[0],
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let v = answer(c, &creds(), &get, RFC7616_CNONCE, 1);
            assert_eq!(param(&v, "response").as_deref(), Some(want), "{v}");
            assert_eq!(param(&v, "nc").as_deref(), Some("00000001"));
            assert_eq!(param(&v, "qop").as_deref(), Some("auth"));
            assert_eq!(param(&v, "opaque").as_deref(), Some(RFC7616_OPAQUE));
            assert_eq!(param(&v, "cnonce").as_deref(), Some(RFC7616_CNONCE));
            assert_eq!(param(&v, "uri").as_deref(), Some("/dir/index.html"));
            assert_eq!(
                param(&v, "algorithm").as_deref(),
                Some(c.algorithm.as_str())
            );
            assert!(v.contains("qop=auth, nc=00000001"), "unquoted: {v}");
        }
        // SHA-256 is preferred over MD5 for the same realm, whatever the order.
        let chosen = select(&all);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].algorithm, Algorithm::Sha256);
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(select(&reversed)[0].algorithm, Algorithm::Sha256);
    }

    #[test]
    fn rfc2617_example() {
        let value = "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
                     nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
                     opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let c = &parse_challenges(value, ChallengeKind::Www)[0];
        assert_eq!(c.algorithm, Algorithm::Md5);
        let v = answer(
            c,
            &Credentials::new("Mufasa", "Circle Of Life"),
            &DigestRequest {
                method: "GET",
                uri: "/dir/index.html",
                body: b"",
            },
            "0a4f113b",
            1,
        );
        assert_eq!(
            param(&v, "response").as_deref(),
            Some("6629fae49393a05397450978507c4ef1")
        );
    }

    #[test]
    fn no_qop_is_rfc2069_style() {
        let c = &parse_challenges(
            "Digest realm=\"testrealm@host.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\"",
            ChallengeKind::Proxy,
        )[0];
        assert!(c.qop.is_empty());
        let req = DigestRequest {
            method: "INVITE",
            uri: "sip:bob@example.com",
            body: b"",
        };
        let v = answer(c, &creds(), &req, "xyz", 1);
        // H(HA1:nonce:HA2), no cnonce/nc/qop.
        let ha1 = Algorithm::Md5.hash(&[b"Mufasa", b"testrealm@host.com", b"Circle of Life"]);
        let ha2 = Algorithm::Md5.hash(&[b"INVITE", b"sip:bob@example.com"]);
        let want = Algorithm::Md5.hash(&[
            ha1.as_bytes(),
            b"dcd98b7102dd2f0e8b11d0f600bfb0c093",
            ha2.as_bytes(),
        ]);
        assert_eq!(param(&v, "response"), Some(want));
        for absent in ["cnonce", "nc", "qop", "opaque"] {
            assert_eq!(param(&v, absent), None, "{v}");
        }
    }

    #[test]
    fn sess_and_auth_int_and_userhash() {
        let c = &parse_challenges(
            "Digest realm=\"r\", nonce=\"n\", algorithm=sha-256-SESS, qop=\"auth-int\", userhash=TRUE",
            ChallengeKind::Www,
        )[0];
        assert_eq!(c.algorithm, Algorithm::Sha256Sess);
        assert!(c.userhash);
        let req = DigestRequest {
            method: "INVITE",
            uri: "sip:x@h",
            body: b"v=0\r\n",
        };
        let v = answer(c, &creds(), &req, "cn", 2);
        let a = Algorithm::Sha256;
        let ha1 = a.hash(&[
            a.hash(&[b"Mufasa", b"r", b"Circle of Life"]).as_bytes(),
            b"n",
            b"cn",
        ]);
        let ha2 = a.hash(&[b"INVITE", b"sip:x@h", a.hash(&[b"v=0\r\n"]).as_bytes()]);
        let want = a.hash(&[
            ha1.as_bytes(),
            b"n",
            b"00000002",
            b"cn",
            b"auth-int",
            ha2.as_bytes(),
        ]);
        assert_eq!(param(&v, "response"), Some(want));
        assert_eq!(param(&v, "qop").as_deref(), Some("auth-int"));
        assert_eq!(param(&v, "username"), Some(a.hash(&[b"Mufasa", b"r"])));
        assert_eq!(param(&v, "userhash").as_deref(), Some("true"));
        assert_eq!(param(&v, "algorithm").as_deref(), Some("SHA-256-sess"));

        // auth is preferred over auth-int when both are offered.
        let c = &parse_challenges(
            "Digest realm=r,nonce=n,qop=\"auth-int,auth\"",
            ChallengeKind::Www,
        )[0];
        let v = answer(c, &creds(), &req, "cn", 1);
        assert_eq!(param(&v, "qop").as_deref(), Some("auth"));

        // SHA-512-256 is computed and ranks above SHA-256.
        let all = parse_challenges(
            "Digest realm=r,nonce=n,algorithm=SHA-256, Digest realm=r,nonce=n,algorithm=SHA-512-256",
            ChallengeKind::Www,
        );
        assert_eq!(select(&all)[0].algorithm, Algorithm::Sha512_256);
        assert_eq!(
            Algorithm::Sha512_256.hash(&[b"abc"]),
            "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
        );
    }

    #[test]
    fn quoting_whitespace_case_and_commas() {
        let value = "  digest   REALM = \"a, b \\\"quoted\\\" realm\" ,NONCE=\"x,y\",  \
                     Algorithm = \"MD5\", qop=auth , opaque=\"o\\\\p\" , , stale=true";
        let cs = parse_challenges(value, ChallengeKind::Www);
        assert_eq!(cs.len(), 1);
        let c = &cs[0];
        assert_eq!(c.realm, "a, b \"quoted\" realm");
        assert_eq!(c.nonce, "x,y");
        assert_eq!(c.opaque.as_deref(), Some("o\\p"));
        assert_eq!(c.qop, [Qop::Auth]);
        assert!(c.stale);
        // Quotes and backslashes are escaped back in the answer.
        let v = answer(
            c,
            &creds(),
            &DigestRequest {
                method: "BYE",
                uri: "sip:a@b",
                body: b"",
            },
            "c",
            1,
        );
        assert!(v.contains(r#"realm="a, b \"quoted\" realm""#), "{v}");
        assert_eq!(param(&v, "realm").as_deref(), Some(c.realm.as_str()));
        assert_eq!(param(&v, "opaque").as_deref(), Some("o\\p"));
    }

    #[test]
    fn several_challenges_in_one_line_and_other_schemes() {
        let value = "Basic realm=\"x\", Newauth realm=\"apps\", type=1, \
                     title=\"Login to \\\"apps\\\"\", Digest realm=\"one\", nonce=\"n1\", \
                     algorithm=MD5, Digest realm=\"two\", nonce=\"n2\", algorithm=SHA-256, \
                     Digest realm=\"one\", nonce=\"n3\", algorithm=SHA-256, \
                     Digest realm=\"one\", nonce=\"n4\", algorithm=SHA-256, \
                     Bearer abc==";
        let cs = parse_challenges(value, ChallengeKind::Proxy);
        assert_eq!(cs.len(), 4);
        let chosen = select(&cs);
        let got: Vec<(&str, &str)> = chosen
            .iter()
            .map(|c| (c.realm.as_str(), c.nonce.as_str()))
            .collect();
        // One per realm; SHA-256 over MD5, and the first of equals.
        assert_eq!(got, [("one", "n3"), ("two", "n2")]);
    }

    #[test]
    fn unanswerable_challenges_are_skipped() {
        for value in [
            "Digest realm=\"r\"",                                 // no nonce
            "Digest nonce=\"n\"",                                 // no realm
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-1",   // unknown algorithm
            "Digest realm=\"r\", nonce=\"n\", qop=\"auth-conf\"", // no qop we do
            "Digest realm=\"r\", nonce=\"n\", realm=\"s\"",       // repeated parameter
            "Digest realm=\"r\", nonce=\"n, opaque=x",            // unterminated quote
            "Digest realm=\"r\"x, nonce=\"n\"",                   // junk after the quote
            "Digest realm=\"r\", nonce=\"n\", ==",                // garbage element
            "Digestrealm=\"r\", nonce=\"n\"",                     // no scheme
            "Basic realm=\"r\", nonce=\"n\"",
            "",
        ] {
            assert!(
                parse_challenges(value, ChallengeKind::Www).is_empty(),
                "{value}"
            );
        }
    }

    #[test]
    fn retry_builds_the_next_request() {
        let headers = format!(
            "{}Proxy-Authenticate: Digest realm=\"proxy\", nonce=\"pn\", qop=\"auth\"\r\n",
            rfc7616_headers()
        );
        let resp = response(401, &headers);
        let original = invite(1);
        let mut auth = Authenticator::with_cnonce(creds(), fixed_cnonce);
        let next = auth.retry(&original, &resp).unwrap();
        assert_eq!(next.cseq().unwrap().seq, 2);
        assert_eq!(next.cseq().unwrap().method, Method::Invite);
        assert_eq!(next.call_id(), original.call_id());
        assert_eq!(next.from_tag(), original.from_tag());
        assert_eq!(next.body, original.body);
        assert_eq!(next.uri, original.uri);
        let www = next.headers.get("Authorization").unwrap();
        let proxy = next.headers.get("Proxy-Authorization").unwrap();
        assert_eq!(param(www, "algorithm").as_deref(), Some("SHA-256"));
        // The raw Request-URI, transport=TCP in its original case.
        assert_eq!(
            param(www, "uri").as_deref(),
            Some("sip:+14155550100@trunk.example.com;transport=TCP")
        );
        assert_eq!(param(proxy, "realm").as_deref(), Some("proxy"));
        assert_eq!(param(www, "cnonce").as_deref(), Some(RFC7616_CNONCE));

        // A later request in the call reuses the nonces with nc 2.
        let mut bye = invite(3);
        bye.method = Method::Bye;
        auth.authorize(&mut bye);
        let v = bye.headers.get("Authorization").unwrap();
        assert_eq!(param(v, "nc").as_deref(), Some("00000002"));
        assert_eq!(bye.headers.count("Authorization"), 1);
        assert_eq!(bye.headers.count("Proxy-Authorization"), 1);
        // And the serialised request reparses.
        assert!(parse(&next.to_bytes(), &LIMITS).is_ok());
    }

    #[test]
    fn same_nonce_without_stale_means_wrong_credentials() {
        let resp = response(
            407,
            "Proxy-Authenticate: Digest realm=\"p\", nonce=\"n1\"\r\n",
        );
        let mut auth = Authenticator::with_cnonce(creds(), fixed_cnonce);
        let second = auth.retry(&invite(1), &resp).unwrap();
        assert_eq!(
            auth.retry(&second, &resp),
            Err(AuthError::Rejected { realm: "p".into() })
        );
        // A rotated nonce without stale straight after our answer: also wrong credentials.
        let mut auth = Authenticator::with_cnonce(creds(), fixed_cnonce);
        let second = auth.retry(&invite(1), &resp).unwrap();
        let rotated = response(
            407,
            "Proxy-Authenticate: Digest realm=\"p\", nonce=\"n2\"\r\n",
        );
        assert!(matches!(
            auth.retry(&second, &rotated),
            Err(AuthError::Rejected { .. })
        ));
    }

    #[test]
    fn stale_nonce_is_retried_with_a_fresh_count() {
        let mut auth = Authenticator::with_cnonce(creds(), fixed_cnonce);
        let first = response(
            401,
            "WWW-Authenticate: Digest realm=\"r\", nonce=\"n1\", qop=auth\r\n",
        );
        let second = auth.retry(&invite(1), &first).unwrap();
        let stale = response(
            401,
            "WWW-Authenticate: Digest realm=\"r\", nonce=\"n2\", qop=auth, stale=TRUE\r\n",
        );
        let third = auth.retry(&second, &stale).unwrap();
        let v = third.headers.get("Authorization").unwrap();
        assert_eq!(param(v, "nonce").as_deref(), Some("n2"));
        assert_eq!(param(v, "nc").as_deref(), Some("00000001"));
        assert_eq!(third.cseq().unwrap().seq, 3);
        // Endless stale challenges still end.
        let fourth = auth.retry(&third, &stale).unwrap();
        assert_eq!(
            param(fourth.headers.get("Authorization").unwrap(), "nc").as_deref(),
            Some("00000002")
        );
        assert_eq!(
            auth.retry(&fourth, &stale),
            Err(AuthError::TooManyRounds(MAX_ROUNDS))
        );
    }

    #[test]
    fn preemptive_credentials_with_an_old_nonce_get_a_fresh_try() {
        let mut auth = Authenticator::with_cnonce(creds(), fixed_cnonce);
        let first = response(
            401,
            "WWW-Authenticate: Digest realm=\"r\", nonce=\"n1\"\r\n",
        );
        auth.retry(&invite(1), &first).unwrap();
        let mut bye = invite(5);
        bye.method = Method::Bye;
        auth.authorize(&mut bye);
        let rotated = response(
            401,
            "WWW-Authenticate: Digest realm=\"r\", nonce=\"n2\"\r\n",
        );
        let again = auth.retry(&bye, &rotated).unwrap();
        assert_eq!(again.cseq().unwrap().seq, 6);
        assert_eq!(
            auth.retry(&again, &rotated),
            Err(AuthError::Rejected { realm: "r".into() })
        );
    }

    #[test]
    fn what_is_not_retried() {
        let mut auth = Authenticator::new(creds());
        let challenge = response(401, "WWW-Authenticate: Digest realm=\"r\", nonce=\"n\"\r\n");
        assert_eq!(
            auth.retry(&invite(1), &response(403, "")),
            Err(AuthError::NotAChallenge(403))
        );
        assert_eq!(
            auth.retry(
                &invite(1),
                &response(401, "WWW-Authenticate: Basic realm=\"r\"\r\n")
            ),
            Err(AuthError::NoUsableChallenge(401))
        );
        let mut cancel = invite(1);
        cancel.method = Method::Cancel;
        assert!(matches!(
            auth.retry(&cancel, &challenge),
            Err(AuthError::NotRetryable(_))
        ));
        assert!(matches!(
            auth.retry(&invite(0x7fff_ffff), &challenge),
            Err(AuthError::NotRetryable(_))
        ));
        assert!(!auth.has_challenges());
    }

    #[test]
    fn password_is_never_in_debug_output() {
        let mut auth = Authenticator::with_cnonce(creds(), fixed_cnonce);
        let resp = response(401, "WWW-Authenticate: Digest realm=\"r\", nonce=\"n\"\r\n");
        auth.retry(&invite(1), &resp).unwrap();
        for text in [format!("{:?}", creds()), format!("{auth:?}")] {
            assert!(!text.contains("Circle of Life"), "{text}");
            assert!(text.contains("Mufasa"));
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        let long = "a".repeat(MAX_PARAM_VALUE + 10);
        let fixed = [
            format!("Digest realm=\"r\", nonce=\"{long}\""),
            "Digest ".repeat(5000),
            "a ".repeat(MAX_HEADER_VALUE / 2),
            ",".repeat(20000),
            "Digest realm=\"\\".into(),
            "Digest realm=\"é\\é\", nonce=ñ".into(),
            format!("Digest {}", "x=y, ".repeat(100)),
            "\"\"\"\"\"".into(),
            "= = = =".into(),
        ];
        for v in &fixed {
            assert!(parse_challenges(v, ChallengeKind::Www).len() <= MAX_CHALLENGES);
        }
        assert!(parse_challenges(&fixed[0], ChallengeKind::Www).is_empty());
        assert!(parse_challenges(&fixed[1], ChallengeKind::Www).is_empty());
        // Non-ASCII stays intact through unescaping.
        assert_eq!(
            parse_challenges("Digest realm=\"é\\é\", nonce=ñ", ChallengeKind::Www)[0].realm,
            "éé"
        );

        let mut rng = rand::rngs::StdRng::seed_from_u64(7616);
        const ALPHABET: &[&str] = &[
            "Digest",
            " ",
            ",",
            "\"",
            "\\",
            "=",
            "realm",
            "nonce",
            "qop",
            "auth",
            "MD5",
            "algorithm",
            "SHA-256-sess",
            "stale",
            "true",
            "é",
            "\t",
            "Basic",
            "x",
        ];
        let creds = creds();
        for _ in 0..20000 {
            let n = rng.random_range(0..40);
            let v: String = (0..n)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                .collect();
            for c in parse_challenges(&v, ChallengeKind::Www) {
                let a = answer(
                    &c,
                    &creds,
                    &DigestRequest {
                        method: "INVITE",
                        uri: "sip:a@b",
                        body: b"",
                    },
                    "c",
                    1,
                );
                // What we write, we can read back.
                assert_eq!(param(&a, "realm").as_deref(), Some(c.realm.as_str()), "{v}");
            }
            let _ = sent_credentials(&{
                let mut r = invite(1);
                r.headers.push("Authorization", v.clone());
                r
            });
        }
    }
}
