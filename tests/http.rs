//! The HTTP side: health and metrics are open, everything else needs a bearer key, and
//! errors are JSON.

mod harness;

use harness::http::{http_request, HttpResponse};
use harness::metrics::Metrics;
use harness::server::{Server, API_KEY};
use harness::sip::{options_probe, Transport};

#[test]
fn healthz_answers_200_without_auth() {
    let server = Server::start();
    let r = server.get("/healthz");
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn metrics_are_prometheus_text_and_count_sip_messages() {
    let server = Server::start();
    assert_eq!(
        options_probe(Transport::Udp, server.sip_addr()).map(|r| r.code()),
        Some(200)
    );
    let r = server.get("/metrics");
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
    assert!(
        r.body.contains("dialtone_sip_messages_in_total"),
        "metrics:\n{}",
        r.body
    );
    let m = Metrics::parse(&r.body);
    assert!(
        m.sum(
            "dialtone_sip_messages_in_total",
            &[("kind", "OPTIONS"), ("transport", "UDP")]
        ) >= 1.0,
        "the OPTIONS is counted with its labels:\n{}",
        r.body
    );
    assert!(
        m.sum(
            "dialtone_sip_messages_out_total",
            &[("kind", "200"), ("transport", "UDP")]
        ) >= 1.0,
        "the 200 is counted:\n{}",
        r.body
    );
}

fn assert_unauthorized(r: &HttpResponse, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.body);
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(
        www.to_ascii_lowercase().starts_with("bearer"),
        "{what}: WWW-Authenticate: {www:?}"
    );
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.contains("application/json"),
        "{what}: content-type {ct:?}"
    );
    let body = r.json();
    assert!(body.is_object(), "{what}: JSON object body: {body}");
    assert!(
        !r.body.contains(API_KEY),
        "{what}: the body must not reveal a key"
    );
}

#[test]
fn protected_path_without_key_is_401_json_with_www_authenticate() {
    let server = Server::start();
    let r = server.get("/v2/list-calls");
    assert_unauthorized(&r, "no key");
    let r = server.get("/list-agents");
    assert_unauthorized(&r, "no key, another path");
}

#[test]
fn wrong_key_is_401() {
    let server = Server::start();
    let r = server.get_with_key("/v2/list-calls", "not-the-right-key");
    assert_unauthorized(&r, "wrong key");
    // A prefix of the right key is still wrong.
    let r = server.get_with_key("/v2/list-calls", &API_KEY[..API_KEY.len() - 1]);
    assert_unauthorized(&r, "key prefix");
    // Not a bearer scheme at all.
    let r = http_request(
        server.http_addr(),
        "GET",
        "/v2/list-calls",
        &[("Authorization", &format!("Basic {API_KEY}"))],
        None,
    )
    .unwrap();
    assert_unauthorized(&r, "basic scheme");
}

#[test]
fn right_key_on_unknown_path_is_404_json() {
    let server = Server::start();
    let r = server.get_with_key("/no/such/path", API_KEY);
    assert_eq!(r.status, 404, "{}", r.body);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.contains("application/json"), "content-type {ct:?}");
    assert!(r.json().is_object());
}
