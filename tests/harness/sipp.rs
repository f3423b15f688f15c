//! SIPp (`sip-tester`), an independent SIP implementation, as a caller (UAC) or as a trunk
//! or echo server (UAS): one run of one scenario, with its message and error traces kept
//! for the assertions. Scenarios live under `tests/sipp/` (plain SIP) and `tests/e2e/sipp/`
//! (calls playing pcaps); SIPp runs in the scenario's directory, where those name their
//! pcaps.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::ports::{free_port_block, free_udp_tcp_port};
use super::{read_text, require_tool, tail, tests_path};

/// One SIPp run to make. Defaults: UDP (`-t u1`), one call, a free SIP port and a free
/// media port block, 30 s.
pub struct Sipp {
    scenario: PathBuf,
    target: Option<SocketAddr>,
    transport: &'static str,
    calls: u32,
    media_port: Option<u16>,
    replacements: Vec<(String, String)>,
    args: Vec<String>,
    timeout: Duration,
}

impl Sipp {
    fn new(scenario: &str, target: Option<SocketAddr>) -> Sipp {
        Sipp {
            scenario: tests_path(scenario),
            target,
            transport: "u1",
            calls: 1,
            media_port: None,
            replacements: Vec::new(),
            args: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    /// SIPp calling `target` with `scenario` (a path under `tests/`).
    pub fn uac(scenario: &str, target: SocketAddr) -> Sipp {
        Sipp::new(scenario, Some(target))
    }

    /// SIPp waiting for calls with `scenario` (a path under `tests/`).
    pub fn uas(scenario: &str) -> Sipp {
        Sipp::new(scenario, None)
    }

    /// SIPp's `-t` (`u1`: UDP, `t1`: TCP).
    pub fn transport(mut self, transport: &'static str) -> Sipp {
        self.transport = transport;
        self
    }

    /// How many calls to make or take (`-m`).
    pub fn calls(mut self, n: u32) -> Sipp {
        self.calls = n;
        self
    }

    /// SIPp's RTP port (`-mp`): take it from [`free_port_block`]`(4)` to start a capture on
    /// it first.
    pub fn media_port(mut self, port: u16) -> Sipp {
        self.media_port = Some(port);
        self
    }

    /// The user part of the Request-URI (`-s`).
    pub fn service(self, user: &str) -> Sipp {
        self.args(&["-s", user])
    }

    /// Replaces `[name]` with `value` in a copy of the scenario before SIPp reads it, for
    /// what `-key` cannot do: values SIPp checks when it loads a scenario (status codes),
    /// whole message bodies.
    pub fn replace(mut self, name: &str, value: &str) -> Sipp {
        self.replacements.push((name.into(), value.into()));
        self
    }

    /// More command-line arguments (`-key name value`, `-rtp_echo`, ...).
    pub fn args(mut self, args: &[&str]) -> Sipp {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// SIPp's own `-timeout` (it then fails); it is killed 10 s later.
    pub fn timeout(mut self, timeout: Duration) -> Sipp {
        self.timeout = timeout;
        self
    }

    /// Runs to the end (bounded by the timeout).
    pub fn run(self) -> SippRun {
        self.start().wait()
    }

    /// Starts SIPp in the background; a UAS is waited for until it listens (≤ 10 s).
    pub fn start(self) -> RunningSipp {
        require_tool("sipp");
        let dir = tempfile::Builder::new()
            .prefix("dialtone-sipp-")
            .tempdir()
            .expect("create a temp dir");
        let sip_port = free_udp_tcp_port();
        let media_port = self.media_port.unwrap_or_else(|| free_port_block(4));
        let scenario = if self.replacements.is_empty() {
            self.scenario.clone()
        } else {
            let mut text = std::fs::read_to_string(&self.scenario)
                .unwrap_or_else(|e| panic!("read {}: {e}", self.scenario.display()));
            for (k, v) in &self.replacements {
                text = text.replace(&format!("[{k}]"), v);
            }
            let copy = dir.path().join(self.scenario.file_name().unwrap());
            std::fs::write(&copy, text).expect("write the scenario copy");
            copy
        };
        let messages = dir.path().join("messages.log");
        let errors = dir.path().join("errors.log");
        let output = dir.path().join("output.log");
        let out = File::create(&output).expect("create the SIPp output file");
        let mut cmd = Command::new("sipp");
        if let Some(target) = self.target {
            cmd.arg(target.to_string());
        }
        cmd.arg("-sf")
            .arg(&scenario)
            .args(["-t", self.transport])
            .args(["-i", "127.0.0.1", "-p", &sip_port.to_string()])
            .args(["-mi", "127.0.0.1", "-mp", &media_port.to_string()])
            .args(["-m", &self.calls.to_string()])
            .args(["-timeout", &format!("{}s", self.timeout.as_secs().max(1))])
            .args(["-timeout_error", "-nostdin"])
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(&messages)
            .arg("-trace_err")
            .arg("-error_file")
            .arg(&errors)
            .args(&self.args)
            .current_dir(self.scenario.parent().unwrap())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the output file handle"))
            .stderr(out);
        let child = cmd.spawn().expect("run sipp");
        let mut running = RunningSipp {
            child,
            sip_port,
            media_port,
            deadline: Instant::now() + self.timeout + Duration::from_secs(10),
            messages,
            errors,
            output,
            _dir: dir,
        };
        if self.target.is_none() {
            running.wait_listening();
        }
        running
    }
}

/// A SIPp process; killed on drop.
pub struct RunningSipp {
    child: Child,
    /// Where it sends and takes SIP (on 127.0.0.1).
    pub sip_port: u16,
    pub media_port: u16,
    deadline: Instant,
    messages: PathBuf,
    errors: PathBuf,
    output: PathBuf,
    _dir: tempfile::TempDir,
}

impl RunningSipp {
    /// Waits until SIPp's SIP port is bound over UDP (read from `/proc/net/udp`, so nothing
    /// competes for the port).
    fn wait_listening(&mut self) {
        let suffix = format!(":{:04X}", self.sip_port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let table = read_text(Path::new("/proc/net/udp"));
            if table.lines().any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|local| local.ends_with(&suffix))
            }) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "SIPp exited before listening ({status}):\n{}",
                    read_text(&self.output)
                );
            }
            assert!(
                Instant::now() < deadline,
                "SIPp did not listen on UDP port {} within 10 s",
                self.sip_port
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for SIPp to end (killed after its timeout + 10 s) and returns what it did.
    pub fn wait(mut self) -> SippRun {
        let (code, timed_out) = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on sipp") {
                break (status.code(), false);
            }
            if Instant::now() > self.deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break (None, true);
            }
            thread::sleep(Duration::from_millis(50));
        };
        SippRun {
            code,
            timed_out,
            messages: read_text(&self.messages),
            errors: read_text(&self.errors),
            output: read_text(&self.output),
            sip_port: self.sip_port,
            media_port: self.media_port,
        }
    }
}

impl Drop for RunningSipp {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What one SIPp run did.
#[derive(Debug)]
pub struct SippRun {
    /// SIPp's exit code (0: every call succeeded; 1: some failed; 99: no call processed);
    /// `None` when it had to be killed.
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The `-trace_msg` log: every SIP message sent and received.
    pub messages: String,
    pub errors: String,
    /// SIPp's stdout and stderr.
    pub output: String,
    pub sip_port: u16,
    pub media_port: u16,
}

impl SippRun {
    /// Whether SIPp reported success.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with [`SippRun::describe`] unless SIPp reported success.
    pub fn assert_success(&self) {
        assert!(self.ok(), "SIPp did not succeed: {}", self.describe());
    }

    /// A summary for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "sipp exit {:?} (timed out: {})\n--- errors ---\n{}\n--- messages ---\n{}\n--- output ---\n{}",
            self.code,
            self.timed_out,
            tail(&self.errors, 40),
            tail(&self.messages, 150),
            tail(&self.output, 60)
        )
    }

    /// The status codes of the responses SIPp received, in order.
    pub fn received_status_codes(&self) -> Vec<u16> {
        received_messages(&self.messages)
            .iter()
            .filter_map(|m| {
                m.lines()
                    .next()?
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
