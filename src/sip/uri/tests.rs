use super::*;

fn parse(s: &str) -> Uri {
    Uri::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn all_parts_of_a_sip_uri() {
    let u = parse("sips:al%69ce:pw@[2001:db8::1]:5061;transport=tcp;lr?subject=x&h=");
    assert_eq!(u.scheme, Scheme::Sips);
    assert_eq!(u.user.as_deref(), Some("al%69ce"));
    assert_eq!(u.user_unescaped().as_deref(), Some("alice"));
    assert_eq!(u.password.as_deref(), Some("pw"));
    assert_eq!(u.host, Some(Host::V6("2001:db8::1".parse().unwrap())));
    assert_eq!(u.port, Some(5061));
    assert_eq!(
        u.params,
        [
            ("transport".to_string(), Some("tcp".to_string())),
            ("lr".to_string(), None)
        ]
    );
    assert_eq!(
        u.headers,
        [
            ("subject".to_string(), "x".to_string()),
            ("h".to_string(), String::new())
        ]
    );
    assert_eq!(u.hostport(), "[2001:db8::1]:5061");
}

#[test]
fn hosts() {
    let host = |s: &str| parse(s).host.unwrap();
    assert_eq!(
        host("sip:example.COM"),
        Host::Name("example.COM".to_string())
    );
    assert_eq!(
        host("sip:u@192.0.2.1:5060"),
        Host::V4([192, 0, 2, 1].into())
    );
    assert_eq!(host("sip:[::1]"), Host::V6(Ipv6Addr::LOCALHOST));
    // `_` is outside RFC 3261's hostname, but peers use it.
    assert_eq!(host("sip:my_pbx.lan"), Host::Name("my_pbx.lan".to_string()));
    assert_eq!(host("sip:[::1]").unbracketed(), "::1");
    assert_eq!(
        host("sip:[::1]").ip(),
        Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
    );
    assert_eq!(host("sip:h").ip(), None);
}

#[test]
fn display_writes_back_what_was_read() {
    for uri in [
        "sip:example.com",
        "sip:alice@example.com",
        "sips:bob:secret@example.com:5061",
        "sip:u:@h",
        "sip:user;par=u%40example.net@example.com",
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com",
        "sip:a@192.0.2.1;transport=TCP;lr;maddr=239.255.255.1;x=%41",
        "sip:a@[2001:db8::1]:5060;lr?Subject=hi%20there&Priority=urgent&empty=",
        "sip:+14155550100@trunk;user=phone",
        "sip:null-%00-null@example.com",
        "tel:+1-415-555-0100;phone-context=example.com;isub=12",
        "tel:7042;phone-context=example.com",
        "tel:*67#",
    ] {
        assert_eq!(parse(uri).to_string(), uri);
    }
    // Scheme in lower case, IPv6 canonical: the only changes.
    assert_eq!(
        parse("SIPS:a@[2001:DB8:0::1]").to_string(),
        "sips:a@[2001:db8::1]"
    );
    assert_eq!(parse("TEL:+1").to_string(), "tel:+1");
}

#[test]
fn invalid_uris_say_what_is_wrong() {
    use UriError::*;
    for (uri, error) in [
        ("", NoScheme),
        ("nocolon", NoScheme),
        (":x", NoScheme),
        ("<sip:a@b>", NoScheme),
        ("1sip:a@b", NoScheme),
        ("http://x", UnsupportedScheme("http".into())),
        ("urn:service:sos", UnsupportedScheme("urn".into())),
        ("sip:a@h h", Whitespace),
        ("sip:a@h\r\n", Whitespace),
        ("sip:a@h\x7f", Whitespace),
        ("sip:", NoHost),
        ("sip:a@", NoHost),
        ("sip:a@:5060", NoHost),
        ("sip:@h", User(String::new())),
        ("sip:a%4@h", User("a%4".into())),
        ("sip:a%zz@h", User("a%zz".into())),
        ("sip:a<b@h", User("a<b".into())),
        ("sip:ü@h", User("ü".into())),
        ("sip:a:p@ss@h", Host("ss@h".into())),
        ("sip:a@b@c", Host("b@c".into())),
        ("sip:a:p;w@h", Password),
        ("sip:a@<h>", Host("<h>".into())),
        ("sip:a@h!", Host("h!".into())),
        ("sip:a@1.2.3", Host("1.2.3".into())),
        ("sip:a@256.1.1.1", Host("256.1.1.1".into())),
        ("sip:a@[::1", Host("[::1".into())),
        ("sip:a@[]", Host("[]".into())),
        ("sip:a@[zz::1]", Host("[zz::1]".into())),
        ("sip:a@[::1]x", Host("[::1]x".into())),
        ("sip:a@h:x", Port("x".into())),
        ("sip:a@h:", Port(String::new())),
        ("sip:a@h:+5060", Port("+5060".into())),
        ("sip:a@h:65536", Port("65536".into())),
        ("sip:a@h:005060", Port("005060".into())),
        ("sip:a@h;", Param(String::new())),
        ("sip:a@h;;lr", Param(String::new())),
        ("sip:a@h;=v", Param("=v".into())),
        ("sip:a@h;n=", Param("n=".into())),
        ("sip:a@h;n=\"v\"", Param("n=\"v\"".into())),
        ("sip:a@h;n=%4", Param("n=%4".into())),
        ("sip:a@h?", Header(String::new())),
        ("sip:a@h?x", Header("x".into())),
        ("sip:a@h?=x", Header("=x".into())),
        ("sip:a@h?a=b&", Header(String::new())),
        ("sip:a@h?a=<", Header("a=<".into())),
        ("tel:", Number(String::new())),
        ("tel:+", Number("+".into())),
        ("tel:abc-z", Number("abc-z".into())),
        ("tel:+1;", Param(String::new())),
        ("tel:+1;a=<", Param("a=<".into())),
    ] {
        assert_eq!(Uri::parse(uri), Err(error), "{uri:?}");
    }
    assert_eq!(
        Uri::parse("sip:a@h:99999").unwrap_err().to_string(),
        "has a bad port '99999'"
    );
}

#[test]
fn escapes() {
    assert_eq!(unescape("a%41%2a%zz%4"), "aA*%zz%4");
    assert_eq!(unescape("%e2%82%ac"), "€");
    assert_eq!(unescape("%ff"), "\u{fffd}");
    // esc01: an escaped URI inside the user part is just text.
    let u = parse("sip:sips%3Auser%40example.com@example.net");
    assert_eq!(u.user_unescaped().as_deref(), Some("sips:user@example.com"));
    assert_eq!(u.host, Some(Host::Name("example.net".to_string())));
    // Escapes are allowed in the password, parameters and headers too.
    let u = parse("sip:u:p%40ss@h;x%3D=%3B?a%26=b%20c");
    assert_eq!(u.password.as_deref(), Some("p%40ss"));
    assert_eq!(u.param("x%3D"), Some("%3B"));
    assert_eq!(u.headers, [("a%26".to_string(), "b%20c".to_string())]);
}

#[test]
fn parameters_keep_their_order_and_match_in_any_case() {
    let u = parse("sip:h;Transport=TCP;LR;user=phone;transport=udp");
    assert_eq!(u.param("transport"), Some("TCP"));
    assert_eq!(u.param("lr"), Some(""));
    assert_eq!(u.param("USER"), Some("phone"));
    assert_eq!(u.param("maddr"), None);
    let names: Vec<&str> = u.params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Transport", "LR", "user", "transport"]);
}

#[test]
fn user_parts() {
    for (uri, user) in [
        ("sip:%61lice@example.com", Some("alice")),
        ("sips:bob:secret@example.com", Some("bob")),
        ("SIP:carol@example.com", Some("carol")),
        ("sip:example.com", None),
        ("sip:+14155550100@trunk;user=phone", Some("+14155550100")),
        ("tel:+14155550100", Some("+14155550100")),
        ("TEL:+14155550100;npdi", Some("+14155550100")),
        (
            "tel:+1-415-555-0100;phone-context=example.com",
            Some("+14155550100"),
        ),
        ("tel:(0)7042", Some("07042")),
        (
            "sip:user;par=u%40example.net@example.com",
            Some("user;par=u@example.net"),
        ),
        ("sip:null-%00-null@example.com", Some("null-\0-null")),
        ("mailto:a@b", None),
        ("tel:", None),
        ("sip:a@b c", None),
    ] {
        assert_eq!(user_of(uri).as_deref(), user, "{uri}");
    }
}

/// What `user_of` in the call engine gives today, for the URIs it sees (To and From of
/// INVITEs): the same here.
#[test]
fn user_of_matches_the_call_engine() {
    for (uri, user) in [
        ("sip:+14155550100@127.0.0.1:5060", "+14155550100"),
        ("sip:alice@example.com;transport=tcp", "alice"),
        ("sips:%2B14155550100@example.com", "+14155550100"),
        ("tel:+14155550100", "+14155550100"),
        ("tel:+14155550100;phone-context=example.com", "+14155550100"),
    ] {
        assert_eq!(user_of(uri).as_deref(), Some(user), "{uri}");
    }
    assert_eq!(user_of("sip:example.com"), None);
}

#[test]
fn other_schemes_as_opaque_uris() {
    assert_eq!(check("sip:a@b"), Ok(()));
    assert_eq!(check("tel:+1"), Ok(()));
    assert_eq!(check("urn:service:sos"), Ok(()));
    assert_eq!(check("http://example.com/x?y=z"), Ok(()));
    assert_eq!(check("urn:"), Err(UriError::Opaque("urn".into())));
    assert_eq!(check("urn:a\"b"), Err(UriError::Opaque("urn".into())));
    assert_eq!(check("urn:a<b"), Err(UriError::Opaque("urn".into())));
    assert_eq!(check("urn:é"), Err(UriError::Opaque("urn".into())));
    assert_eq!(check("urn:a b"), Err(UriError::Whitespace));
    assert_eq!(check("sip:a@h:x"), Err(UriError::Port("x".into())));
    assert_eq!(check("no scheme"), Err(UriError::NoScheme));
}

#[test]
fn trunk_addresses() {
    for (address, shown) in [
        ("trunk.example.com", "sip:trunk.example.com"),
        ("trunk.example.com:5080", "sip:trunk.example.com:5080"),
        (
            "10.0.0.1:5070;transport=TLS",
            "sip:10.0.0.1:5070;transport=TLS",
        ),
        ("[2001:db8::1]", "sip:[2001:db8::1]"),
        ("+1@trunk.example.com", "sip:+1@trunk.example.com"),
        ("sips:trunk.example.com", "sips:trunk.example.com"),
        ("SIP:[2001:db8::1]:5060", "sip:[2001:db8::1]:5060"),
    ] {
        let u = Uri::parse_trunk(address).unwrap_or_else(|e| panic!("{address}: {e}"));
        assert_eq!(u.to_string(), shown);
    }
    // Not sip: or sips:, so read as a host name, which fails.
    assert_eq!(Uri::parse_trunk("tel:+1"), Err(UriError::Port("+1".into())));
    assert_eq!(
        Uri::parse_trunk("bad_host!.com"),
        Err(UriError::Host("bad_host!.com".into()))
    );
}

/// The Request-URI and To host the call engine builds today (`trunk_uri` and
/// `trunk_invite` in src/call/engine/outbound.rs), for each form of termination URI.
#[test]
fn trunk_request_uris_match_the_call_engine() {
    use Transport::*;
    let n = "+14155550100";
    for (termination, transport, request_uri, to_host) in [
        (
            "trunk.example.com",
            Udp,
            "sip:+14155550100@trunk.example.com;transport=udp",
            "trunk.example.com",
        ),
        (
            "127.0.0.1:5080",
            Tcp,
            "sip:+14155550100@127.0.0.1:5080;transport=tcp",
            "127.0.0.1:5080",
        ),
        (
            "trunk.example.com;transport=TCP",
            Udp,
            "sip:+14155550100@trunk.example.com;transport=TCP",
            "trunk.example.com",
        ),
        (
            "10.0.0.1:5070;transport=TLS",
            Tls,
            "sip:+14155550100@10.0.0.1:5070;transport=TLS",
            "10.0.0.1:5070",
        ),
        (
            "sip:trunk.example.com",
            Udp,
            "sip:+14155550100@trunk.example.com;transport=udp",
            "trunk.example.com",
        ),
        (
            "sips:trunk.example.com",
            Tls,
            "sip:+14155550100@trunk.example.com;transport=tls",
            "trunk.example.com",
        ),
        (
            "sip:+14155550100@trunk.example.com",
            Udp,
            "sip:+14155550100@trunk.example.com;transport=udp",
            "trunk.example.com",
        ),
        (
            "sip:a;b=c@trunk.example.com:5060;transport=tcp",
            Tcp,
            "sip:+14155550100@trunk.example.com:5060;transport=tcp",
            "trunk.example.com:5060",
        ),
        (
            " sip:[2001:db8::1]:5060 ",
            Udp,
            "sip:+14155550100@[2001:db8::1]:5060;transport=udp",
            "[2001:db8::1]:5060",
        ),
        (
            "[2001:db8::1]",
            Udp,
            "sip:+14155550100@[2001:db8::1];transport=udp",
            "[2001:db8::1]",
        ),
        (
            "sip:trunk.example.com;lr",
            Tcp,
            "sip:+14155550100@trunk.example.com;lr;transport=tcp",
            "trunk.example.com",
        ),
    ] {
        let uri = trunk_request_uri(termination, transport, n)
            .unwrap_or_else(|e| panic!("{termination}: {e}"));
        assert_eq!(uri.to_string(), request_uri, "{termination}");
        assert_eq!(uri.hostport(), to_host, "{termination}");
        // What goes on the wire reads back as the same URI.
        assert_eq!(parse(request_uri), uri);
    }
}

#[test]
fn trunk_request_uris_beyond_the_call_engine() {
    // Where the engine's string splicing went wrong: an upper-case scheme, headers, and a
    // dialled string with characters a user part may not hold.
    let uri = |t: &str, n: &str| trunk_request_uri(t, Transport::Udp, n).map(|u| u.to_string());
    assert_eq!(
        uri("SIP:trunk.example.com", "+1").unwrap(),
        "sip:+1@trunk.example.com;transport=udp"
    );
    assert_eq!(
        uri("sip:trunk.example.com?Subject=x", "+1").unwrap(),
        "sip:+1@trunk.example.com;transport=udp"
    );
    assert_eq!(
        uri("trunk.example.com", "*67#1 2").unwrap(),
        "sip:*67%231%202@trunk.example.com;transport=udp"
    );
    assert_eq!(
        user_of(&uri("trunk.example.com", "*67#1 2").unwrap()).as_deref(),
        Some("*67#1 2")
    );
    assert_eq!(
        uri("trunk.example.com", ""),
        Err(UriError::User(String::new()))
    );
    assert_eq!(uri("tel:+1", "+1"), Err(UriError::Port("+1".into())));
}

#[test]
fn dns_names() {
    let host = |s: &str| Uri::parse_trunk(s).unwrap().host.unwrap();
    for good in [
        "example.com",
        "example.com.",
        "a-b.example",
        "192.0.2.1",
        "[::1]",
    ] {
        assert!(host(good).is_dns_name(), "{good}");
    }
    for bad in ["-x.example.com", "x-.example.com", "my_pbx.lan", "a..b"] {
        assert!(!host(bad).is_dns_name(), "{bad}");
    }
    let long = format!("{}.com", "a".repeat(64));
    assert!(!host(&long).is_dns_name());
}

#[test]
fn hosts_for_uris() {
    assert_eq!(host_for_uri("2001:db8::1"), "[2001:db8::1]");
    assert_eq!(host_for_uri("[2001:db8::1]"), "[2001:db8::1]");
    assert_eq!(host_for_uri("192.0.2.1"), "192.0.2.1");
    assert_eq!(host_for_uri("sip.example.com"), "sip.example.com");
}

#[test]
fn via_sent_by_allows_whitespace_around_the_colon() {
    assert_eq!(
        parse_hostport("h : 5060", true),
        Ok((Host::Name("h".into()), Some(5060)))
    );
    assert_eq!(
        parse_hostport("[::1] :5060", true),
        Ok((Host::V6(Ipv6Addr::LOCALHOST), Some(5060)))
    );
    assert!(parse_hostport("h : 5060", false).is_err());
    assert_eq!(parse_ip("[::1]"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    assert_eq!(parse_ip("::1"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    assert_eq!(parse_ip("h"), None);
}

#[test]
fn random_input_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(3261);
    const ALPHABET: &[u8] = b"sip:tel+@[]:;?&=%0aF.-_ \t<>\"\xc3\xa9";
    for _ in 0..20_000 {
        let len = rng.random_range(0..40);
        let bytes: Vec<u8> = (0..len)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
            .collect();
        let s = String::from_utf8_lossy(&bytes);
        if let Ok(u) = Uri::parse(&s) {
            // Whatever parses writes back to something that parses the same.
            assert_eq!(Uri::parse(&u.to_string()), Ok(u.clone()), "{s:?}");
            let _ = (u.user_unescaped(), u.hostport());
        }
        let _ = (check(&s), Uri::parse_trunk(&s), user_of(&s));
        let _ = trunk_request_uri(&s, Transport::Tcp, &s);
    }
}
