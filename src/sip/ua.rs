//! The user-agent core: what this server says about itself, and every answer it can give
//! from the request alone, without a handler, a socket or a clock.
//!
//! The endpoint asks this module which response a request gets before (RFC 3261 §8.2
//! prechecks), instead of (OPTIONS, nobody to serve it) or in place of (a parse or framing
//! error, a shutdown) handing it to the call engine, and how to dress the requests it
//! originates (Via, Contact, Max-Forwards, User-Agent). Everything here is a plain function,
//! so every status, header and the order of the checks is unit-tested without a network.

use crate::sip::framing::FrameError;
use crate::sip::message::{self, Method, ParseError, Request, Response};
use crate::sip::transaction::key::MAGIC_COOKIE;
use crate::sip::transport::Kind;
use crate::sip::uri::host_for_uri;

/// Methods this server handles (in dialogs or out), advertised in `Allow`.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO";
/// Bodies this server understands, advertised in `Accept`.
pub const ACCEPT: &str = "application/sdp";
/// Option tags this server supports; any other in `Require` gets 420.
const SUPPORTED: &[&str] = &[];
/// Sent in `Server` and `User-Agent`.
pub const PRODUCT: &str = concat!("dialtone/", env!("CARGO_PKG_VERSION"));

/// A fresh tag for To headers (RFC 3261 §19.3: at least 32 bits of randomness).
pub fn new_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A fresh Via branch: the RFC 3261 magic cookie and 96 random bits (§8.1.1.7).
pub fn new_branch() -> String {
    format!(
        "{MAGIC_COOKIE}{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// Our Via for a request sent over `kind` from `host:port`. `rport` asks the peer to
/// answer to the port the request came from (RFC 3581), for NATs in front of us.
pub fn via(kind: Kind, host: &str, port: u16, branch: &str) -> String {
    format!(
        "SIP/2.0/{} {}:{port};branch={branch};rport",
        kind.as_str(),
        host_for_uri(host)
    )
}

/// Our Contact for dialogs over `kind`. Over TLS it is `sip:…;transport=tls`, not `sips:`:
/// peers dial us and trunks are dialled with `sip:` URIs (a `sips:` Contact is only
/// required when the Request-URI was `sips:`, RFC 3261 §8.1.1.8), and baresip 1.0 (libre)
/// ends a dialog whose remote target is `sips:` ("Function not implemented") right after
/// the 200.
pub fn contact(kind: Kind, host: &str, port: u16) -> String {
    let host = host_for_uri(host);
    match kind {
        Kind::Udp => format!("<sip:{host}:{port}>"),
        Kind::Tcp => format!("<sip:{host}:{port};transport=tcp>"),
        Kind::Tls => format!("<sip:{host}:{port};transport=tls>"),
    }
}

/// Our Contact in a secure dialog (RFC 3261 §8.1.1.8).
pub fn sips_contact(host: &str, port: u16) -> String {
    format!("<sips:{}:{port}>", host_for_uri(host))
}

/// Puts our Via on top of a request we originate (replacing any the caller left), and
/// Max-Forwards and User-Agent unless the caller set them.
pub fn stamp_request(req: &mut Request, via: String) {
    req.headers.remove("Via");
    let mut headers = message::Headers::default();
    headers.push("Via", via);
    for (name, value) in req.headers.iter() {
        headers.push(name, value);
    }
    if headers.get("Max-Forwards").is_none() {
        headers.push("Max-Forwards", "70");
    }
    if headers.get("User-Agent").is_none() {
        headers.push("User-Agent", PRODUCT);
    }
    req.headers = headers;
}

/// The CANCEL of an INVITE (RFC 3261 §9.1): same Request-URI, Call-ID, From, To, Route and
/// CSeq number; its Via (the INVITE's, same branch) is added with [`stamp_request`].
pub fn cancel_for(invite: &Request) -> Request {
    let mut headers = message::Headers::default();
    copy_headers(&mut headers, invite, &["From", "To", "Call-ID", "Route"]);
    derived(invite, Method::Cancel, headers)
}

/// The ACK of a non-2xx final response (RFC 3261 §17.1.1.3), which its client transaction
/// sends: the INVITE's Request-URI, top Via and Route set, the response's To (with its tag).
pub fn ack_for_failure(invite: &Request, resp: &Response) -> Request {
    let mut headers = message::Headers::default();
    if let Some(via) = invite.headers.get("Via") {
        headers.push("Via", via);
    }
    headers.push("Max-Forwards", "70");
    copy_headers(&mut headers, invite, &["From", "Call-ID", "Route"]);
    if let Some(to) = resp.headers.get("To") {
        headers.push("To", to);
    }
    derived(invite, Method::Ack, headers)
}

/// Appends every field of `from` named in `names`, in `from`'s order.
fn copy_headers(headers: &mut message::Headers, from: &Request, names: &[&str]) {
    for (name, value) in from.headers.iter() {
        if names.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            headers.push(name, value);
        }
    }
}

/// A bodiless `method` request for the INVITE's Request-URI, with `headers` and the
/// INVITE's CSeq number.
fn derived(invite: &Request, method: Method, mut headers: message::Headers) -> Request {
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
    headers.push("CSeq", format!("{seq} {}", method.as_str()));
    Request {
        method,
        uri: invite.uri.clone(),
        headers,
        body: bytes::Bytes::new(),
    }
}

/// A request can be answered only if a response can be routed: it needs a top Via, and an
/// ACK is never answered. What else a response copies (From, To, Call-ID, CSeq) is copied
/// when present.
fn answerable(req: &Request) -> bool {
    req.method != Method::Ack && req.top_via().is_some()
}

/// A response with the RFC's reason phrase and a fresh To tag.
fn reject(req: &Request, status: u16) -> Response {
    Response::for_request(
        req,
        status,
        message::reason_phrase(status),
        Some(&new_tag()),
    )
}

/// The stateless answer to a message that failed to parse or validate, when it was a
/// request complete enough to answer: 400 says what was wrong (RFC 3261 §21.4.1 lets the
/// reason phrase carry it), 416 and 505 list what we do speak in `Allow`.
pub fn parse_error_answer(err: &ParseError) -> Option<Response> {
    let (status, req) = (err.reply?, err.request.as_deref()?);
    if !answerable(req) {
        return None;
    }
    let mut resp = reject(req, status);
    if status == 400 {
        resp.reason = format!("Bad Request ({})", err.cause);
    }
    if status == 416 || status == 505 {
        resp.headers.push("Allow", ALLOW);
    }
    Some(resp)
}

/// The stateless answer to a request whose stream could not be framed past its header
/// block: 513 when it was too large, 400 naming the Content-Length fault otherwise.
pub fn framing_error_answer(cause: FrameError, req: &Request) -> Option<Response> {
    if !answerable(req) {
        return None;
    }
    let (status, reason) = match cause {
        FrameError::TooLarge => (513, "Message Too Large"),
        FrameError::BadContentLength => (400, "Bad Request (bad_content_length)"),
        FrameError::ConflictingContentLength => (400, "Bad Request (conflicting_content_length)"),
    };
    Some(Response::for_request(req, status, reason, Some(&new_tag())))
}

/// The answer to a new request outside a dialog while draining for shutdown.
pub fn shutting_down(req: &Request) -> Response {
    let mut resp = Response::for_request(
        req,
        503,
        "Service Unavailable (shutting down)",
        Some(&new_tag()),
    );
    resp.headers.push("Retry-After", "30");
    resp
}

/// The answer to a CANCEL (RFC 3261 §9.2): 200 when it matched an INVITE transaction (which
/// then answers the INVITE with 487 itself), 481 when there is nothing to cancel.
pub fn cancel_answer(cancel: &Request, matched: bool) -> Response {
    reject(cancel, if matched { 200 } else { 481 })
}

/// RFC 3261 §8.2's checks before a request reaches its handler, in the RFC's order:
/// method, header inspection (dialog, Require), content (Content-Type, Accept).
/// `Some` is the rejection to send.
pub fn precheck(req: &Request) -> Option<Response> {
    let in_dialog = req.to_tag().is_some();
    match &req.method {
        Method::Invite | Method::Options => {}
        // Dialog methods outside a dialog: the transaction does not exist.
        Method::Bye | Method::Update | Method::Info | Method::Prack if !in_dialog => {
            return Some(reject(req, 481))
        }
        Method::Bye | Method::Update | Method::Info | Method::Prack => {}
        Method::Register
        | Method::Subscribe
        | Method::Notify
        | Method::Refer
        | Method::Message
        | Method::Publish => {
            let mut resp = reject(req, 405);
            resp.headers.push("Allow", ALLOW);
            return Some(resp);
        }
        Method::Other(_) => {
            let mut resp = reject(req, 501);
            resp.headers.push("Allow", ALLOW);
            return Some(resp);
        }
        // Handled before a transaction is made.
        Method::Ack | Method::Cancel => return Some(reject(req, 500)),
    }
    let unsupported: Vec<&str> = req
        .headers
        .get_all("Require")
        .into_iter()
        .map(str::trim)
        .filter(|tag| !tag.is_empty() && !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(tag)))
        .collect();
    if !unsupported.is_empty() && req.method != Method::Bye {
        let mut resp = reject(req, 420);
        resp.headers.push("Unsupported", unsupported.join(", "));
        return Some(resp);
    }
    if !req.body.is_empty()
        && matches!(
            req.method,
            Method::Invite | Method::Update | Method::Options
        )
    {
        let content_type = req.headers.get("Content-Type").unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case(ACCEPT) {
            let mut resp = reject(req, 415);
            resp.headers.push("Accept", ACCEPT);
            return Some(resp);
        }
    }
    if req.method == Method::Invite && !accepts_sdp(req) {
        let mut resp = reject(req, 406);
        resp.headers.push(
            "Warning",
            "399 dialtone \"only application/sdp is offered\"",
        );
        return Some(resp);
    }
    None
}

/// The answer to a request that passed [`precheck`] when no handler serves it: OPTIONS
/// gets 200 (trunks use it as a ping), an INVITE finds nobody (404), in-dialog requests
/// find no dialog (481).
pub fn unserved(req: &Request) -> Response {
    match req.method {
        _ if req.to_tag().is_some() => no_dialog(req),
        Method::Options => options_response(req),
        _ => reject(req, 404),
    }
}

/// 481 to an in-dialog request whose dialog does not exist (any more). The To tag is the
/// request's own.
pub fn no_dialog(req: &Request) -> Response {
    Response::for_request(req, 481, message::reason_phrase(481), None)
}

/// 200 to OPTIONS, with what this server can do.
pub fn options_response(req: &Request) -> Response {
    let mut resp = Response::for_request(req, 200, "OK", Some(&new_tag()));
    resp.headers.push("Allow", ALLOW);
    resp.headers.push("Accept", ACCEPT);
    resp.headers.push("Accept-Encoding", "identity");
    resp.headers.push("Accept-Language", "en");
    resp
}

/// Whether the request's `Accept` (absent means `application/sdp`, RFC 3261 §20.1) allows SDP.
fn accepts_sdp(req: &Request) -> bool {
    let accept = req.headers.get_all("Accept");
    if accept.is_empty() {
        return true;
    }
    accept.iter().any(|range| {
        let mime = range.split(';').next().unwrap_or("").trim();
        mime.eq_ignore_ascii_case(ACCEPT)
            || mime == "*/*"
            || mime.eq_ignore_ascii_case("application/*")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{Limits, SipMessage};

    const LIMITS: Limits = Limits {
        max_message_bytes: 65_535,
        max_headers: 100,
    };

    /// A request from its header lines (after the request line), with a body if given.
    fn request(method: &str, extra: &[&str], body: &str) -> Request {
        let mut text = format!(
            "{method} sip:b@192.0.2.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKtest\r\n\
             From: <sip:a@192.0.2.9>;tag=fromtag\r\n\
             To: <sip:b@192.0.2.1>\r\n\
             Call-ID: ua-test@192.0.2.9\r\n\
             CSeq: 1 {method}\r\n\
             Max-Forwards: 70\r\n"
        );
        for line in extra {
            text.push_str(line);
            text.push_str("\r\n");
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        match message::parse(text.as_bytes(), &LIMITS) {
            Ok(SipMessage::Request(req)) => req,
            other => panic!("test request did not parse: {other:?}"),
        }
    }

    fn in_dialog(method: &str, extra: &[&str]) -> Request {
        let mut req = request(method, extra, "");
        req.headers.set("To", "<sip:b@192.0.2.1>;tag=totag");
        req
    }

    /// A list header's elements, as one string.
    fn list(resp: &Response, name: &str) -> String {
        resp.headers.get_all(name).join(", ")
    }

    fn status(resp: Option<Response>) -> Option<u16> {
        resp.map(|r| r.status)
    }

    #[test]
    fn dialog_methods_outside_a_dialog_get_481_inside_pass() {
        for method in ["BYE", "UPDATE", "INFO", "PRACK"] {
            assert_eq!(
                status(precheck(&request(method, &[], ""))),
                Some(481),
                "{method}"
            );
            assert_eq!(status(precheck(&in_dialog(method, &[]))), None, "{method}");
        }
    }

    #[test]
    fn methods_we_know_but_do_not_serve_get_405_with_allow() {
        for method in [
            "REGISTER",
            "SUBSCRIBE",
            "NOTIFY",
            "REFER",
            "MESSAGE",
            "PUBLISH",
        ] {
            let resp = precheck(&request(method, &[], "")).expect(method);
            assert_eq!(resp.status, 405, "{method}");
            assert_eq!(list(&resp, "Allow"), ALLOW);
            assert!(resp.headers.get("To").unwrap().contains(";tag="));
        }
    }

    #[test]
    fn unknown_methods_get_501_with_allow() {
        let resp = precheck(&request("FROB", &[], "")).unwrap();
        assert_eq!(resp.status, 501);
        assert_eq!(list(&resp, "Allow"), ALLOW);
    }

    #[test]
    fn ack_and_cancel_never_reach_the_prechecks() {
        assert_eq!(status(precheck(&request("ACK", &[], ""))), Some(500));
        assert_eq!(status(precheck(&request("CANCEL", &[], ""))), Some(500));
    }

    #[test]
    fn unsupported_require_gets_420_listing_the_tags_except_on_bye() {
        let resp = precheck(&request("INVITE", &["Require: 100rel, timer"], "")).unwrap();
        assert_eq!(resp.status, 420);
        assert_eq!(list(&resp, "Unsupported"), "100rel, timer");
        // A BYE ends its dialog whatever it requires.
        assert_eq!(
            status(precheck(&in_dialog("BYE", &["Require: timer"]))),
            None
        );
    }

    #[test]
    fn a_body_that_is_not_sdp_gets_415_with_accept() {
        let resp = precheck(&request("INVITE", &["Content-Type: text/plain"], "hi")).unwrap();
        assert_eq!(resp.status, 415);
        assert_eq!(resp.headers.get("Accept"), Some(ACCEPT));
        let sdp = request("INVITE", &["Content-Type: application/SDP; x=1"], "v=0\r\n");
        assert_eq!(status(precheck(&sdp)), None);
        // INFO bodies (DTMF relay and the like) are the dialog's business.
        let info = in_dialog("INFO", &["Content-Type: application/dtmf-relay"]);
        assert_eq!(status(precheck(&info)), None);
    }

    #[test]
    fn invite_refusing_sdp_answers_gets_406_with_a_warning() {
        let resp = precheck(&request("INVITE", &["Accept: text/html"], "")).unwrap();
        assert_eq!(resp.status, 406);
        assert!(resp
            .headers
            .get("Warning")
            .unwrap()
            .starts_with("399 dialtone"));
        for accept in ["application/sdp", "*/*", "application/*;q=0.5"] {
            let accept = format!("Accept: text/html, {accept}");
            let req = request("INVITE", &[accept.as_str()], "");
            assert_eq!(status(precheck(&req)), None, "{accept}");
        }
    }

    #[test]
    fn require_is_checked_before_content() {
        let req = request(
            "INVITE",
            &["Require: 100rel", "Content-Type: text/plain"],
            "x",
        );
        assert_eq!(status(precheck(&req)), Some(420));
    }

    #[test]
    fn unserved_requests_get_200_404_or_481() {
        let ok = unserved(&request("OPTIONS", &[], ""));
        assert_eq!(ok.status, 200);
        assert_eq!(list(&ok, "Allow"), ALLOW);
        assert_eq!(ok.headers.get("Accept"), Some(ACCEPT));
        assert_eq!(unserved(&request("INVITE", &[], "")).status, 404);
        let gone = unserved(&in_dialog("OPTIONS", &[]));
        assert_eq!(gone.status, 481);
        assert_eq!(gone.headers.get("To"), Some("<sip:b@192.0.2.1>;tag=totag"));
    }

    #[test]
    fn responses_echo_the_transaction_headers() {
        let req = request("OPTIONS", &[], "");
        let resp = options_response(&req);
        for name in ["Via", "From", "Call-ID", "CSeq"] {
            assert_eq!(resp.headers.get(name), req.headers.get(name), "{name}");
        }
        assert!(resp
            .headers
            .get("To")
            .unwrap()
            .starts_with("<sip:b@192.0.2.1>;tag="));
    }

    #[test]
    fn cancel_gets_200_when_it_matched_else_481() {
        let cancel = request("CANCEL", &[], "");
        assert_eq!(cancel_answer(&cancel, true).status, 200);
        assert_eq!(cancel_answer(&cancel, false).status, 481);
    }

    #[test]
    fn draining_refuses_with_503_and_retry_after() {
        let resp = shutting_down(&request("INVITE", &[], ""));
        assert_eq!(resp.status, 503);
        assert_eq!(resp.headers.get("Retry-After"), Some("30"));
    }

    fn parse_error(req: Request, status: u16, cause: &'static str) -> ParseError {
        ParseError {
            cause,
            reason: "test".into(),
            reply: Some(status),
            request: Some(Box::new(req)),
        }
    }

    #[test]
    fn parse_errors_are_answered_with_the_cause_and_allow_where_it_helps() {
        let bad = parse_error_answer(&parse_error(request("INVITE", &[], ""), 400, "bad_cseq"));
        assert_eq!(bad.unwrap().reason, "Bad Request (bad_cseq)");
        for status in [416, 505] {
            let resp = parse_error_answer(&parse_error(request("INVITE", &[], ""), status, "x"));
            let resp = resp.unwrap();
            assert_eq!(resp.status, status);
            assert_eq!(list(&resp, "Allow"), ALLOW);
        }
        let other = parse_error_answer(&parse_error(request("OPTIONS", &[], ""), 483, "x"));
        assert_eq!(other.unwrap().headers.get("Allow"), None);
    }

    #[test]
    fn parse_errors_without_a_routable_request_or_on_ack_go_unanswered() {
        let ack = parse_error(request("ACK", &[], ""), 400, "x");
        assert!(parse_error_answer(&ack).is_none());
        let mut no_via = request("OPTIONS", &[], "");
        no_via.headers.remove("Via");
        assert!(parse_error_answer(&parse_error(no_via, 400, "x")).is_none());
        let mut no_status = parse_error(request("OPTIONS", &[], ""), 400, "x");
        no_status.reply = None;
        assert!(parse_error_answer(&no_status).is_none());
    }

    #[test]
    fn framing_errors_map_to_513_or_400() {
        let req = request("INVITE", &[], "");
        let answer = |cause| framing_error_answer(cause, &req).map(|r| (r.status, r.reason));
        assert_eq!(
            answer(FrameError::TooLarge),
            Some((513, "Message Too Large".into()))
        );
        assert_eq!(
            answer(FrameError::BadContentLength),
            Some((400, "Bad Request (bad_content_length)".into()))
        );
        assert_eq!(
            answer(FrameError::ConflictingContentLength),
            Some((400, "Bad Request (conflicting_content_length)".into()))
        );
        let ack = request("ACK", &[], "");
        assert!(framing_error_answer(FrameError::TooLarge, &ack).is_none());
    }

    #[test]
    fn via_and_contact_bracket_ipv6_and_name_the_transport() {
        assert_eq!(
            via(Kind::Tcp, "2001:db8::1", 5060, "z9hG4bKx"),
            "SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKx;rport"
        );
        assert_eq!(
            contact(Kind::Udp, "192.0.2.1", 5060),
            "<sip:192.0.2.1:5060>"
        );
        assert_eq!(
            contact(Kind::Tls, "[2001:db8::1]", 5061),
            "<sip:[2001:db8::1]:5061;transport=tls>"
        );
        assert_eq!(
            contact(Kind::Tcp, "sip.example.com", 5060),
            "<sip:sip.example.com:5060;transport=tcp>"
        );
        assert_eq!(sips_contact("192.0.2.1", 5061), "<sips:192.0.2.1:5061>");
    }

    #[test]
    fn branches_and_tags_are_fresh_and_branches_carry_the_cookie() {
        let (a, b) = (new_branch(), new_branch());
        assert!(a.starts_with("z9hG4bK") && a.len() == 7 + 24, "{a}");
        assert_ne!(a, b);
        assert_ne!(new_tag(), new_tag());
    }

    #[test]
    fn stamped_requests_get_our_via_on_top_and_defaults_only_where_missing() {
        let mut req = request("BYE", &["User-Agent: caller/1"], "");
        stamp_request(
            &mut req,
            "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKours".into(),
        );
        assert_eq!(
            req.headers.get_all("Via"),
            vec!["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKours"]
        );
        assert_eq!(req.headers.iter().next().map(|(n, _)| n), Some("Via"));
        assert_eq!(req.headers.get("Max-Forwards"), Some("70"));
        assert_eq!(req.headers.get("User-Agent"), Some("caller/1"));
        let mut bare = request("BYE", &[], "");
        bare.headers.remove("Max-Forwards");
        stamp_request(&mut bare, "v".into());
        assert_eq!(bare.headers.get("Max-Forwards"), Some("70"));
        assert_eq!(bare.headers.get("User-Agent"), Some(PRODUCT));
    }

    #[test]
    fn cancel_copies_what_rfc_3261_9_1_asks_for() {
        let mut invite = request("INVITE", &["Route: <sip:proxy.example.com;lr>"], "");
        invite.headers.set("CSeq", "7 INVITE");
        let cancel = cancel_for(&invite);
        assert_eq!(cancel.method, Method::Cancel);
        assert_eq!(cancel.uri, invite.uri);
        for name in ["From", "To", "Call-ID", "Route"] {
            assert_eq!(cancel.headers.get(name), invite.headers.get(name), "{name}");
        }
        assert_eq!(cancel.headers.get("CSeq"), Some("7 CANCEL"));
        assert_eq!(cancel.headers.get("Via"), None, "added when sent");
        assert!(cancel.body.is_empty());
    }

    #[test]
    fn ack_of_a_failure_copies_what_rfc_3261_17_1_1_3_asks_for() {
        let mut invite = request("INVITE", &["Route: <sip:proxy.example.com;lr>"], "");
        invite.headers.set("CSeq", "7 INVITE");
        let busy = Response::for_request(&invite, 486, "Busy Here", Some("peer"));
        let ack = ack_for_failure(&invite, &busy);
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(ack.uri, invite.uri);
        for name in ["Via", "From", "Call-ID", "Route"] {
            assert_eq!(ack.headers.get(name), invite.headers.get(name), "{name}");
        }
        assert_eq!(ack.headers.get("To"), Some("<sip:b@192.0.2.1>;tag=peer"));
        assert_eq!(ack.headers.get("CSeq"), Some("7 ACK"));
        assert_eq!(ack.headers.get("Max-Forwards"), Some("70"));
    }
}
