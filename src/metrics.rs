//! Metric names and the few helpers every layer uses, so names and labels stay consistent.
//! Rendered in Prometheus text by the HTTP server's `/metrics`.

use metrics::{counter, gauge};

pub use metrics_exporter_prometheus::PrometheusHandle;

/// Installs the process-wide Prometheus recorder. Call once at start; later calls (tests
/// starting several servers in one process) return a handle to a fresh, unattached recorder.
pub fn install() -> PrometheusHandle {
    let builder = metrics_exporter_prometheus::PrometheusBuilder::new();
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::debug!("metrics recorder already installed");
    }
    handle
}

/// A SIP message received and parsed. `kind` is the method for requests, the status code
/// for responses.
pub fn message_in(transport: &'static str, kind: &str) {
    counter!("dialtone_sip_messages_in_total", "transport" => transport, "kind" => kind.to_owned())
        .increment(1);
}

/// A SIP message sent (first transmission; retransmissions are counted apart).
pub fn message_out(transport: &'static str, kind: &str) {
    counter!("dialtone_sip_messages_out_total", "transport" => transport, "kind" => kind.to_owned()).increment(1);
}

/// A retransmission: `direction` is `sent` (our timers fired) or `absorbed` (a peer's
/// retransmission answered from transaction state).
pub fn retransmission(direction: &'static str, transport: &'static str) {
    counter!("dialtone_sip_retransmissions_total", "direction" => direction, "transport" => transport).increment(1);
}

/// Input dropped without being processed, by cause (`not_allowed`, `parse_error`, ...).
pub fn drop(cause: &'static str, transport: &'static str) {
    counter!("dialtone_sip_dropped_total", "cause" => cause, "transport" => transport).increment(1);
}

/// Open stream connections, per transport.
pub fn connections_open(transport: &'static str, delta: f64) {
    gauge!("dialtone_sip_connections_open", "transport" => transport).increment(delta);
}

/// Live transactions, per kind.
pub fn transactions_live(kind: &'static str, delta: f64) {
    gauge!("dialtone_sip_transactions", "kind" => kind).increment(delta);
}

/// An HTTP request answered, by status class (`2xx`, `4xx`, ...): enough to alert on error
/// rates without one series per path.
pub fn http_request(status: u16) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    counter!("dialtone_http_requests_total", "class" => class).increment(1);
}

/// Caller audio frames not sent to an agent because its socket could not keep up (the media
/// task never waits for the agent).
pub fn agent_frames_dropped(n: u64) {
    counter!("dialtone_agent_frames_dropped_total").increment(n);
}

/// Agent frames that were not understood (not JSON, unknown shape, bad base64, binary).
pub fn agent_corrupt_frame() {
    counter!("dialtone_agent_corrupt_frames_total").increment(1);
}

/// A media input dropped, by cause (`malformed`, `payload_type`, `foreign_source`, ...).
/// Returns a handle so a media task resolves each series once, not per packet.
pub fn media_drop_counter(cause: &'static str) -> metrics::Counter {
    counter!("dialtone_media_dropped_total", "cause" => cause)
}

/// RTP packets, `direction` `in` (accepted) or `out` (sent). A handle, as above.
pub fn media_packets_counter(direction: &'static str) -> metrics::Counter {
    counter!("dialtone_media_packets_total", "direction" => direction)
}

/// 20 ms media slots passed over because a media task fell behind its clock, by `path`:
/// `in` (caller audio the agent never got), `out` (packets never sent to the caller).
pub fn media_clock_slips_counter(path: &'static str) -> metrics::Counter {
    counter!("dialtone_media_clock_slips_total", "path" => path)
}

/// Agent audio dropped because the agent sent it too far ahead of real time, in ms.
pub fn media_agent_overflow_counter() -> metrics::Counter {
    counter!("dialtone_media_agent_audio_overflow_ms_total")
}

/// Time from an RTP packet's arrival to its audio being handed to the agent bridge: jitter
/// buffering, tick alignment and transcoding. The figure the media benchmark reports.
pub fn media_rtp_to_agent_histogram() -> metrics::Histogram {
    metrics::histogram!("dialtone_media_rtp_to_agent_seconds")
}

/// Live media sessions (one per answered call).
pub fn media_sessions(delta: f64) {
    gauge!("dialtone_media_sessions").increment(delta);
}

/// An inbound INVITE refused rather than answered, by cause: the `cause` column of the
/// rejection table in `call::rejection` (`no_route`, `country_not_allowed`,
/// `store_unavailable`, `offer_not_acceptable`, `agent_unreachable`, `cancelled`, ...).
pub fn inbound_call_rejected(cause: &'static str) {
    counter!("dialtone_inbound_calls_rejected_total", "cause" => cause).increment(1);
}

/// A call event for an agent's webhook, by `event` (`call_started`, `call_ended`) and
/// `outcome`: `delivered` (a 2xx), `retried` (a try failed, another follows), `failed`
/// (every try failed, or the store could not be read), `dropped` (the queue was full).
pub fn webhook_event(event: &'static str, outcome: &'static str) {
    counter!("dialtone_webhook_events_total", "event" => event, "outcome" => outcome).increment(1);
}
