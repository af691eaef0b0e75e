//! Test harness: starts real `skuld` nodes on free loopback ports, talks to
//! them over real gRPC, and kills, terminates and restarts them.
//!
//! Each node binds `127.0.0.1:0` and reports its ports through
//! `--ports-file`, so tests run in parallel without racing for ports. A
//! node's log is kept in its temp dir; `TestNode` prints where it is when a
//! test panics with the node still up, and kills the process on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_proto::v1::returns_service_client::ReturnsServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// The `skuld` binary: `SKULD_BIN`, else `target/debug/skuld` of this
/// workspace (honouring `CARGO_TARGET_DIR`).
pub fn skuld_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("SKULD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("tests crate has no parent directory")?
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace.join("target"));
    let binary = target.join("debug").join("skuld");
    if !binary.exists() {
        bail!(
            "{} is missing; run `cargo build -p skuld-node` first (scripts/test does)",
            binary.display()
        );
    }
    Ok(binary)
}

/// How to start a node beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl NodeOptions {
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_owned());
        self.args.push(value.to_string());
        self
    }

    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.env.push((name.to_owned(), value.to_string()));
        self
    }
}

/// A running `skuld serve` process.
pub struct TestNode {
    child: Option<Child>,
    data_dir: PathBuf,
    log_path: PathBuf,
    options: NodeOptions,
    pub grpc_addr: String,
    pub http_addr: String,
    starts: u32,
}

impl TestNode {
    /// Starts a node on `data_dir` and waits until /readyz answers 200.
    pub async fn start(data_dir: &Path, options: NodeOptions) -> anyhow::Result<Self> {
        let mut node = Self {
            child: None,
            data_dir: data_dir.to_path_buf(),
            log_path: data_dir.with_extension("log"),
            options,
            grpc_addr: String::new(),
            http_addr: String::new(),
            starts: 0,
        };
        node.spawn().await?;
        Ok(node)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let ports_file = self
            .data_dir
            .with_extension(format!("ports{}", self.starts));
        let _ = std::fs::remove_file(&ports_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .context("cannot open the node log")?;
        let mut command = Command::new(skuld_binary()?);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .arg("--ports-file")
            .arg(&ports_file)
            .args(&self.options.args)
            .env("SKULD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (name, value) in &self.options.env {
            command.env(name, value);
        }
        self.child = Some(command.spawn().context("cannot start skuld")?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file) {
                let ports: serde_json::Value = serde_json::from_str(&text)?;
                self.grpc_addr = ports["grpc"].as_str().unwrap_or_default().to_owned();
                self.http_addr = ports["http"].as_str().unwrap_or_default().to_owned();
                if matches!(self.http_get("/readyz").await, Ok((200, _))) {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "skuld exited with {status} while starting; log:\n{}",
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("skuld did not become ready in 30 s; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.grpc_addr))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?)
    }

    pub async fn inventory(&self) -> anyhow::Result<InventoryServiceClient<Channel>> {
        Ok(InventoryServiceClient::new(self.channel().await?))
    }

    pub async fn returns(&self) -> anyhow::Result<ReturnsServiceClient<Channel>> {
        Ok(ReturnsServiceClient::new(self.channel().await?))
    }

    /// A plain HTTP/1.1 GET against the node's HTTP port.
    pub async fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(&self.http_addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.http_addr
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .context("malformed HTTP response")?;
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        Ok((status, body))
    }

    /// SIGKILL: no drain, no flush.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Waits for the process to exit by itself (e.g. after a failpoint abort).
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Ok(status);
                }
            } else {
                bail!("the node is not running");
            }
            if Instant::now() > deadline {
                bail!("the node did not exit within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.pid().context("the node is not running")?;
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed");
        }
        self.wait_exit(Duration::from_secs(30)).await
    }

    /// Starts the node again on the same data dir, with new options.
    pub async fn restart_with(&mut self, options: NodeOptions) -> anyhow::Result<()> {
        self.kill9()?;
        self.options = options;
        self.spawn().await
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        self.spawn().await
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("skuld log kept at {}", self.log_path.display());
        }
        let _ = self.kill9();
    }
}

/// Request builders shared by the tests.
pub mod requests {
    use skuld_proto::v1 as pb;

    pub fn key(tenant: &str, sku: &str, location: &str) -> pb::PositionKey {
        pb::PositionKey {
            tenant: tenant.into(),
            sku: sku.into(),
            location: location.into(),
        }
    }

    pub fn header(key: &pb::PositionKey, idempotency_key: &str) -> Option<pb::MutationHeader> {
        Some(pb::MutationHeader {
            key: Some(key.clone()),
            idempotency_key: idempotency_key.into(),
            expected_version: None,
        })
    }

    pub fn receive(
        key: &pb::PositionKey,
        idempotency_key: &str,
        quantity: i64,
    ) -> pb::AdjustRequest {
        pb::AdjustRequest {
            header: header(key, idempotency_key),
            bucket: pb::Bucket::Available.into(),
            delta: quantity,
            reason: pb::AdjustmentReason::Receipt.into(),
            change_from: None,
            reference_document_uri: String::new(),
        }
    }

    pub fn reserve(
        key: &pb::PositionKey,
        idempotency_key: &str,
        quantity: i64,
        ttl_seconds: i64,
    ) -> pb::ReserveRequest {
        pb::ReserveRequest {
            header: header(key, idempotency_key),
            reservation_id: String::new(),
            quantity,
            owner: Some(pb::ReservationOwner {
                r#type: pb::OwnerType::Cart.into(),
                id: "cart".into(),
                line_id: String::new(),
            }),
            channel: "web".into(),
            ttl_seconds,
            allow_partial: false,
        }
    }

    pub fn get(key: &pb::PositionKey) -> pb::GetPositionRequest {
        pb::GetPositionRequest {
            key: Some(key.clone()),
            ..pb::GetPositionRequest::default()
        }
    }
}
