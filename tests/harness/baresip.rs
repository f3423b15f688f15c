//! baresip (Debian's 1.0) as a second, independent caller, run headless from a config
//! directory the test writes, and driven over its `ctrl_tcp` module: netstring-framed
//! JSON `{"command","params","token"}`; `dial`, `sndcode` (RFC 4733 DTMF while in a call),
//! `hangup`. Events (`CALL_ESTABLISHED`, `CALL_CLOSED`, …) arrive on the same socket.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::ports::{free_port_block, free_tcp_port};
use super::{print_log_if_failing, read_text, require_tool, unique};

/// A running baresip; killed on drop.
pub struct Baresip {
    child: Child,
    ctrl: TcpStream,
    buf: Vec<u8>,
    pub dir: PathBuf,
    pub sip_port: u16,
    /// baresip's RTP port range (inclusive).
    pub rtp_ports: (u16, u16),
    /// Every event received so far.
    pub events: Vec<Value>,
    pub log_path: PathBuf,
}

impl Baresip {
    /// Starts baresip in `dir` offering only the codecs of `codec_modules` (e.g. `["g722"]`),
    /// with `wav` (mono, see [`super::audio::write_tone_wav`]) as its microphone. Waits
    /// until ctrl_tcp answers (≤ 10 s).
    pub async fn start(dir: &Path, codec_modules: &[&str], wav: &Path) -> Baresip {
        Self::start_with(dir, codec_modules, wav, "", "").await
    }

    /// As [`Baresip::start`], with `account_params` appended to the account line (e.g.
    /// `;mediaenc=srtp-mand`) and `extra_config` lines appended to the config.
    pub async fn start_with(
        dir: &Path,
        codec_modules: &[&str],
        wav: &Path,
        account_params: &str,
        extra_config: &str,
    ) -> Baresip {
        let account = format!("<sip:e2e@127.0.0.1>;regint=0{account_params}");
        Self::start_account(dir, codec_modules, wav, &account, extra_config).await
    }

    /// As [`Baresip::start_with`], with the whole `accounts` line given. baresip takes an
    /// incoming INVITE only for an account whose user is the Request-URI's user.
    pub async fn start_account(
        dir: &Path,
        codec_modules: &[&str],
        wav: &Path,
        account: &str,
        extra_config: &str,
    ) -> Baresip {
        require_tool("baresip");
        std::fs::create_dir_all(dir).unwrap();
        let sip_port = free_port_block(2); // baresip also takes port+1 for TLS
        let ctrl_port = free_tcp_port();
        let rtp_lo = free_port_block(16);
        let mut modules = String::new();
        for m in codec_modules {
            modules.push_str(&format!("module {m}.so\n"));
        }
        let config = format!(
            "poll_method epoll\n\
             sip_listen 127.0.0.1:{sip_port}\n\
             sip_trans_def udp\n\
             net_interface 127.0.0.1\n\
             audio_source aufile,{wav}\n\
             audio_player aubridge,e2e\n\
             audio_alert aubridge,e2e\n\
             audio_srate 16000\n\
             audio_channels 1\n\
             rtp_ports {rtp_lo}-{rtp_hi}\n\
             module_path /usr/lib/baresip/modules\n\
             {modules}\
             module aufile.so\n\
             module aubridge.so\n\
             module_app account.so\n\
             module_app menu.so\n\
             module_app ctrl_tcp.so\n\
             ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n\
             {extra_config}",
            wav = wav.display(),
            rtp_hi = rtp_lo + 15,
        );
        std::fs::write(dir.join("config"), config).unwrap();
        std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
        std::fs::write(dir.join("contacts"), "").unwrap();
        let log_path = dir.join("baresip.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new("baresip")
            .arg("-f")
            .arg(dir)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start baresip");
        let deadline = Instant::now() + Duration::from_secs(10);
        let ctrl = loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", ctrl_port)).await {
                break s;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("baresip exited ({status}):\n{}", read_text(&log_path));
            }
            assert!(
                Instant::now() < deadline,
                "baresip ctrl_tcp not up within 10 s:\n{}",
                read_text(&log_path)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Baresip {
            child,
            ctrl,
            buf: Vec::new(),
            dir: dir.to_path_buf(),
            sip_port,
            rtp_ports: (rtp_lo, rtp_lo + 15),
            events: Vec::new(),
            log_path,
        }
    }

    /// baresip's output so far.
    pub fn log(&self) -> String {
        read_text(&self.log_path)
    }

    /// Reads one netstring message (bounded by `limit`).
    async fn read_message(&mut self, limit: Duration) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(colon) = self.buf.iter().position(|&b| b == b':') {
                let len: usize = std::str::from_utf8(&self.buf[..colon])
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or_else(|| {
                        panic!(
                            "ctrl_tcp: bad netstring {:?}",
                            String::from_utf8_lossy(&self.buf)
                        )
                    });
                if self.buf.len() > colon + len + 1 {
                    let msg = self.buf[colon + 1..colon + 1 + len].to_vec();
                    self.buf.drain(..colon + len + 2);
                    return serde_json::from_slice(&msg).ok();
                }
            }
            let mut chunk = [0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.ctrl.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command and waits (≤ 5 s) for its response; events read meanwhile are kept.
    pub async fn command(&mut self, command: &str, params: &str) -> Value {
        let token = unique("tok");
        let body = json!({"command": command, "params": params, "token": token}).to_string();
        let frame = format!("{}:{},", body.len(), body);
        self.ctrl
            .write_all(frame.as_bytes())
            .await
            .expect("write to ctrl_tcp");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_message(left).await {
                Some(msg) if msg["response"] == true && msg["token"] == token.as_str() => {
                    return msg
                }
                Some(msg) => self.events.push(msg),
                None => break,
            }
        }
        panic!(
            "baresip: no response to {command} {params}:\n{}",
            self.log()
        );
    }

    /// Dials `target` and waits (≤ 10 s) until the call is established.
    pub async fn dial(&mut self, target: &str) {
        let resp = self.command("dial", target).await;
        assert_eq!(resp["ok"], true, "baresip dial {target}: {resp}");
        let established = self
            .wait_event("CALL_ESTABLISHED", Duration::from_secs(10))
            .await;
        assert!(
            established.is_some(),
            "the call to {target} was not established; baresip events: {:?}\n{}",
            self.events,
            self.log()
        );
    }

    /// Hangs up and waits (≤ 5 s) until baresip sees the call closed.
    pub async fn hang_up(&mut self) {
        let resp = self.command("hangup", "").await;
        assert_eq!(resp["ok"], true, "baresip hangup: {resp}");
        let closed = self.wait_event("CALL_CLOSED", Duration::from_secs(5)).await;
        assert!(
            closed.is_some(),
            "baresip did not see the call close: {:?}",
            self.events
        );
    }

    /// Waits for an event of `kind` (e.g. `CALL_ESTABLISHED`), also checking the ones
    /// already received. Returns `None` after `limit`.
    pub async fn wait_event(&mut self, kind: &str, limit: Duration) -> Option<Value> {
        if let Some(e) = self.events.iter().find(|e| e["type"] == kind) {
            return Some(e.clone());
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self.read_message(left).await?;
            let hit = msg["type"] == kind;
            self.events.push(msg.clone());
            if hit {
                return Some(msg);
            }
        }
        None
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        print_log_if_failing("baresip log", &self.log());
    }
}
