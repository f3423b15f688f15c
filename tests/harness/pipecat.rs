//! A real Pipecat bot as the agent: `tests/pipecat/echo_bot.py`, written as for Twilio
//! Media Streams, run with python3 (`pipecat-ai` from `tests/pipecat/requirements.txt`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::ports::free_tcp_port;
use super::{print_log_if_failing, read_text, require_tool, tests_path};

/// The Pipecat echo bot, killed on drop; its log is printed when the test fails.
pub struct PipecatBot {
    child: Child,
    port: u16,
    log_path: PathBuf,
}

impl PipecatBot {
    /// Starts `echo_bot.py` with extra `args` (`["goodbye"]`) and waits for its ready line.
    pub async fn start(dir: &Path, args: &[&str]) -> PipecatBot {
        require_tool("python3");
        let probe = std::process::Command::new("python3")
            .args([
                "-c",
                "import importlib.metadata as m; import pipecat, fastapi, uvicorn; \
                 print(m.version('pipecat-ai'))",
            ])
            .output()
            .expect("run python3");
        assert!(
            probe.status.success(),
            "pipecat-ai is not installed for python3; install tests/pipecat/requirements.txt \
             (`python3 -m pip install -r tests/pipecat/requirements.txt`; scripts/test.sh does \
             it):\n{}",
            String::from_utf8_lossy(&probe.stderr)
        );
        eprintln!(
            "pipecat-ai {}",
            String::from_utf8_lossy(&probe.stdout).trim()
        );

        let port = free_tcp_port();
        let log_path = dir.join("pipecat.log");
        let log = std::fs::File::create(&log_path).expect("pipecat log");
        let mut child = Command::new("python3")
            .arg(tests_path("pipecat/echo_bot.py"))
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the Pipecat bot");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Importing Pipecat takes a few seconds (numba, onnxruntime); more on a busy machine.
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("echo_bot ready") {
                    return true;
                }
            }
            false
        })
        .await;
        let bot = PipecatBot {
            child,
            port,
            log_path,
        };
        assert!(
            matches!(ready, Ok(true)),
            "the Pipecat bot did not print its ready line within 60 s; its log:\n{}",
            bot.log()
        );
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        bot
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn log(&self) -> String {
        read_text(&self.log_path)
    }

    /// The bot's pipeline ended (within 10 s) and it logged no error.
    pub async fn assert_finished_cleanly(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains("pipeline finished") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = self.log();
        assert!(
            log.contains("pipeline finished"),
            "the Pipecat pipeline should finish once the socket closes; its log:\n{log}"
        );
        assert!(
            !log.contains("| ERROR") && !log.contains("Traceback"),
            "the Pipecat bot logged an error; its log:\n{log}"
        );
    }
}

impl Drop for PipecatBot {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        print_log_if_failing("Pipecat bot log", &self.log());
    }
}
