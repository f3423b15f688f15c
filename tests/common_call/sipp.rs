//! Running SIPp (`sip-tester`) as the caller, one call, with its message trace kept for
//! the assertions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// A scenario file under `tests/e2e/sipp/`.
pub fn scenario(name: &str) -> PathBuf {
    super::e2e_dir().join("sipp").join(name)
}

/// What one SIPp run did.
#[derive(Debug)]
pub struct SippRun {
    /// SIPp's exit code (0: every call succeeded); `None` when it was killed.
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The `-trace_msg` log: every SIP message sent and received.
    pub messages: String,
    pub errors: String,
    pub output: String,
    /// The local SIP port and the media port SIPp used.
    pub sip_port: u16,
    pub media_port: u16,
}

impl SippRun {
    /// Whether SIPp reported success.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// A summary for assertion messages.
    pub fn describe(&self) -> String {
        let tail = |s: &str, n: usize| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "sipp exit {:?} (timed out: {})\n--- errors ---\n{}\n--- messages ---\n{}\n--- output ---\n{}",
            self.code,
            self.timed_out,
            tail(&self.errors, 40),
            tail(&self.messages, 150),
            tail(&self.output, 40)
        )
    }

    /// The received responses' status lines, in order (e.g. `SIP/2.0 180 Ringing`).
    pub fn received_status_codes(&self) -> Vec<u16> {
        received_messages(&self.messages)
            .iter()
            .filter_map(|m| {
                let first = m.lines().next()?;
                first
                    .strip_prefix("SIP/2.0 ")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// The body of the first received 200 to INVITE.
    pub fn answer_sdp(&self) -> Option<String> {
        received_messages(&self.messages)
            .into_iter()
            .find(|m| {
                m.starts_with("SIP/2.0 200")
                    && m.lines().any(|l| {
                        let l = l.to_ascii_lowercase();
                        l.starts_with("cseq:") && l.contains("invite")
                    })
            })
            .and_then(|m| m.split_once("\n\n").map(|(_, b)| b.trim().to_string()))
    }
}

/// Splits a `-trace_msg` log into the messages SIPp received.
fn received_messages(log: &str) -> Vec<String> {
    // Entries are separated by dashed lines; a received one starts with
    // "UDP message received [N] bytes :" followed by a blank line and the message.
    let log = log.replace("\r\n", "\n");
    let mut out = Vec::new();
    for entry in log.split("\n---------------------------------------------") {
        if let Some(pos) = entry.find("message received [") {
            let rest = &entry[pos..];
            if let Some((_, msg)) = rest.split_once(":\n") {
                out.push(msg.trim_start_matches('\n').to_string());
            }
        }
    }
    out
}

/// Options for one SIPp UAC run.
pub struct Uac<'a> {
    pub scenario: &'a str,
    pub target: SocketAddr,
    /// `-s`: the user part of the Request-URI, i.e. the call_id.
    pub service: &'a str,
    pub dir: &'a Path,
    /// `-mp`: SIPp's RTP port (take it from [`super::free_port_block`]`(4)`, so a capture
    /// can be started on it first).
    pub media_port: u16,
    pub timeout: Duration,
    pub extra: Vec<String>,
}

/// The SIPp command shared by both roles: one call, message and error traces kept, run
/// from `tests/e2e/sipp` (scenarios name their pcaps relative to it).
fn command(
    target: Option<SocketAddr>,
    scenario: &Path,
    sip_port: u16,
    media_port: u16,
    msg_file: &Path,
    err_file: &Path,
    secs: u64,
) -> Command {
    let mut cmd = Command::new("sipp");
    if let Some(target) = target {
        cmd.arg(target.to_string());
    }
    cmd.arg("-sf")
        .arg(scenario)
        .args(["-i", "127.0.0.1", "-p", &sip_port.to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &media_port.to_string()])
        .args(["-m", "1", "-nostdin", "-timeout_error"])
        .args(["-timeout", &format!("{secs}s")])
        .arg("-trace_msg")
        .arg("-message_file")
        .arg(msg_file)
        .arg("-trace_err")
        .arg("-error_file")
        .arg(err_file)
        .current_dir(super::e2e_dir().join("sipp"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Waits (bounded) for a SIPp run to end and gathers what it left.
async fn collect(
    child: tokio::process::Child,
    secs: u64,
    msg_file: &Path,
    err_file: &Path,
    sip_port: u16,
    media_port: u16,
) -> SippRun {
    let waited =
        tokio::time::timeout(Duration::from_secs(secs + 10), child.wait_with_output()).await;
    let (code, timed_out, output) = match waited {
        Ok(Ok(out)) => (
            out.status.code(),
            false,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Ok(Err(e)) => panic!("sipp: {e}"),
        Err(_) => (None, true, String::new()),
    };
    SippRun {
        code,
        timed_out,
        messages: std::fs::read_to_string(msg_file).unwrap_or_default(),
        errors: std::fs::read_to_string(err_file).unwrap_or_default(),
        output,
        sip_port,
        media_port,
    }
}

/// Runs one call with SIPp as the UAC; bounded by `timeout` (SIPp's own `-timeout` plus a
/// margin, then killed).
pub async fn run_uac(opts: Uac<'_>) -> SippRun {
    super::require_tool("sipp");
    let sip_port = super::free_udp_port();
    let media_port = opts.media_port;
    let msg_file = opts.dir.join(format!("sipp-{sip_port}-messages.log"));
    let err_file = opts.dir.join(format!("sipp-{sip_port}-errors.log"));
    let secs = opts.timeout.as_secs().max(5);
    let mut cmd = command(
        Some(opts.target),
        &scenario(opts.scenario),
        sip_port,
        media_port,
        &msg_file,
        &err_file,
        secs,
    );
    cmd.args(["-s", opts.service, "-l", "1"]).args(&opts.extra);
    let child = cmd.spawn().expect("start sipp");
    collect(child, secs, &msg_file, &err_file, sip_port, media_port).await
}

/// Options for one SIPp UAS (a trunk answering dialtone's outbound call).
pub struct Uas<'a> {
    pub scenario: &'a str,
    /// `[name]` → value replacements made in a copy of the scenario before SIPp reads it
    /// (for what `-key` cannot do, such as whole message bodies).
    pub keys: &'a [(&'a str, &'a str)],
    pub dir: &'a Path,
    pub media_port: u16,
    pub timeout: Duration,
}

/// A SIPp UAS waiting for its one call.
pub struct RunningUas {
    child: tokio::process::Child,
    /// Where it listens for SIP (UDP on 127.0.0.1).
    pub sip_port: u16,
    media_port: u16,
    secs: u64,
    msg_file: PathBuf,
    err_file: PathBuf,
}

/// Starts SIPp as a UAS on a free port and gives it a moment to bind.
pub async fn start_uas(opts: Uas<'_>) -> RunningUas {
    super::require_tool("sipp");
    let sip_port = super::free_udp_port();
    let mut text = std::fs::read_to_string(scenario(opts.scenario)).expect("scenario");
    for (k, v) in opts.keys {
        text = text.replace(&format!("[{k}]"), v);
    }
    let path = opts.dir.join(format!("uas-{sip_port}-{}", opts.scenario));
    std::fs::write(&path, text).expect("write the scenario copy");
    let msg_file = opts.dir.join(format!("sipp-{sip_port}-messages.log"));
    let err_file = opts.dir.join(format!("sipp-{sip_port}-errors.log"));
    let secs = opts.timeout.as_secs().max(5);
    let child = command(
        None,
        &path,
        sip_port,
        opts.media_port,
        &msg_file,
        &err_file,
        secs,
    )
    .spawn()
    .expect("start sipp");
    tokio::time::sleep(Duration::from_millis(300)).await;
    RunningUas {
        child,
        sip_port,
        media_port: opts.media_port,
        secs,
        msg_file,
        err_file,
    }
}

impl RunningUas {
    /// Waits for the call to end (bounded) and returns what SIPp did.
    pub async fn wait(self) -> SippRun {
        collect(
            self.child,
            self.secs,
            &self.msg_file,
            &self.err_file,
            self.sip_port,
            self.media_port,
        )
        .await
    }
}
