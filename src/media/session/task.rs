//! The tokio task around a [`Session`]: it owns the call's socket pair, the agent's
//! channels, the command channel and one sleep, and does nothing but move data between
//! them and the session in the order the [session docs](super) give.

use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Duration;
use tracing::Instrument;

use super::core::{Event, Session, Socket, MAX_TRANSMIT};
use super::{MediaCommand, MediaOutcome, SessionConfig};
use crate::agent::{AgentLink, ToAgent};
use crate::media::ports::RtpSocket;
use crate::metrics;

/// Receive buffers: larger than any sane RTP packet on a 1500-byte MTU.
const DATAGRAM_BUF: usize = 2048;
/// How long the final `stop` may wait for room in the agent channel.
const STOP_SEND_WAIT: Duration = Duration::from_millis(200);

/// The engine's end of a running session.
#[derive(Debug)]
pub struct MediaHandle {
    pub commands: mpsc::Sender<MediaCommand>,
    pub done: tokio::task::JoinHandle<MediaOutcome>,
}

/// Starts the media task for one call. It runs until [`MediaCommand::Stop`], the agent
/// ends, or a timeout; the socket (and its ports) is released when it returns. Runs in the
/// caller's tracing span (the call's), inside a `media` span.
pub fn spawn(socket: RtpSocket, cfg: SessionConfig, agent: AgentLink) -> MediaHandle {
    let (commands, rx) = mpsc::channel(8);
    let span = tracing::info_span!("media", port = socket.port());
    let done = tokio::spawn(run(socket, cfg, agent, rx).instrument(span));
    MediaHandle { commands, done }
}

/// Decrements the live-session gauge however the task ends (even by panic or abort).
struct LiveGuard;

impl LiveGuard {
    fn new() -> Self {
        metrics::media_sessions(1.0);
        LiveGuard
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        metrics::media_sessions(-1.0);
    }
}

async fn run(
    socket: RtpSocket,
    cfg: SessionConfig,
    agent: AgentLink,
    mut commands: mpsc::Receiver<MediaCommand>,
) -> MediaOutcome {
    let _live = LiveGuard::new();
    let AgentLink {
        to_agent,
        mut from_agent,
    } = agent;
    let mut session = Session::new(cfg, Instant::now(), SystemTime::now(), rand::random());
    let mut rtp_buf = vec![0u8; DATAGRAM_BUF];
    let mut rtcp_buf = vec![0u8; DATAGRAM_BUF];
    let mut out_buf = vec![0u8; MAX_TRANSMIT];
    let sleep = tokio::time::sleep_until(Instant::now().into());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;

    loop {
        let now = Instant::now();
        session.handle_timeout(now);
        if let Some(outcome) = flush(&mut session, now, &socket, &to_agent, &mut out_buf).await {
            return outcome;
        }
        let deadline = session.poll_timeout();
        if let Some(d) = deadline.filter(|&d| armed != Some(d)) {
            sleep.as_mut().reset(d.into());
            armed = Some(d);
        }
        tokio::select! {
            biased;
            cmd = commands.recv() => match cmd {
                Some(cmd) => session.handle_command(Instant::now(), cmd),
                None => session.close(),
            },
            msg = from_agent.recv(), if session.reads_agent() => match msg {
                Some(msg) => session.handle_agent(Instant::now(), msg),
                None => session.handle_agent_eof(),
            },
            r = socket.rtp().recv_from(&mut rtp_buf) => match r {
                Ok((len, src)) => session.handle_rtp(Instant::now(), src, &mut rtp_buf[..len]),
                Err(e) => {
                    tracing::debug!(error = %e, "media socket receive error");
                    session.handle_recv_error();
                }
            },
            r = socket.rtcp().recv_from(&mut rtcp_buf) => match r {
                Ok((len, src)) => session.handle_rtcp(Instant::now(), src, &mut rtcp_buf[..len]),
                Err(e) => {
                    tracing::debug!(error = %e, "media socket receive error");
                    session.handle_recv_error();
                }
            },
            () = &mut sleep, if deadline.is_some() => {}
        }
    }
}

/// Sends what the session has for the caller and hands what it has for the agent over,
/// until it has nothing more. Returns the outcome once the session has ended.
async fn flush(
    session: &mut Session,
    now: Instant,
    socket: &RtpSocket,
    to_agent: &mpsc::Sender<ToAgent>,
    buf: &mut [u8],
) -> Option<MediaOutcome> {
    loop {
        while let Some(t) = session.poll_transmit(now, buf) {
            let datagram = &buf[..t.len];
            let sent = match t.socket {
                Socket::Rtp => socket.send_rtp(datagram, t.destination),
                Socket::Rtcp => socket.send_rtcp(datagram, t.destination),
            };
            session.handle_sent(&t, sent);
        }
        let mut delivered = false;
        while let Some(event) = session.poll_event() {
            delivered = true;
            match event {
                Event::Agent(msg) => match to_agent.try_send(msg) {
                    Ok(()) => {}
                    // The last message: worth a short wait, the agent may be catching up.
                    Err(TrySendError::Full(ToAgent::Stop)) => {
                        let wait = to_agent.send(ToAgent::Stop);
                        let _ = tokio::time::timeout(STOP_SEND_WAIT, wait).await;
                    }
                    Err(TrySendError::Full(_)) => session.handle_agent_full(),
                    Err(TrySendError::Closed(_)) => session.handle_agent_closed(),
                },
                Event::Ended(outcome) => return Some(outcome),
            }
        }
        if !delivered {
            return None;
        }
    }
}
