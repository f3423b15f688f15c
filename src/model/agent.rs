//! The agent record: where a call's websocket goes, what audio it speaks, and the limits
//! it puts on its calls. Field names follow Retell's v2 agent object.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The agent's audio format on its websocket (AGENT_PROTOCOL.md, "Audio formats").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AudioEncoding {
    #[default]
    #[serde(rename = "mulaw_8000")]
    Mulaw8000,
    #[serde(rename = "pcm_16000")]
    Pcm16000,
    #[serde(rename = "pcm_24000")]
    Pcm24000,
}

impl AudioEncoding {
    pub fn sample_rate(self) -> u32 {
        match self {
            AudioEncoding::Mulaw8000 => 8000,
            AudioEncoding::Pcm16000 => 16000,
            AudioEncoding::Pcm24000 => 24000,
        }
    }

    /// `mediaFormat.encoding` in the start message.
    pub fn media_format(self) -> &'static str {
        match self {
            AudioEncoding::Mulaw8000 => "audio/x-mulaw",
            AudioEncoding::Pcm16000 | AudioEncoding::Pcm24000 => "audio/x-l16",
        }
    }

    /// Payload bytes in one 20 ms frame.
    pub fn bytes_per_20ms(self) -> usize {
        match self {
            AudioEncoding::Mulaw8000 => 160,
            AudioEncoding::Pcm16000 => 640,
            AudioEncoding::Pcm24000 => 960,
        }
    }
}

/// `response_engine` of an agent: where its websocket is and what it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseEngine {
    /// Always `audio-websocket`.
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    #[serde(default)]
    pub audio_encoding: AudioEncoding,
    /// Extra headers on the websocket upgrade (e.g. `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// An agent: what a call is bridged to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub agent_id: String,
    pub agent_name: Option<String>,
    pub version: i64,
    pub response_engine: ResponseEngine,
    pub webhook_url: Option<String>,
    /// Hard limit on a call's length.
    pub max_call_duration_ms: i64,
    /// End the call after this long with no audio from the caller.
    pub end_call_after_silence_ms: i64,
    /// Outbound: how long to let the far end ring.
    pub ring_duration_ms: i64,
    /// Outbound: stream the far end's early media (a 180/183 with SDP) to the agent before
    /// the answer. Off by default: a Twilio-style bot expects its stream to start at answer.
    pub forward_early_media: bool,
    pub last_modification_timestamp: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_use_retell_names() {
        assert_eq!(
            serde_json::to_string(&AudioEncoding::Pcm16000).unwrap(),
            "\"pcm_16000\""
        );
        let e: AudioEncoding = serde_json::from_str("\"mulaw_8000\"").unwrap();
        assert_eq!(e, AudioEncoding::Mulaw8000);
        assert_eq!(AudioEncoding::Pcm24000.bytes_per_20ms(), 960);
    }
}
