//! Malformed and hostile input never takes the server down: each message gets the answer
//! its defect calls for (400 where answerable, other 4xx/5xx where RFC 4475 says so, nothing
//! where no answer is possible), a good OPTIONS right after still gets 200, and on TCP a
//! framing error closes the connection.
//!
//! Two tables: hand-made defects, and the 49 RFC 4475 torture messages listed in the shared
//! `MANIFEST.tsv`. Each runs over UDP and over TCP (a new connection per message). Every case
//! is run and every mismatch is reported together at the end.

mod harness;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use harness::server::Server;
use harness::sip::{branch, find, options_probe, Reply, SipMsg, TcpClient, Transport, UdpClient};
use harness::{tests_path, unique};

/// An RFC 4475 torture message (or the manifest), byte for byte.
fn rfc4475(file: &str) -> Vec<u8> {
    let path = tests_path("data/rfc4475").join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// What a message may get back.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A final response with one of these codes.
    Codes(&'static [u16]),
    /// One of these codes, or no answer at all.
    CodesOrNothing(&'static [u16]),
    /// No answer at all (on TCP the connection may also be closed).
    Nothing,
}

use Expect::*;

/// What came back.
#[derive(Debug)]
enum Observed {
    Final(SipMsg),
    Nothing,
    NotSip(Vec<u8>),
}

impl Observed {
    fn of(reply: Reply) -> Observed {
        match reply {
            Reply::Final(r) => Observed::Final(r),
            Reply::NotSip(d) => Observed::NotSip(d),
            Reply::Timeout | Reply::Closed => Observed::Nothing,
        }
    }

    fn describe(&self) -> String {
        match self {
            Observed::Final(r) => format!("{} {}", r.code(), r.reason()),
            Observed::Nothing => "no answer".into(),
            Observed::NotSip(d) => format!("non-SIP bytes {:?}", String::from_utf8_lossy(d)),
        }
    }
}

fn judge(expect: Expect, seen: &Observed) -> bool {
    match (expect, seen) {
        (Codes(c) | CodesOrNothing(c), Observed::Final(r)) => c.contains(&r.code()),
        (CodesOrNothing(_) | Nothing, Observed::Nothing) => true,
        _ => false,
    }
}

fn wait_for(expect: Expect) -> Duration {
    match expect {
        Codes(_) => Duration::from_secs(3),
        CodesOrNothing(_) | Nothing => Duration::from_millis(1000),
    }
}

/// Extra checks on the answer.
#[derive(Debug, Clone, Copy, Default)]
struct Checks {
    /// TCP: the server must close the connection after answering (framing error).
    tcp_closes: bool,
    /// The answer must not contain this text (a header smuggled in by the request).
    no_echo: Option<&'static str>,
    /// UDP: nothing else may follow the final answer (e.g. for a second message hidden in
    /// the same datagram).
    udp_nothing_after: bool,
    /// The answer must carry this header.
    needs_header: Option<&'static str>,
}

struct Case {
    name: String,
    /// The message, given the client's address (for Via).
    bytes: Box<dyn Fn(SocketAddr) -> Vec<u8>>,
    udp: Option<Expect>,
    tcp: Option<Expect>,
    checks: Checks,
}

/// Runs every case over one transport against `server`; returns the mismatches and a log.
fn run_cases(server: &mut Server, cases: &[Case], transport: Transport) -> (Vec<String>, String) {
    let mut failures = Vec::new();
    let mut log = String::new();
    for case in cases {
        let expect = match transport {
            Transport::Udp => case.udp,
            _ => case.tcp,
        };
        let Some(expect) = expect else { continue };
        let mut problems = Vec::new();
        let seen = match transport {
            Transport::Udp => udp_case(server, case, expect, &mut problems),
            _ => tcp_case(server, case, expect, &mut problems),
        };
        if !judge(expect, &seen) {
            problems.push(format!("expected {expect:?}, got {}", seen.describe()));
        }
        if let Observed::Final(r) = &seen {
            if let Some(text) = case.checks.no_echo {
                if r.text().contains(text) {
                    problems.push(format!("the answer echoes the smuggled {text:?}"));
                }
            }
            if let Some(bad) = bare_line_break(r.raw.as_bytes()) {
                problems.push(format!("the answer holds a bare CR or LF at byte {bad}"));
            }
            if let Some(h) = case.checks.needs_header {
                if r.header(h).is_none() {
                    problems.push(format!("the {} lacks a {h} header", r.code()));
                }
            }
        }
        // The server is alive and still serving.
        if let Some(status) = server.try_exit() {
            failures.push(format!("{}: the server died ({status})", case.name));
            return (failures, log);
        }
        match options_probe(transport, server.sip_addr()) {
            Some(r) if r.code() == 200 => {}
            Some(r) => problems.push(format!("the OPTIONS after it got {}", r.code())),
            None => problems.push("the OPTIONS after it got no answer".into()),
        }
        log.push_str(&format!(
            "{:?} {:<45} {}\n",
            transport,
            case.name,
            seen.describe()
        ));
        if !problems.is_empty() {
            failures.push(format!(
                "{:?} {}: {}",
                transport,
                case.name,
                problems.join("; ")
            ));
        }
    }
    (failures, log)
}

fn udp_case(server: &Server, case: &Case, expect: Expect, problems: &mut Vec<String>) -> Observed {
    let client = UdpClient::new(server.sip_addr());
    let bytes = (case.bytes)(client.local());
    if let Err(e) = client.sock.send_to(&bytes, server.sip_addr()) {
        problems.push(format!("could not send {} bytes: {e}", bytes.len()));
        return Observed::Nothing;
    }
    let seen = Observed::of(client.final_reply(wait_for(expect)).1);
    if case.checks.udp_nothing_after {
        if let Observed::Final(first) = &seen {
            // Retransmissions of the same answer are fine; anything else is not.
            while let Some(d) = client.recv(Duration::from_millis(700)) {
                match SipMsg::parse_response(&d) {
                    Some(r)
                        if r.code() == first.code() && r.cseq_method() == first.cseq_method() => {}
                    _ => problems.push(format!(
                        "something followed the answer: {:?}",
                        String::from_utf8_lossy(&d)
                    )),
                }
            }
        }
    }
    seen
}

fn tcp_case(server: &Server, case: &Case, expect: Expect, problems: &mut Vec<String>) -> Observed {
    let mut client = match TcpClient::connect(server.sip_addr()) {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!("TCP connect: {e}"));
            return Observed::Nothing;
        }
    };
    let bytes = (case.bytes)(client.local());
    // The server may close before it has read everything (a 1 MB message); not an error.
    let _ = client.send(&bytes);
    let seen = Observed::of(client.final_reply(wait_for(expect)).1);
    if case.checks.tcp_closes && !client.wait_closed(Duration::from_secs(3)) {
        problems.push("the connection stayed open after a framing error".into());
    }
    seen
}

/// Index of a CR not followed by LF, or an LF not preceded by CR, in the header block.
fn bare_line_break(raw: &[u8]) -> Option<usize> {
    let head = find(raw, b"\r\n\r\n").map(|i| i + 4).unwrap_or(raw.len());
    let raw = &raw[..head];
    (0..raw.len()).find(|&i| {
        (raw[i] == b'\r' && raw.get(i + 1) != Some(&b'\n'))
            || (raw[i] == b'\n' && (i == 0 || raw[i - 1] != b'\r'))
    })
}

// ---------------------------------------------------------------------------------------
// Hand-made defects
// ---------------------------------------------------------------------------------------

/// A good OPTIONS as header lines, for cases to damage.
fn options_lines(local: SocketAddr) -> Vec<String> {
    vec![
        "OPTIONS sip:probe@127.0.0.1 SIP/2.0".into(),
        format!("Via: SIP/2.0/UDP {local};branch={}", branch()),
        "Max-Forwards: 70".into(),
        format!("From: <sip:tester@{}>;tag={}", local.ip(), unique("t")),
        "To: <sip:probe@127.0.0.1>".into(),
        format!("Call-ID: {}", unique("malformed-")),
        "CSeq: 1 OPTIONS".into(),
    ]
}

/// Joins header lines, adds Content-Length (unless `cl` is `Some`, then that text) and body.
fn assemble(lines: &[String], cl: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut text = lines.join("\r\n");
    text.push_str("\r\n");
    match cl {
        Some(v) => text.push_str(&format!("Content-Length: {v}\r\n")),
        None => text.push_str(&format!("Content-Length: {}\r\n", body.len())),
    }
    text.push_str("\r\n");
    let mut out = text.into_bytes();
    out.extend_from_slice(body);
    out
}

fn without(lines: Vec<String>, prefix: &str) -> Vec<String> {
    lines
        .into_iter()
        .filter(|l| !l.starts_with(prefix))
        .collect()
}

fn replaced(lines: Vec<String>, prefix: &str, with: &str) -> Vec<String> {
    lines
        .into_iter()
        .map(|l| {
            if l.starts_with(prefix) {
                with.to_string()
            } else {
                l
            }
        })
        .collect()
}

/// Deterministic noise (xorshift), without any CR or LF so it cannot frame as SIP.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            match (x & 0xff) as u8 {
                b'\r' | b'\n' => 0xff,
                b => b,
            }
        })
        .collect()
}

fn case(
    name: &str,
    udp: Option<Expect>,
    tcp: Option<Expect>,
    checks: Checks,
    bytes: impl Fn(SocketAddr) -> Vec<u8> + 'static,
) -> Case {
    Case {
        name: name.into(),
        bytes: Box::new(bytes),
        udp,
        tcp,
        checks,
    }
}

fn handmade_cases() -> Vec<Case> {
    let closes = Checks {
        tcp_closes: true,
        ..Checks::default()
    };
    let none = Checks::default();
    let smuggle = Checks {
        no_echo: Some("evil.example.com"),
        ..Checks::default()
    };
    vec![
        case(
            "start line cut short",
            Some(Nothing),
            Some(Nothing),
            none,
            |_| b"OPTIONS sip:pro".to_vec(),
        ),
        case(
            "start line without SIP version",
            Some(CodesOrNothing(&[400])),
            Some(CodesOrNothing(&[400])),
            none,
            |l| {
                let lines = replaced(options_lines(l), "OPTIONS", "OPTIONS sip:probe@127.0.0.1");
                assemble(&lines, None, b"")
            },
        ),
        case(
            "garbage Request-URI",
            Some(Codes(&[400, 416])),
            Some(Codes(&[400, 416])),
            none,
            |l| {
                let lines = replaced(options_lines(l), "OPTIONS", "OPTIONS <%%%> SIP/2.0");
                assemble(&lines, None, b"")
            },
        ),
        case(
            "non-numeric CSeq",
            Some(Codes(&[400])),
            Some(Codes(&[400])),
            none,
            |l| {
                let lines = replaced(options_lines(l), "CSeq:", "CSeq: abc OPTIONS");
                assemble(&lines, None, b"")
            },
        ),
        case(
            "CSeq without method",
            Some(Codes(&[400])),
            Some(Codes(&[400])),
            none,
            |l| {
                let lines = replaced(options_lines(l), "CSeq:", "CSeq: 1");
                assemble(&lines, None, b"")
            },
        ),
        case(
            "missing Via",
            Some(CodesOrNothing(&[400])),
            Some(CodesOrNothing(&[400])),
            none,
            |l| assemble(&without(options_lines(l), "Via:"), None, b""),
        ),
        case(
            "missing Call-ID",
            Some(Codes(&[400])),
            Some(Codes(&[400])),
            none,
            |l| assemble(&without(options_lines(l), "Call-ID:"), None, b""),
        ),
        case(
            "missing From",
            Some(Codes(&[400])),
            Some(Codes(&[400])),
            none,
            |l| assemble(&without(options_lines(l), "From:"), None, b""),
        ),
        case(
            "missing To",
            Some(Codes(&[400])),
            Some(Codes(&[400])),
            none,
            |l| assemble(&without(options_lines(l), "To:"), None, b""),
        ),
        case(
            "header line without colon",
            Some(Codes(&[400])),
            Some(Codes(&[400])),
            none,
            |l| {
                let mut lines = options_lines(l);
                lines.push("This line has no colon".into());
                assemble(&lines, None, b"")
            },
        ),
        // UDP: the datagram is the whole message, so the body is short: 400.
        // TCP: the server must wait for the rest, so no answer yet.
        case(
            "Content-Length larger than the body",
            Some(Codes(&[400])),
            Some(Nothing),
            none,
            |l| {
                let mut lines = options_lines(l);
                lines.push("Content-Type: text/plain".into());
                assemble(&lines, Some("100"), b"0123456789")
            },
        ),
        // RFC 3261 §18.3: on UDP, octets beyond Content-Length are discarded.
        case(
            "Content-Length smaller than the body",
            Some(Codes(&[200, 400, 415])),
            Some(Codes(&[200, 400, 415])),
            none,
            |l| {
                let mut lines = options_lines(l);
                lines.push("Content-Type: text/plain".into());
                assemble(&lines, Some("5"), b"hello world")
            },
        ),
        case(
            "negative Content-Length",
            Some(Codes(&[400])),
            Some(Codes(&[400])),
            closes,
            |l| assemble(&options_lines(l), Some("-5"), b""),
        ),
        case(
            "two different Content-Length values",
            Some(Codes(&[400])),
            Some(Codes(&[400])),
            closes,
            |l| {
                let mut lines = options_lines(l);
                lines.push("Content-Length: 3".into());
                lines.push("Content-Type: text/plain".into());
                assemble(&lines, Some("0"), b"")
            },
        ),
        // Over UDP a datagram cannot hold 1 MB: 60 000 bytes, beyond this server's
        // 8192-byte message limit. Over TCP a full 1 MB body.
        case(
            "message over the size limit",
            Some(CodesOrNothing(&[400, 413, 513])),
            None,
            none,
            |l| {
                let mut lines = options_lines(l);
                lines.push(format!("X-Padding: {}", "a".repeat(60_000)));
                assemble(&lines, None, b"")
            },
        ),
        case(
            "1 MB message",
            None,
            Some(CodesOrNothing(&[400, 413, 513])),
            closes,
            |l| {
                let mut lines = options_lines(l);
                lines.push("Content-Type: text/plain".into());
                assemble(&lines, None, &vec![b'x'; 1 << 20])
            },
        ),
        case(
            "header block of 1 MB without end",
            None,
            Some(CodesOrNothing(&[400, 413, 513])),
            closes,
            |l| {
                let mut bytes = options_lines(l).join("\r\n").into_bytes();
                bytes.extend_from_slice(b"\r\nX-Padding: ");
                bytes.extend(std::iter::repeat_n(b'a', 1 << 20));
                bytes
            },
        ),
        case(
            "too many header fields",
            Some(CodesOrNothing(&[400, 413, 513])),
            Some(CodesOrNothing(&[400, 413, 513])),
            none,
            |l| {
                let mut lines = options_lines(l);
                lines.extend((0..300).map(|i| format!("X-Filler-{i}: {i}")));
                assemble(&lines, None, b"")
            },
        ),
        case("binary noise", Some(Nothing), Some(Nothing), none, |_| {
            noise(2048)
        }),
        case(
            "NUL byte in a header value",
            Some(Codes(&[200, 400])),
            Some(Codes(&[200, 400])),
            none,
            |l| {
                let mut lines = options_lines(l);
                lines.push("Subject: before\0after".into());
                assemble(&lines, None, b"")
            },
        ),
        // A bare LF inside Subject tries to smuggle a Via in; a bare CR inside the From
        // display name (echoed in every answer) tries the same. The answer, if any, must not
        // carry the smuggled header nor any bare CR/LF.
        case(
            "bare LF smuggling a Via through Subject",
            Some(CodesOrNothing(&[200, 400])),
            Some(CodesOrNothing(&[200, 400])),
            smuggle,
            |l| {
                let mut lines = options_lines(l);
                lines.push(
                    "Subject: hello\nVia: SIP/2.0/UDP evil.example.com:5060;branch=z9hG4bKevil"
                        .into(),
                );
                assemble(&lines, None, b"")
            },
        ),
        case(
            "bare CR smuggling a header through From",
            Some(CodesOrNothing(&[200, 400])),
            Some(CodesOrNothing(&[200, 400])),
            smuggle,
            |l| {
                let from = format!(
                    "From: \"Eve\rX-Injected: evil.example.com\" <sip:eve@{}>;tag={}",
                    l.ip(),
                    unique("t")
                );
                let lines = replaced(options_lines(l), "From:", &from);
                assemble(&lines, None, b"")
            },
        ),
    ]
}

fn handmade_server() -> Server {
    Server::builder()
        .env("DIALTONE__SIP__MAX_MESSAGE_BYTES", "8192")
        .start()
}

fn report(transport: Transport, failures: Vec<String>, log: String) {
    eprintln!("{log}");
    assert!(
        failures.is_empty(),
        "{} mismatch(es) over {transport:?}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The hand-made cases fall in three groups, each tested on its own server so that one
/// defect of the server shows up as one failing test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Start line, header syntax, framing and size.
    Syntax,
    /// Via, Call-ID, From, To, CSeq missing or broken.
    RequiredHeaders,
    /// A bare CR or LF that tries to smuggle a header line in.
    Injection,
}

fn group_of(case: &Case) -> Group {
    let name = case.name.as_str();
    if name.contains("smuggling") {
        Group::Injection
    } else if name.starts_with("missing ") || name.contains("CSeq") {
        Group::RequiredHeaders
    } else {
        Group::Syntax
    }
}

fn run_group(group: Group, transport: Transport) {
    let cases: Vec<Case> = handmade_cases()
        .into_iter()
        .filter(|c| group_of(c) == group)
        .collect();
    assert!(!cases.is_empty());
    let mut server = handmade_server();
    let (failures, log) = run_cases(&mut server, &cases, transport);
    report(transport, failures, log);
}

#[test]
fn syntax_and_framing_defects_over_udp() {
    run_group(Group::Syntax, Transport::Udp);
}

#[test]
fn syntax_and_framing_defects_over_tcp() {
    run_group(Group::Syntax, Transport::Tcp);
}

#[test]
fn requests_missing_required_headers_get_400_over_udp() {
    run_group(Group::RequiredHeaders, Transport::Udp);
}

#[test]
fn requests_missing_required_headers_get_400_over_tcp() {
    run_group(Group::RequiredHeaders, Transport::Tcp);
}

#[test]
fn smuggled_line_breaks_are_not_echoed_over_udp() {
    run_group(Group::Injection, Transport::Udp);
}

#[test]
fn smuggled_line_breaks_are_not_echoed_over_tcp() {
    run_group(Group::Injection, Transport::Tcp);
}

// ---------------------------------------------------------------------------------------
// RFC 4475
// ---------------------------------------------------------------------------------------

/// Expected answers per torture message, from the manifest's outcome and RFC 4475 §3, for a
/// user agent server that routes nobody yet (INVITE: 404), answers OPTIONS (200), and serves
/// neither REGISTER nor MESSAGE (405) nor unknown methods (501). Entries: file, UDP, TCP,
/// extra checks. TCP differs where the message's own framing does (clerr, baddn, inv2543).
fn rfc4475_expectations() -> Vec<(&'static str, Expect, Expect, Checks)> {
    let n = Checks::default();
    let closes = Checks {
        tcp_closes: true,
        ..Checks::default()
    };
    let only_one = Checks {
        udp_nothing_after: true,
        ..Checks::default()
    };
    let unsupported = Checks {
        needs_header: Some("unsupported"),
        ..Checks::default()
    };
    let allow = Checks {
        needs_header: Some("allow"),
        ..Checks::default()
    };
    let same = |e: Expect| (e, e);
    let rows: Vec<(&str, (Expect, Expect), Checks)> = vec![
        // 3.1.1 valid messages
        // Its To carries a tag: a request inside a dialog nobody has, so 481 (RFC 3261
        // §12.2.2) is as right as the 404 of an out-of-dialog INVITE.
        ("wsinv.dat", same(Codes(&[481, 404])), n),
        ("intmeth.dat", same(Codes(&[501])), allow),
        ("esc01.dat", same(Codes(&[404])), n),
        ("escnull.dat", same(Codes(&[405])), n),
        ("esc02.dat", same(Codes(&[501])), allow),
        ("lwsdisp.dat", same(Codes(&[200])), n),
        ("longreq.dat", same(Codes(&[404])), n),
        ("dblreq.dat", same(Codes(&[405])), only_one),
        ("semiuri.dat", same(Codes(&[200])), n),
        ("transports.dat", same(Codes(&[200])), n),
        ("mpart01.dat", same(Codes(&[405, 415])), n),
        ("unreason.dat", same(Nothing), n),
        ("noreason.dat", same(Nothing), n),
        // 3.1.2 invalid messages
        ("badinv01.dat", same(CodesOrNothing(&[400])), n),
        ("clerr.dat", (Codes(&[400]), Nothing), n),
        ("ncl.dat", same(Codes(&[400])), closes),
        ("scalar02.dat", same(Codes(&[400])), n),
        ("scalarlg.dat", same(Nothing), n),
        ("quotbal.dat", same(Codes(&[400, 404])), n),
        ("ltgtruri.dat", same(Codes(&[400, 404])), n),
        ("lwsruri.dat", same(Codes(&[400, 404, 481])), n),
        ("lwsstart.dat", same(Codes(&[400, 404])), n),
        ("trws.dat", same(Codes(&[400, 200])), n),
        ("escruri.dat", same(Codes(&[400, 404])), n),
        ("baddate.dat", same(Codes(&[404])), n),
        ("regbadct.dat", same(Codes(&[400, 405])), n),
        ("badaspec.dat", same(Codes(&[400, 200])), n),
        // No blank line at the end: on a stream the header block never completes.
        ("baddn.dat", (Codes(&[400, 200]), Nothing), n),
        ("badvers.dat", same(Codes(&[505])), n),
        ("mismatch01.dat", same(Codes(&[400])), n),
        ("mismatch02.dat", same(Codes(&[501, 400])), n),
        ("bigcode.dat", same(Nothing), n),
        // 3.2, 3.3 transaction layer and application layer semantics
        ("badbranch.dat", same(Codes(&[400, 200])), n),
        ("insuf.dat", same(Codes(&[400])), n),
        ("unkscm.dat", same(Codes(&[416])), n),
        ("novelsc.dat", same(Codes(&[416, 404])), n),
        ("unksm2.dat", same(Codes(&[405, 400])), n),
        ("bext01.dat", same(Codes(&[420])), unsupported),
        ("invut.dat", same(Codes(&[415, 404])), n),
        ("regaut01.dat", same(Codes(&[405])), n),
        ("multi01.dat", same(Codes(&[400])), n),
        ("mcl01.dat", same(Codes(&[400])), closes),
        ("bcast.dat", same(Nothing), n),
        ("zeromf.dat", same(Codes(&[200])), n),
        ("cparam01.dat", same(Codes(&[405])), n),
        ("cparam02.dat", same(Codes(&[405])), n),
        ("regescrt.dat", same(Codes(&[405])), n),
        ("sdp01.dat", same(Codes(&[406, 404, 400])), n),
        // 3.4 backward compatibility. No Content-Length: a stream cannot frame it.
        (
            "inv2543.dat",
            (Codes(&[404]), CodesOrNothing(&[404, 400])),
            n,
        ),
    ];
    rows.into_iter()
        .map(|(f, (u, t), c)| (f, u, t, c))
        .collect()
}

/// The files named in MANIFEST.tsv.
fn manifest_files() -> BTreeSet<String> {
    let text = String::from_utf8(rfc4475("MANIFEST.tsv")).expect("MANIFEST.tsv is UTF-8");
    text.lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .filter(|f| f.ends_with(".dat"))
        .map(str::to_string)
        .collect()
}

/// Points the topmost Via's sent-by at `to`, so that a UDP answer (RFC 3261 §18.2.2: to the
/// received address and the sent-by port) reaches the test socket. Only the host:port is
/// replaced; the rest of the message, odd spacing and folding included, is left as it is.
fn retarget_top_via(msg: &[u8], to: SocketAddr) -> Vec<u8> {
    if msg.starts_with(b"SIP/") {
        return msg.to_vec(); // a response: nothing will answer it
    }
    let head_end = find(msg, b"\r\n\r\n").unwrap_or(msg.len());
    let Some(first_eol) = find(msg, b"\r\n") else {
        return msg.to_vec();
    };
    let mut pos = first_eol + 2;
    while pos < head_end {
        let line_end = find(&msg[pos..], b"\r\n")
            .map(|i| pos + i)
            .unwrap_or(msg.len());
        let line = &msg[pos..line_end];
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&line[..colon])
                .trim()
                .to_ascii_lowercase();
            if name == "via" || name == "v" {
                let is_lws = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
                let mut i = pos + colon + 1;
                let mut slashes = 0;
                while i < head_end && slashes < 2 {
                    if msg[i] == b'/' {
                        slashes += 1;
                    }
                    i += 1;
                }
                while i < head_end && is_lws(msg[i]) {
                    i += 1;
                }
                while i < head_end && !is_lws(msg[i]) {
                    i += 1; // the transport token
                }
                while i < head_end && is_lws(msg[i]) {
                    i += 1;
                }
                let start = i;
                while i < head_end && !is_lws(msg[i]) && msg[i] != b';' && msg[i] != b',' {
                    i += 1;
                }
                let mut out = msg[..start].to_vec();
                out.extend_from_slice(to.to_string().as_bytes());
                out.extend_from_slice(&msg[i..]);
                return out;
            }
        }
        pos = line_end + 2;
    }
    msg.to_vec()
}

fn rfc4475_cases() -> Vec<Case> {
    let expectations = rfc4475_expectations();
    let listed: BTreeSet<String> = expectations.iter().map(|e| e.0.to_string()).collect();
    let manifest = manifest_files();
    assert_eq!(
        manifest.len(),
        49,
        "MANIFEST.tsv should list the 49 messages"
    );
    assert_eq!(
        listed, manifest,
        "the expectation table and MANIFEST.tsv name different files"
    );
    expectations
        .into_iter()
        .map(|(file, udp, tcp, checks)| {
            let bytes = rfc4475(file);
            Case {
                name: file.to_string(),
                bytes: Box::new(move |local| retarget_top_via(&bytes, local)),
                udp: Some(udp),
                tcp: Some(tcp),
                checks,
            }
        })
        .collect()
}

#[test]
fn rfc4475_torture_messages_over_udp() {
    let mut server = Server::start();
    let (failures, log) = run_cases(&mut server, &rfc4475_cases(), Transport::Udp);
    report(Transport::Udp, failures, log);
}

/// On TCP the bytes go unchanged: answers travel back on the connection.
#[test]
fn rfc4475_torture_messages_over_tcp() {
    let mut server = Server::start();
    let mut cases = rfc4475_cases();
    for c in &mut cases {
        let bytes = rfc4475(&c.name);
        c.bytes = Box::new(move |_| bytes.clone());
    }
    let (failures, log) = run_cases(&mut server, &cases, Transport::Tcp);
    report(Transport::Tcp, failures, log);
}

#[test]
fn via_retargeting_keeps_the_rest_of_the_message() {
    let to: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let wsinv = rfc4475("wsinv.dat");
    let out = retarget_top_via(&wsinv, to);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("/UDP\r\n    127.0.0.1:40000;branch=390skdjuw"),
        "{text}"
    );
    assert_eq!(
        out.len(),
        wsinv.len() - "192.0.2.2".len() + to.to_string().len()
    );
    let badinv = rfc4475("badinv01.dat");
    let text = String::from_utf8_lossy(&retarget_top_via(&badinv, to)).into_owned();
    assert!(
        text.contains("Via: SIP/2.0/UDP 127.0.0.1:40000;;,;,,"),
        "{text}"
    );
    let longreq = rfc4475("longreq.dat");
    let text = String::from_utf8_lossy(&retarget_top_via(&longreq, to)).into_owned();
    assert!(
        text.contains("Via: SIP/2.0/TCP 127.0.0.1:40000\r\n"),
        "{text}"
    );
}
