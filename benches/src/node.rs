//! A skuld node started by the load generator (`--spawn-node`), and the
//! node's peak memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `target/release/skuld` of this workspace.
pub fn default_binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/skuld")
}

/// A running `skuld serve` in its own temporary data directory. Dropping it
/// sends SIGTERM and waits (then SIGKILL after 30 s).
pub struct SpawnedNode {
    child: Child,
    dir: tempfile::TempDir,
    pub grpc: String,
    pub http: String,
}

impl SpawnedNode {
    /// Starts the node, waits for its ports file and for `/readyz` to
    /// answer 200.
    pub async fn start(binary: &Path, extra_args: &[String]) -> anyhow::Result<Self> {
        if !binary.exists() {
            bail!(
                "{} is missing; build it with `cargo build --release -p skuld-node`",
                binary.display()
            );
        }
        // Under target/, not /tmp: the data dir should sit on the same kind
        // of disk as a real node's (tmpfs would make fsync free).
        let parent = binary
            .parent()
            .and_then(Path::parent)
            .map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = tempfile::Builder::new()
            .prefix("skuld-load-node-")
            .tempdir_in(&parent)
            .or_else(|_| {
                tempfile::Builder::new()
                    .prefix("skuld-load-node-")
                    .tempdir()
            })
            .context("cannot create the node's temp dir")?;
        let ports = dir.path().join("ports.json");
        let log = std::fs::File::create(dir.path().join("node.log"))?;
        let child = Command::new(binary)
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .args(["--log-filter", "warn"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--ports-file")
            .arg(&ports)
            .args(extra_args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut node = Self {
            child,
            dir,
            grpc: String::new(),
            http: String::new(),
        };
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Some(status) = node.exited() {
                bail!(
                    "skuld exited while starting ({status}); its log:\n{}",
                    node.log_tail(30)
                );
            }
            if let Ok(text) = std::fs::read_to_string(&ports) {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                    node.grpc = value["grpc"].as_str().unwrap_or_default().to_owned();
                    node.http = value["http"].as_str().unwrap_or_default().to_owned();
                    if !node.grpc.is_empty() && !node.http.is_empty() {
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("skuld wrote no ports file within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            if let Some(status) = node.exited() {
                bail!("skuld exited ({status}); its log:\n{}", node.log_tail(30));
            }
            if http_status(&node.http, "/readyz").await.ok() == Some(200) {
                break;
            }
            if Instant::now() > deadline {
                bail!("skuld at {} was not ready within 60 s", node.http);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "spawned skuld pid {} (grpc {}, http {}, data {}) ready in {:.1}s",
            node.pid(),
            node.grpc,
            node.http,
            node.dir.path().display(),
            started.elapsed().as_secs_f64()
        );
        Ok(node)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status when the node is no longer running.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then wait for the exit (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        // No libc here (unsafe is forbidden in the workspace): kill(1).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for SpawnedNode {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(30));
    }
}

/// A plain HTTP/1.1 GET over TCP; returns the status code.
pub async fn http_status(address: &str, path: &str) -> anyhow::Result<u16> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(2), request)
        .await
        .context("HTTP request timed out")??;
    parse_status_line(&response).context("not an HTTP response")
}

fn parse_status_line(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The peak resident set size (VmHWM) of process `pid`, in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    vm_hwm_mib(&status)
}

fn vm_hwm_mib(status: &str) -> Option<f64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system) process `pid` has used so far, in seconds;
/// `None` when it cannot be read (not Linux, process gone).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_seconds_of(&stat)
}

/// CPU time this process (the generator) has used so far, in seconds.
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds(std::process::id())
}

fn cpu_seconds_of(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may hold spaces; the fields
    // after it start with the state (field 3); utime and stime are fields
    // 14 and 15, in clock ticks of USER_HZ, which Linux fixes at 100.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_and_vm_hwm() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            Some(200)
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"garbage"), None);
        let status = "Name:\tskuld\nVmPeak:\t  900 kB\nVmHWM:\t  524288 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(vm_hwm_mib(status), Some(512.0));
    }

    #[test]
    fn cpu_time_from_stat_even_with_spaces_in_the_name() {
        let stat =
            "4242 (tokio rt) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 9 0 1 2 3";
        assert_eq!(cpu_seconds_of(stat), Some(4.0));
        assert_eq!(cpu_seconds_of("garbage"), None);
        assert!(own_cpu_seconds().is_some());
    }
}
