//! The agent side of a call: the websocket to the user's agent, speaking the Twilio Media
//! Streams dialect, with dialtone's extensions.
//!
//! The media task talks to the bridge only through [`AgentLink`]'s two channels, so it
//! knows nothing of websockets, and the bridge knows nothing of RTP.

pub mod bridge;
pub mod echo;
pub mod protocol;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::model::DisconnectionReason;

/// What the media task sends towards the agent.
#[derive(Debug)]
pub enum ToAgent {
    /// One 20 ms frame of caller audio, already in the agent's `audio_encoding`
    /// (μ-law bytes, or PCM16 little-endian). The bridge base64-encodes it into a `media`
    /// message and numbers chunks and timestamps itself.
    Media(Bytes),
    /// A key the caller pressed (one per press): `0-9`, `*`, `#`, `A-D`.
    Dtmf(char),
    /// All agent audio queued before this mark has been played out (or was cleared):
    /// echo the mark back to the agent.
    MarkPlayed(String),
    /// The far end answered a call whose early media was streamed (an `answered` event).
    Answered,
    /// The call is over: send `stop`, then close the socket with code 1000.
    Stop,
}

/// What the agent asked for, or what happened to its socket.
#[derive(Debug, PartialEq, Eq)]
pub enum FromAgent {
    /// Agent audio in its `audio_encoding`, any length.
    Media(Vec<u8>),
    /// A mark to echo once the audio sent before it has played out.
    Mark(String),
    /// Barge-in: drop queued agent audio and return pending marks at once.
    Clear,
    /// Play these RFC 4733 digits to the caller.
    SendDtmf(String),
    /// End the call (`hangup` event, or a normal close with code 1000): reason
    /// `agent_hangup` after playing out queued audio (bounded).
    Hangup,
    /// The socket ended abnormally; the call ends with this reason.
    Failed(DisconnectionReason),
}

/// The two ends the media task holds.
pub struct AgentLink {
    pub to_agent: mpsc::Sender<ToAgent>,
    pub from_agent: mpsc::Receiver<FromAgent>,
}

/// Slots of `to_agent` that audio may not take, so that a backlog of audio towards a slow
/// agent never crowds out a DTMF key, a mark or `Stop`.
pub const CONTROL_RESERVE: usize = 16;

impl AgentLink {
    /// Hands `msg` to the bridge without ever waiting: the media task runs on a 20 ms
    /// clock and must not stall on a slow agent. Audio is dropped (and counted in
    /// `dialtone_agent_frames_dropped_total`) once the queue is within [`CONTROL_RESERVE`]
    /// of full; control messages may use the reserve. Returns whether `msg` was queued.
    /// After the socket has gone the bridge keeps draining the channel until every sender
    /// is dropped, so late messages are accepted and discarded, not counted as dropped.
    pub fn offer(&self, msg: ToAgent) -> bool {
        if matches!(msg, ToAgent::Media(_)) && self.to_agent.capacity() <= CONTROL_RESERVE {
            crate::metrics::agent_frames_dropped(1);
            return false;
        }
        match self.to_agent.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(msg)) => {
                if matches!(msg, ToAgent::Media(_)) {
                    crate::metrics::agent_frames_dropped(1);
                } else {
                    tracing::warn!(
                        "agent queue full: a control message towards the agent was lost"
                    );
                }
                false
            }
            // The bridge task has finished: nothing more can reach the agent anyway.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
