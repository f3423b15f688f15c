//! The messages of the agent websocket, both ways, in the Twilio Media Streams dialect
//! with dialtone's extensions (`hangup`, `send_dtmf`, `answered`).
//!
//! Server → agent messages ([`ServerMessage`]) are written exactly as Twilio writes them:
//! counters (`sequenceNumber`, `chunk`, `timestamp`) are JSON *strings*, because bots
//! written against Twilio parse them as such. They also deserialize, for the built-in echo
//! agent and for tests.
//!
//! Agent → server frames are parsed tolerantly by [`parse_agent_frame`]: unknown events and
//! unknown fields are not errors (a Twilio bot on a newer API must not fail the call), but
//! a frame that is not JSON, has no `event`, or lacks what its event needs is a
//! [`FrameError`] that the bridge counts towards `error_llm_websocket_corrupt_payload`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::AudioEncoding;

/// Base64 as Twilio writes it (standard alphabet, padded). Decoding accepts payloads with
/// or without padding: some hand-written agents strip it, and it loses nothing.
pub const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `protocol` of the `connected` message, as Twilio sends it.
pub const CONNECTED_PROTOCOL: &str = "Call";
/// `version` of the `connected` message, as Twilio sends it.
pub const CONNECTED_VERSION: &str = "1.0.0";
/// `media.track` of caller audio: only the caller's leg is streamed.
pub const INBOUND_TRACK: &str = "inbound";
/// `dtmf.track`: Twilio names the track differently in DTMF events.
pub const DTMF_TRACK: &str = "inbound_track";

/// A counter that goes on the wire as a decimal string (`"42"`), as Twilio sends it.
/// Reading accepts a string or a bare number, so hand-written peers are not rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Counter(pub u64);

impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Counter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Counter, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<'a> {
            Number(u64),
            #[serde(borrow)]
            Text(Cow<'a, str>),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(Counter(n)),
            Either::Text(s) => s
                .parse()
                .map(Counter)
                .map_err(|_| serde::de::Error::custom("counter is not a decimal integer")),
        }
    }
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A message from the server to the agent. Borrowing (`Cow`) lets the bridge write one
/// without copying the payload or the stream identity per frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// First message on every socket; carries no `sequenceNumber` (as on Twilio).
    Connected {
        protocol: Cow<'a, str>,
        version: Cow<'a, str>,
    },
    Start {
        #[serde(rename = "sequenceNumber")]
        sequence_number: Counter,
        #[serde(rename = "streamSid")]
        stream_sid: Cow<'a, str>,
        start: StartBody<'a>,
    },
    Media {
        #[serde(rename = "sequenceNumber")]
        sequence_number: Counter,
        #[serde(rename = "streamSid")]
        stream_sid: Cow<'a, str>,
        media: MediaBody<'a>,
    },
    Dtmf {
        #[serde(rename = "sequenceNumber")]
        sequence_number: Counter,
        #[serde(rename = "streamSid")]
        stream_sid: Cow<'a, str>,
        dtmf: DtmfBody<'a>,
    },
    Mark {
        #[serde(rename = "sequenceNumber")]
        sequence_number: Counter,
        #[serde(rename = "streamSid")]
        stream_sid: Cow<'a, str>,
        mark: MarkBody<'a>,
    },
    Stop {
        #[serde(rename = "sequenceNumber")]
        sequence_number: Counter,
        #[serde(rename = "streamSid")]
        stream_sid: Cow<'a, str>,
        stop: StopBody<'a>,
    },
    /// This server's own: the far end answered an outbound call whose early media the
    /// agent asked for (`forward_early_media`). Sent only to such agents, so a Twilio bot
    /// never sees it.
    Answered {
        #[serde(rename = "sequenceNumber")]
        sequence_number: Counter,
        #[serde(rename = "streamSid")]
        stream_sid: Cow<'a, str>,
    },
}

impl ServerMessage<'static> {
    /// The `connected` greeting.
    pub fn connected() -> ServerMessage<'static> {
        ServerMessage::Connected {
            protocol: Cow::Borrowed(CONNECTED_PROTOCOL),
            version: Cow::Borrowed(CONNECTED_VERSION),
        }
    }
}

/// `start` of the `start` message: the call's identity and audio format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartBody<'a> {
    #[serde(rename = "accountSid")]
    pub account_sid: Cow<'a, str>,
    #[serde(rename = "streamSid")]
    pub stream_sid: Cow<'a, str>,
    #[serde(rename = "callSid")]
    pub call_sid: Cow<'a, str>,
    pub tracks: Vec<Cow<'a, str>>,
    /// Values are strings; nested values are JSON-encoded by whoever builds the map.
    #[serde(rename = "customParameters")]
    pub custom_parameters: BTreeMap<String, String>,
    #[serde(rename = "mediaFormat")]
    pub media_format: MediaFormat<'a>,
}

/// `start.mediaFormat`. `sampleRate` and `channels` are JSON numbers (as on Twilio).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaFormat<'a> {
    pub encoding: Cow<'a, str>,
    #[serde(rename = "sampleRate")]
    pub sample_rate: u32,
    pub channels: u32,
}

impl MediaFormat<'static> {
    /// The format the agent was configured with (AGENT_PROTOCOL.md, "Audio formats").
    pub fn of(encoding: AudioEncoding) -> MediaFormat<'static> {
        MediaFormat {
            encoding: Cow::Borrowed(encoding.media_format()),
            sample_rate: encoding.sample_rate(),
            channels: 1,
        }
    }
}

/// `media` of a server → agent `media` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaBody<'a> {
    pub track: Cow<'a, str>,
    /// Counts from 1.
    pub chunk: Counter,
    /// Milliseconds of audio streamed before this chunk.
    pub timestamp: Counter,
    /// Base64 of the audio bytes.
    pub payload: Cow<'a, str>,
}

/// `dtmf` of a server → agent `dtmf` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtmfBody<'a> {
    pub track: Cow<'a, str>,
    pub digit: Cow<'a, str>,
}

/// `mark` of a `mark` message, either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkBody<'a> {
    pub name: Cow<'a, str>,
}

/// `stop` of the `stop` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopBody<'a> {
    #[serde(rename = "accountSid")]
    pub account_sid: Cow<'a, str>,
    #[serde(rename = "callSid")]
    pub call_sid: Cow<'a, str>,
}

/// A message from the agent to the server, as an agent writes it (the echo agent and
/// tests). The server reads agent frames with [`parse_agent_frame`] instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentMessage<'a> {
    Media {
        #[serde(rename = "streamSid")]
        stream_sid: Cow<'a, str>,
        media: AgentMediaBody<'a>,
    },
    Mark {
        #[serde(rename = "streamSid")]
        stream_sid: Cow<'a, str>,
        mark: MarkBody<'a>,
    },
    Clear {
        #[serde(rename = "streamSid")]
        stream_sid: Cow<'a, str>,
    },
    /// Extension: end the call.
    Hangup,
    /// Extension: play digits to the caller.
    SendDtmf { dtmf: SendDtmfBody<'a> },
    /// Extension: transfer the caller.
    Transfer { transfer: TransferBody<'a> },
}

/// `media` of an agent → server `media` message: only the payload matters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentMediaBody<'a> {
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
}

/// `dtmf` of the `send_dtmf` extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendDtmfBody<'a> {
    #[serde(borrow)]
    pub digits: Cow<'a, str>,
}

/// `transfer` of the `transfer` extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferBody<'a> {
    #[serde(borrow)]
    pub to: Cow<'a, str>,
}

/// What an agent frame asked for, once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// Agent audio, base64-decoded.
    Media(Vec<u8>),
    Mark(String),
    Clear,
    Hangup,
    /// Digits as sent; the bridge validates them.
    SendDtmf(String),
    Transfer {
        to: String,
    },
    /// A well-formed event this server does not know: skipped, never fatal.
    Unknown(String),
}

/// Why an agent frame could not be understood. Counted, logged, and skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a JSON object with a string \"event\": {0}")]
    NotJson(String),
    #[error("\"{event}\" event of an unexpected shape: {detail}")]
    BadShape { event: String, detail: String },
    #[error("media payload is not base64: {0}")]
    BadBase64(String),
    #[error("binary frame (the protocol is text frames only)")]
    Binary,
}

#[derive(Deserialize)]
struct EventOnly<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
}

#[derive(Deserialize)]
struct MediaFrame<'a> {
    #[serde(borrow)]
    media: AgentMediaBody<'a>,
}

#[derive(Deserialize)]
struct MarkFrame<'a> {
    #[serde(borrow)]
    mark: MarkBody<'a>,
}

#[derive(Deserialize)]
struct SendDtmfFrame<'a> {
    #[serde(borrow)]
    dtmf: SendDtmfBody<'a>,
}

#[derive(Deserialize)]
struct TransferFrame<'a> {
    #[serde(borrow)]
    transfer: TransferBody<'a>,
}

/// Parses one text frame from the agent.
///
/// Two passes: the first reads only `event` (skipping everything else cheaply), the second
/// reads the fields that event needs. So an unknown event is never rejected for the shape
/// of fields we do not read, and unknown fields of known events are ignored.
pub fn parse_agent_frame(text: &str) -> Result<AgentEvent, FrameError> {
    let head: EventOnly<'_> =
        serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    let shape = |e: serde_json::Error| FrameError::BadShape {
        event: head.event.clone().into_owned(),
        detail: e.to_string(),
    };
    Ok(match head.event.as_ref() {
        "media" => {
            let frame: MediaFrame<'_> = serde_json::from_str(text).map_err(shape)?;
            let audio = BASE64
                .decode(frame.media.payload.as_bytes())
                .map_err(|e| FrameError::BadBase64(e.to_string()))?;
            AgentEvent::Media(audio)
        }
        "mark" => {
            let frame: MarkFrame<'_> = serde_json::from_str(text).map_err(shape)?;
            AgentEvent::Mark(frame.mark.name.into_owned())
        }
        "clear" => AgentEvent::Clear,
        "hangup" => AgentEvent::Hangup,
        "send_dtmf" => {
            let frame: SendDtmfFrame<'_> = serde_json::from_str(text).map_err(shape)?;
            AgentEvent::SendDtmf(frame.dtmf.digits.into_owned())
        }
        "transfer" => {
            let frame: TransferFrame<'_> = serde_json::from_str(text).map_err(shape)?;
            AgentEvent::Transfer {
                to: frame.transfer.to.into_owned(),
            }
        }
        other => AgentEvent::Unknown(other.to_owned()),
    })
}

/// Whether `digits` is a non-empty string of DTMF keys (`0-9`, `*`, `#`, `A-D`).
pub fn valid_dtmf_digits(digits: &str) -> bool {
    !digits.is_empty() && digits.chars().all(valid_dtmf_digit)
}

/// Whether `c` is a DTMF key (`0-9`, `*`, `#`, `A-D`).
pub fn valid_dtmf_digit(c: char) -> bool {
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')
}

/// A fresh Twilio-style identifier: `prefix` then 32 lowercase hex digits.
pub fn new_sid(prefix: &str) -> String {
    use std::fmt::Write as _;
    let bytes: [u8; 16] = rand::random();
    let mut sid = String::with_capacity(prefix.len() + 32);
    sid.push_str(prefix);
    for b in bytes {
        // cannot fail: writing to a String never errors
        let _ = write!(sid, "{b:02x}");
    }
    sid
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn to_value(msg: &ServerMessage<'_>) -> Value {
        serde_json::from_str(&serde_json::to_string(msg).unwrap()).unwrap()
    }

    #[test]
    fn connected_is_twilios() {
        assert_eq!(
            to_value(&ServerMessage::connected()),
            json!({"event":"connected","protocol":"Call","version":"1.0.0"})
        );
    }

    #[test]
    fn start_shape_per_encoding() {
        for (enc, name, rate) in [
            (AudioEncoding::Mulaw8000, "audio/x-mulaw", 8000),
            (AudioEncoding::Pcm16000, "audio/x-l16", 16000),
            (AudioEncoding::Pcm24000, "audio/x-l16", 24000),
        ] {
            let msg = ServerMessage::Start {
                sequence_number: Counter(1),
                stream_sid: "MZ00".into(),
                start: StartBody {
                    account_sid: "AC11".into(),
                    stream_sid: "MZ00".into(),
                    call_sid: "call_1".into(),
                    tracks: vec![INBOUND_TRACK.into()],
                    custom_parameters: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
                    media_format: MediaFormat::of(enc),
                },
            };
            let v = to_value(&msg);
            assert_eq!(
                v,
                json!({"event":"start","sequenceNumber":"1","streamSid":"MZ00","start":{
                    "accountSid":"AC11","streamSid":"MZ00","callSid":"call_1","tracks":["inbound"],
                    "customParameters":{"k":"v"},
                    "mediaFormat":{"encoding":name,"sampleRate":rate,"channels":1}}})
            );
            // And it reads back.
            let back: ServerMessage<'_> = serde_json::from_value(v).unwrap();
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn media_dtmf_mark_stop_shapes() {
        let media = ServerMessage::Media {
            sequence_number: Counter(2),
            stream_sid: "MZ".into(),
            media: MediaBody {
                track: INBOUND_TRACK.into(),
                chunk: Counter(1),
                timestamp: Counter(0),
                payload: "AAE=".into(),
            },
        };
        assert_eq!(
            to_value(&media),
            json!({"event":"media","sequenceNumber":"2","streamSid":"MZ",
                   "media":{"track":"inbound","chunk":"1","timestamp":"0","payload":"AAE="}})
        );
        let dtmf = ServerMessage::Dtmf {
            sequence_number: Counter(9),
            stream_sid: "MZ".into(),
            dtmf: DtmfBody {
                track: DTMF_TRACK.into(),
                digit: "5".into(),
            },
        };
        assert_eq!(
            to_value(&dtmf),
            json!({"event":"dtmf","sequenceNumber":"9","streamSid":"MZ",
                   "dtmf":{"track":"inbound_track","digit":"5"}})
        );
        let mark = ServerMessage::Mark {
            sequence_number: Counter(10),
            stream_sid: "MZ".into(),
            mark: MarkBody {
                name: "greeting-done".into(),
            },
        };
        assert_eq!(
            to_value(&mark),
            json!({"event":"mark","sequenceNumber":"10","streamSid":"MZ",
                   "mark":{"name":"greeting-done"}})
        );
        let stop = ServerMessage::Stop {
            sequence_number: Counter(11),
            stream_sid: "MZ".into(),
            stop: StopBody {
                account_sid: "AC".into(),
                call_sid: "c".into(),
            },
        };
        assert_eq!(
            to_value(&stop),
            json!({"event":"stop","sequenceNumber":"11","streamSid":"MZ",
                   "stop":{"accountSid":"AC","callSid":"c"}})
        );
        let answered = ServerMessage::Answered {
            sequence_number: Counter(4),
            stream_sid: "MZ".into(),
        };
        assert_eq!(
            to_value(&answered),
            json!({"event":"answered","sequenceNumber":"4","streamSid":"MZ"})
        );
    }

    #[test]
    fn counters_read_from_strings_or_numbers() {
        let c: Counter = serde_json::from_str("\"42\"").unwrap();
        assert_eq!(c, Counter(42));
        let c: Counter = serde_json::from_str("42").unwrap();
        assert_eq!(c, Counter(42));
        assert!(serde_json::from_str::<Counter>("\"x\"").is_err());
    }

    #[test]
    fn agent_messages_parse() {
        let cases: Vec<(Value, AgentEvent)> = vec![
            (
                json!({"event":"media","streamSid":"MZ","media":{"payload":"AAEC"}}),
                AgentEvent::Media(vec![0, 1, 2]),
            ),
            (
                // Unpadded base64 and extra fields are fine.
                json!({"event":"media","media":{"payload":"AAE","track":"outbound"},"x":1}),
                AgentEvent::Media(vec![0, 1]),
            ),
            (
                json!({"event":"mark","streamSid":"MZ","mark":{"name":"m1"}}),
                AgentEvent::Mark("m1".into()),
            ),
            (json!({"event":"clear","streamSid":"MZ"}), AgentEvent::Clear),
            (json!({"event":"hangup"}), AgentEvent::Hangup),
            (
                json!({"event":"send_dtmf","dtmf":{"digits":"12#"}}),
                AgentEvent::SendDtmf("12#".into()),
            ),
            (
                json!({"event":"transfer","transfer":{"to":"+14155550123"}}),
                AgentEvent::Transfer {
                    to: "+14155550123".into(),
                },
            ),
            (
                // Unknown events are skipped whatever their fields look like.
                json!({"event":"future_thing","media":42}),
                AgentEvent::Unknown("future_thing".into()),
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(
                parse_agent_frame(&frame.to_string()),
                Ok(want),
                "frame {frame}"
            );
        }
        // An escaped slash in the payload (some JSON encoders write `\/`).
        assert_eq!(
            parse_agent_frame(r#"{"event":"media","media":{"payload":"\/w=="}}"#),
            Ok(AgentEvent::Media(vec![0xff]))
        );
    }

    #[test]
    fn agent_garbage_is_an_error() {
        for bad in [
            "not json",
            "",
            "[]",
            "42",
            r#"{"no_event":1}"#,
            r#"{"event":5}"#,
            r#"{"event":"media"}"#,
            r#"{"event":"media","media":{}}"#,
            r#"{"event":"mark","mark":{"name":3}}"#,
            r#"{"event":"send_dtmf"}"#,
        ] {
            assert!(parse_agent_frame(bad).is_err(), "accepted {bad:?}");
        }
        assert!(matches!(
            parse_agent_frame(r#"{"event":"media","media":{"payload":"!!!"}}"#),
            Err(FrameError::BadBase64(_))
        ));
    }

    #[test]
    fn agent_messages_serialize_as_documented() {
        let v = |m: AgentMessage<'_>| -> Value { serde_json::to_value(&m).unwrap() };
        assert_eq!(
            v(AgentMessage::Media {
                stream_sid: "MZ".into(),
                media: AgentMediaBody {
                    payload: "AA==".into()
                }
            }),
            json!({"event":"media","streamSid":"MZ","media":{"payload":"AA=="}})
        );
        assert_eq!(
            v(AgentMessage::Clear {
                stream_sid: "MZ".into()
            }),
            json!({"event":"clear","streamSid":"MZ"})
        );
        assert_eq!(v(AgentMessage::Hangup), json!({"event":"hangup"}));
        assert_eq!(
            v(AgentMessage::SendDtmf {
                dtmf: SendDtmfBody {
                    digits: "1234#".into()
                }
            }),
            json!({"event":"send_dtmf","dtmf":{"digits":"1234#"}})
        );
        assert_eq!(
            v(AgentMessage::Transfer {
                transfer: TransferBody { to: "+1".into() }
            }),
            json!({"event":"transfer","transfer":{"to":"+1"}})
        );
    }

    #[test]
    fn dtmf_digits() {
        assert!(valid_dtmf_digits("0123456789*#ABCD"));
        assert!(!valid_dtmf_digits(""));
        assert!(!valid_dtmf_digits("12e"));
        assert!(!valid_dtmf_digits("a"));
    }

    #[test]
    fn sids_look_like_twilios() {
        let sid = new_sid("MZ");
        assert_eq!(sid.len(), 34);
        assert!(sid.starts_with("MZ"));
        assert!(sid[2..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(sid, new_sid("MZ"));
    }
}
