//! Capturing UDP on the loopback interface with tcpdump (root), so a test sees exactly the
//! packets that went to and came back from a peer's media ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::pcap::{read_udp, UdpPacket};
use super::{require_tool, unique};

/// A running tcpdump writing to a file.
pub struct Capture {
    child: Child,
    pub path: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i lo` on UDP to or from `ports` (inclusive), writing into `dir`, and
    /// waits (at most 10 s) until it is listening.
    pub async fn udp(dir: &Path, ports: (u16, u16)) -> Capture {
        require_tool("tcpdump");
        let path = dir.join(format!("{}.pcap", unique("capture-")));
        let filter = format!("udp and portrange {}-{}", ports.0, ports.1);
        let mut child = Command::new("tcpdump")
            .args(["-i", "lo", "-n", "-U", "-s", "0", "-w"])
            .arg(&path)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start tcpdump");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            let mut seen = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains("listening on") {
                    return Ok(());
                }
            }
            Err(seen)
        })
        .await;
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(seen)) => panic!("tcpdump did not start (needs root): {seen}"),
            Err(_) => panic!("tcpdump not listening within 10 s"),
        }
        // Keep draining stderr so tcpdump never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Capture { child, path }
    }

    /// Stops tcpdump (SIGINT, so it flushes) and returns the UDP datagrams it saw.
    pub async fn stop(mut self) -> Vec<UdpPacket> {
        // Let the last packets in flight land.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let bytes = std::fs::read(&self.path)
            .unwrap_or_else(|e| panic!("read capture {}: {e}", self.path.display()));
        read_udp(&bytes).unwrap_or_else(|e| panic!("{}: {e}", self.path.display()))
    }
}
