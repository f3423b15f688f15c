//! Imported phone numbers (elastic SIP trunking): a number the user owns at a SIP trunk
//! provider, bound to agents for the calls it receives and makes.
//!
//! The trunk password has to be kept in clear (SIP digest authentication needs it), so it
//! lives in a [`Secret`], whose `Debug` prints a placeholder and which has no `Serialize`:
//! it cannot reach a response or a log line by accident. Nothing here derives `Serialize`;
//! the API builds its JSON by hand from the fields it means to show.

use serde::{Deserialize, Serialize};

/// A credential: readable through [`Secret::expose`] only, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The clear text, for the SIP digest and the store only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Outbound transport to the trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Tcp,
    Udp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
            Transport::Tls => "TLS",
        }
    }

    /// `TCP`, `UDP` or `TLS`, any case.
    pub fn parse(s: &str) -> Option<Transport> {
        match s.trim().to_ascii_uppercase().as_str() {
            "TCP" => Some(Transport::Tcp),
            "UDP" => Some(Transport::Udp),
            "TLS" => Some(Transport::Tls),
            _ => None,
        }
    }
}

/// `agent_version` of a weighted agent: the SDK allows a number or a tag name. Kept and
/// returned as given; calls always run the agent's current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AgentVersion {
    Number(i64),
    Tag(String),
}

/// One entry of `inbound_agents` / `outbound_agents`: an agent and its share of calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedAgent {
    pub agent_id: String,
    /// In (0, 1]; the weights of one list add up to 1.
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<AgentVersion>,
}

/// An imported number. `phone_number` is the key; a lookup matches it with or without
/// the leading `+` (see [`lookup_key`]), so `+14155550100` and `14155550100` cannot both
/// be imported.
#[derive(Debug, Clone, PartialEq)]
pub struct PhoneNumber {
    /// E.164 (`+14155550100`), or anything SIP-safe when imported with
    /// `ignore_e164_validation`.
    pub phone_number: String,
    pub nickname: Option<String>,
    /// Agents answering calls to this number; one is picked per call by weight.
    pub inbound_agents: Vec<WeightedAgent>,
    /// Agents making calls from this number; one is picked per call by weight.
    pub outbound_agents: Vec<WeightedAgent>,
    /// Asked before routing an inbound call (API.md, "Inbound webhook").
    pub inbound_webhook_url: Option<String>,
    /// Where outbound calls go: a host, `host:port`, maybe `;transport=`, maybe a SIP URI.
    pub termination_uri: String,
    pub sip_trunk_auth_username: Option<String>,
    /// Never returned by the API and never logged.
    pub sip_trunk_auth_password: Option<Secret>,
    pub transport: Transport,
    /// ISO 3166-1 alpha-2 codes; `None` or empty allows every country.
    pub allowed_inbound_country_list: Option<Vec<String>>,
    pub allowed_outbound_country_list: Option<Vec<String>>,
    /// Encoding names (`PCMU`, `PCMA`, `G722`), in order of preference; checked by the API
    /// against the codecs the media layer runs.
    pub codecs: Vec<String>,
    /// Optimistic-lock counter for updates; not part of the API.
    pub version: i64,
    pub created_timestamp: i64,
    pub last_modification_timestamp: i64,
}

impl PhoneNumber {
    /// The single inbound agent, for clients of Retell's older `inbound_agent_id` field:
    /// set when exactly one agent is bound.
    pub fn inbound_agent_id(&self) -> Option<&str> {
        single(&self.inbound_agents)
    }

    pub fn outbound_agent_id(&self) -> Option<&str> {
        single(&self.outbound_agents)
    }

    /// `phone_number_pretty`: North American numbers as `+1 (415) 555-0100`, others as
    /// stored.
    pub fn pretty(&self) -> String {
        pretty(&self.phone_number)
    }
}

fn single(agents: &[WeightedAgent]) -> Option<&str> {
    match agents {
        [only] => Some(only.agent_id.as_str()),
        _ => None,
    }
}

fn pretty(number: &str) -> String {
    let Some(rest) = number.strip_prefix("+1") else {
        return number.to_owned();
    };
    if rest.len() == 10 && rest.bytes().all(|b| b.is_ascii_digit()) {
        format!("+1 ({}) {}-{}", &rest[..3], &rest[3..6], &rest[6..])
    } else {
        number.to_owned()
    }
}

/// What two spellings of one number have in common: the number without its leading
/// `+`. Stored in a unique column, so lookups and duplicate checks ignore the `+`.
pub fn lookup_key(number: &str) -> &str {
    let number = number.trim();
    number.strip_prefix('+').unwrap_or(number)
}

/// E.164: `+`, then 1 to 15 digits, the first not zero.
pub fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (1..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// A key allowed with `ignore_e164_validation`: an optional `+` and up to 32 characters
/// that need no escaping in a URL path or in the user part of a SIP URI.
pub fn is_pseudo_number(number: &str) -> bool {
    let body = number.strip_prefix('+').unwrap_or(number);
    (1..=32).contains(&body.len())
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'))
}

/// Officially assigned ISO 3166-1 alpha-2 codes.
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH \
BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX \
CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM \
GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG \
KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN \
MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK \
PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST \
SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI \
VN VU WF WS YE YT ZA ZM ZW";

/// An assigned ISO 3166-1 alpha-2 code, upper case.
pub fn is_country_code(code: &str) -> bool {
    code.len() == 2
        && code.bytes().all(|b| b.is_ascii_uppercase())
        && COUNTRIES.split_ascii_whitespace().any(|c| c == code)
}

/// Picks an agent by weight. `rand01` is a uniform draw from [0, 1); it is scaled by the
/// total weight so that lists summing to slightly less than 1 (rounding) still always
/// pick. `None` only for an empty list (or all weights zero).
pub fn pick_agent(agents: &[WeightedAgent], rand01: f64) -> Option<&str> {
    let total: f64 = agents.iter().map(|a| a.weight.max(0.0)).sum();
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let target = rand01.clamp(0.0, 1.0) * total;
    let mut acc = 0.0;
    let mut last = None;
    for agent in agents.iter().filter(|a| a.weight > 0.0) {
        acc += agent.weight;
        if target < acc {
            return Some(agent.agent_id.as_str());
        }
        last = Some(agent.agent_id.as_str());
    }
    // rand01 == 1.0, or rounding in the sum: the last agent with weight takes it.
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str, weight: f64) -> WeightedAgent {
        WeightedAgent {
            agent_id: id.to_owned(),
            weight,
            agent_version: None,
        }
    }

    #[test]
    fn pick_follows_weights() {
        let agents = [w("a", 0.2), w("b", 0.5), w("c", 0.3)];
        assert_eq!(pick_agent(&agents, 0.0), Some("a"));
        assert_eq!(pick_agent(&agents, 0.199), Some("a"));
        assert_eq!(pick_agent(&agents, 0.2), Some("b"));
        assert_eq!(pick_agent(&agents, 0.69), Some("b"));
        assert_eq!(pick_agent(&agents, 0.7), Some("c"));
        assert_eq!(pick_agent(&agents, 0.999_999), Some("c"));
        assert_eq!(pick_agent(&agents, 1.0), Some("c"));
        assert_eq!(pick_agent(&[], 0.5), None);
        assert_eq!(pick_agent(&[w("x", 1.0)], 0.99), Some("x"));
        // Sums a little under 1 still always pick.
        let short = [w("a", 0.333), w("b", 0.333), w("c", 0.333)];
        assert_eq!(pick_agent(&short, 0.9999), Some("c"));
        // Zero weights are never picked.
        assert_eq!(pick_agent(&[w("z", 0.0), w("y", 1.0)], 0.0), Some("y"));
    }

    #[test]
    fn pick_distribution_matches_weights() {
        let agents = [w("a", 0.25), w("b", 0.75)];
        let n = 10_000;
        let a = (0..n)
            .filter(|i| pick_agent(&agents, f64::from(*i) / f64::from(n)) == Some("a"))
            .count();
        assert_eq!(a, 2_500);
    }

    #[test]
    fn e164_rules() {
        for ok in ["+14155550100", "+1", "+123456789012345"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in [
            "14155550100",
            "+",
            "+04155550100",
            "+1234567890123456",
            "+1 415 555 0100",
            "+1-415",
            "",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
        assert!(is_pseudo_number("1001"));
        assert!(is_pseudo_number("+ext-12.a_b*"));
        assert!(!is_pseudo_number("a/b"));
        assert!(!is_pseudo_number("a b"));
        assert!(!is_pseudo_number("+"));
        assert!(!is_pseudo_number(&"9".repeat(33)));
    }

    #[test]
    fn country_codes() {
        assert_eq!(COUNTRIES.split_ascii_whitespace().count(), 249);
        assert!(is_country_code("US") && is_country_code("GB") && is_country_code("ZW"));
        assert!(!is_country_code("us") && !is_country_code("UK") && !is_country_code("USA"));
    }

    #[test]
    fn lookup_keys_and_pretty() {
        assert_eq!(lookup_key("+14155550100"), "14155550100");
        assert_eq!(lookup_key("14155550100"), "14155550100");
        assert_eq!(pretty("+14155550100"), "+1 (415) 555-0100");
        assert_eq!(pretty("+442071838750"), "+442071838750");
        assert_eq!(pretty("1001"), "1001");
    }

    #[test]
    fn debug_redacts_the_password() {
        let n = PhoneNumber {
            phone_number: "+14155550100".into(),
            nickname: None,
            inbound_agents: vec![w("a", 1.0)],
            outbound_agents: vec![],
            inbound_webhook_url: None,
            termination_uri: "trunk.example.com".into(),
            sip_trunk_auth_username: Some("user".into()),
            sip_trunk_auth_password: Some(Secret::new("hunter2-pw")),
            transport: Transport::Tcp,
            allowed_inbound_country_list: None,
            allowed_outbound_country_list: None,
            codecs: vec!["PCMU".into()],
            version: 0,
            created_timestamp: 1,
            last_modification_timestamp: 1,
        };
        let debug = format!("{n:?} {n:#?}");
        assert!(!debug.contains("hunter2-pw"), "{debug}");
        assert!(debug.contains("<redacted>"));
        assert_eq!(n.inbound_agent_id(), Some("a"));
        assert_eq!(n.outbound_agent_id(), None);
    }
}
