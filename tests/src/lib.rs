//! Test harness: starts real `skuld` nodes on free loopback ports, talks to
//! them over real gRPC, and kills, terminates and restarts them.
//!
//! Each node binds `127.0.0.1:0` and reports its ports through
//! `--ports-file`, so tests run in parallel without racing for ports. A
//! node's log sits next to its data dir, in the test's temp dir. When a test
//! panics, `TestNode` prints where the log is and its last lines, and
//! `TestDir` keeps the whole temp dir (data and logs) instead of deleting it.
//! Dropping a `TestNode` kills its process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_proto::v1::returns_service_client::ReturnsServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

pub mod browser;
pub mod certs;
pub mod cluster;
pub mod events;
pub mod metrics;
pub mod nemesis;
pub mod otlp;
pub mod proxy;
pub mod returns;
pub mod services;
pub mod store_contract;
pub mod tokens;
pub mod workload;

/// How long a node may take to write its ports file and answer /readyz 200.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to drain and exit after SIGTERM.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one plain HTTP request to a node.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many log lines a failing test prints.
pub(crate) const LOG_TAIL_LINES: usize = 60;

/// The node binary the tests start: `SKULD_BIN` when set, else the
/// `skuld-e2e` binary of this crate, which Cargo builds beside the test
/// executables (`target/<profile>/`, one level above `deps/`).
pub fn skuld_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("SKULD_BIN") {
        let binary = PathBuf::from(path);
        if !binary.exists() {
            bail!("SKULD_BIN={} does not exist", binary.display());
        }
        return Ok(binary);
    }
    let test_executable = std::env::current_exe().context("cannot find the test executable")?;
    let profile_dir = test_executable
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test executable has no profile directory")?;
    let binary = profile_dir.join("skuld-e2e");
    if !binary.exists() {
        bail!(
            "{} is missing: run the end-to-end tests with `cargo test -p skuld-tests` (Cargo builds it)",
            binary.display()
        );
    }
    Ok(binary)
}

/// Debian's libfaketime (`scripts/setup --cluster` installs it), to run a
/// node with its wall clock moved.
pub fn libfaketime() -> anyhow::Result<PathBuf> {
    std::fs::read_dir("/usr/lib")?
        .filter_map(Result::ok)
        .map(|dir| dir.path().join("faketime/libfaketime.so.1"))
        .find(|path| path.exists())
        .context("libfaketime is missing: run scripts/setup --cluster")
}

/// Fails unless the binary was built with the `failpoints` feature, which a
/// test that injects faults needs (`scripts/test` builds it so).
fn require_failpoints() -> anyhow::Result<()> {
    let binary = skuld_binary()?;
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !String::from_utf8_lossy(&version.stdout).contains("(failpoints)") {
        bail!(
            "{} was built without failpoints, and this test injects faults \
             (the skuld-e2e binary Cargo builds for the tests has them)",
            binary.display()
        );
    }
    Ok(())
}

/// A temp dir for one test that is kept, not deleted, when the test panics,
/// so the node's data and log can be inspected.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("skuld-test-")
            .tempdir()
            .context("cannot create a temp dir")?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The data dir of node `name` inside this temp dir (created by the node).
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("test dir kept at {}", self.dir.path().display());
        }
    }
}

/// How to start a node beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Starting waits for /healthz only, not /readyz (a node expected to
    /// stay unready).
    pub unready: bool,
}

impl NodeOptions {
    /// Adds `flag value` to the command line.
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_owned());
        self.args.push(value.to_string());
        self
    }

    /// Sets an environment variable for the node.
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.env.push((name.to_owned(), value.to_string()));
        self
    }

    /// The node is expected not to become ready: starting waits for it to
    /// answer /healthz only.
    pub fn unready(mut self) -> Self {
        self.unready = true;
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
    /// `127.0.0.1:PORT` of the peer listener (cluster mode), else empty.
    pub peer_addr: String,
    starts: u32,
}

impl TestNode {
    /// Starts a node on `data_dir` and waits until /readyz answers 200.
    /// The log goes to `<data_dir>.log`, next to the data dir.
    pub async fn start(data_dir: &Path, options: NodeOptions) -> anyhow::Result<Self> {
        let mut node = Self {
            child: None,
            data_dir: data_dir.to_path_buf(),
            log_path: data_dir.with_extension("log"),
            options,
            grpc_addr: String::new(),
            http_addr: String::new(),
            peer_addr: String::new(),
            starts: 0,
        };
        node.spawn().await?;
        Ok(node)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        if self
            .options
            .env
            .iter()
            .any(|(name, _)| name.starts_with("SKULD_FAILPOINT_"))
        {
            require_failpoints()?;
        }
        self.starts += 1;
        let ports_file = self
            .data_dir
            .with_extension(format!("ports{}", self.starts));
        let _ = std::fs::remove_file(&ports_file);
        self.grpc_addr.clear();
        self.http_addr.clear();
        let binary = skuld_binary()?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("cannot open the node log {}", self.log_path.display()))?;
        {
            use std::io::Write as _;
            writeln!(
                log,
                "==== test harness: start #{} of {} {:?} env {:?}",
                self.starts,
                binary.display(),
                self.options.args,
                self.options.env
            )?;
        }
        let mut command = Command::new(binary);
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
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_readyz = None;
        loop {
            if self.grpc_addr.is_empty() {
                if let Ok(text) = std::fs::read_to_string(&ports_file) {
                    let ports: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("malformed ports file: {text:?}"))?;
                    let grpc = ports["grpc"].as_str().unwrap_or_default();
                    let http = ports["http"].as_str().unwrap_or_default();
                    if grpc.is_empty() || http.is_empty() {
                        bail!("ports file without grpc and http addresses: {text:?}");
                    }
                    self.grpc_addr = grpc.to_owned();
                    self.http_addr = http.to_owned();
                    self.peer_addr = ports["peer"].as_str().unwrap_or_default().to_owned();
                }
            }
            if !self.http_addr.is_empty() {
                let probe = if self.options.unready {
                    "/healthz"
                } else {
                    "/readyz"
                };
                match self.http_get(probe).await {
                    Ok((200, _)) => return Ok(()),
                    other => last_readyz = Some(format!("{other:?}")),
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "skuld exited with {status} while starting; log {}:\n{}",
                        self.log_path.display(),
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                let _ = self.kill9();
                bail!(
                    "skuld did not become ready in {START_TIMEOUT:?} (ports file {}, last /readyz {}); log {}:\n{}",
                    if self.grpc_addr.is_empty() { "missing" } else { "written" },
                    last_readyz.unwrap_or_else(|| "not tried".into()),
                    self.log_path.display(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node's log so far (every start appends to it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `127.0.0.1:PORT` of the gRPC listener.
    pub fn grpc_addr(&self) -> &str {
        &self.grpc_addr
    }

    /// `127.0.0.1:PORT` of the HTTP listener.
    pub fn http_addr(&self) -> &str {
        &self.http_addr
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// A new connection to the node's gRPC port.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Channel::from_shared(format!("http://{}", self.grpc_addr))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to skuld at {}", self.grpc_addr))
    }

    /// A connected inventory client.
    pub async fn client(&self) -> anyhow::Result<InventoryServiceClient<Channel>> {
        Ok(InventoryServiceClient::new(self.channel().await?))
    }

    /// Same as [`TestNode::client`].
    pub async fn inventory(&self) -> anyhow::Result<InventoryServiceClient<Channel>> {
        self.client().await
    }

    pub async fn returns(&self) -> anyhow::Result<ReturnsServiceClient<Channel>> {
        Ok(ReturnsServiceClient::new(self.channel().await?))
    }

    /// A plain HTTP/1.1 GET against the node's HTTP port: (status, body).
    pub async fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        if self.http_addr.is_empty() {
            bail!("the node's HTTP address is not known yet");
        }
        tokio::time::timeout(HTTP_TIMEOUT, http_get(&self.http_addr, path))
            .await
            .with_context(|| format!("GET {path} took more than {HTTP_TIMEOUT:?}"))?
    }

    /// SIGKILL: no drain, no flush. Waits until the process is gone.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // Fails only when the process already exited; wait() reaps it.
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// Waits for the process to exit by itself (e.g. after a failpoint abort).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
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

    /// SIGTERM, then waits for the process to exit (it should drain and exit
    /// 0). After [`TERMINATE_TIMEOUT`] it is killed and this fails.
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let pid = self.pid().context("the node is not running")?;
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .context("cannot run `kill`")?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed");
        }
        match self.wait_exit(TERMINATE_TIMEOUT).await {
            Ok(status) => Ok(status),
            Err(error) => {
                let _ = self.kill9();
                Err(error.context(format!(
                    "after SIGTERM; killed it. log {}",
                    self.log_path.display()
                )))
            }
        }
    }

    /// Starts the node again on the same data dir, with new options (kills it
    /// first if it still runs).
    pub async fn restart_with(&mut self, options: NodeOptions) -> anyhow::Result<()> {
        self.kill9()?;
        self.options = options;
        self.spawn().await
    }

    /// Starts the node again on the same data dir (kills it first if it
    /// still runs).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        self.spawn().await
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "skuld log at {} (kept when the test dir is a TestDir); last lines:\n{}",
                self.log_path.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
    }
}

pub(crate) async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .context("HTTP response without the end of its head")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("malformed HTTP status line: {head:?}"))?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|window| window == b"\r\n")
            .context("chunk size line without CRLF")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

/// The position with every active reservation, paging through
/// GetPosition 1000 at a time. Fails when a page changes under it (the
/// version moved) or the pages do not add up to `active_reservations`.
pub async fn position_with_all_reservations(
    client: &mut InventoryServiceClient<Channel>,
    key: &skuld_proto::v1::PositionKey,
) -> anyhow::Result<(skuld_proto::v1::Position, Vec<skuld_proto::v1::Reservation>)> {
    let mut reservations = Vec::new();
    let mut page_token = String::new();
    let mut first: Option<skuld_proto::v1::Position> = None;
    loop {
        let request = skuld_proto::v1::GetPositionRequest {
            key: Some(key.clone()),
            reservations_page_size: 1_000,
            reservations_page_token: page_token.clone(),
        };
        let mut page = client
            .get_position(request)
            .await?
            .into_inner()
            .position
            .context("GetPosition reply without a position")?;
        if let Some(first) = &first {
            if first.version != page.version {
                bail!(
                    "the position changed while paging ({} -> {})",
                    first.version,
                    page.version
                );
            }
        }
        reservations.append(&mut page.reservations);
        let next = std::mem::take(&mut page.next_reservations_page_token);
        if first.is_none() {
            first = Some(page);
        }
        if next.is_empty() {
            break;
        }
        page_token = next;
    }
    let position = first.context("no page")?;
    if position.active_reservations as usize != reservations.len() {
        bail!(
            "active_reservations says {} but the pages list {}",
            position.active_reservations,
            reservations.len()
        );
    }
    Ok((position, reservations))
}

/// Checks the bucket invariants of a position without backorders: no bucket
/// is negative and on_hand is the sum of the physical buckets.
pub fn check_buckets(buckets: &skuld_proto::v1::Buckets) -> anyhow::Result<()> {
    let named = buckets.named();
    if let Some((name, value)) = named.iter().find(|(_, value)| *value < 0) {
        bail!("{name} is negative ({value}): {buckets:?}");
    }
    let physical = buckets.available
        + buckets.reserved
        + buckets.committed
        + buckets.damaged
        + buckets.quality_control
        + buckets.safety_stock;
    if buckets.on_hand != physical {
        bail!(
            "on_hand {} != sum of the physical buckets {physical}: {buckets:?}",
            buckets.on_hand
        );
    }
    Ok(())
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

    /// A mutation header with an idempotency key and no expected version.
    pub fn header(key: &pb::PositionKey, idempotency_key: &str) -> Option<pb::MutationHeader> {
        Some(pb::MutationHeader {
            key: Some(key.clone()),
            idempotency_key: idempotency_key.into(),
            expected_version: None,
        })
    }

    /// A mutation header that applies only at `expected_version`.
    pub fn header_at(
        key: &pb::PositionKey,
        idempotency_key: &str,
        expected_version: u64,
    ) -> Option<pb::MutationHeader> {
        Some(pb::MutationHeader {
            key: Some(key.clone()),
            idempotency_key: idempotency_key.into(),
            expected_version: Some(expected_version),
        })
    }

    /// Goods received: `quantity` more available (and on hand).
    pub fn receive(
        key: &pb::PositionKey,
        idempotency_key: &str,
        quantity: i64,
    ) -> pb::AdjustRequest {
        adjust(key, idempotency_key, pb::Bucket::Available, quantity)
    }

    pub fn adjust(
        key: &pb::PositionKey,
        idempotency_key: &str,
        bucket: pb::Bucket,
        delta: i64,
    ) -> pb::AdjustRequest {
        pb::AdjustRequest {
            header: header(key, idempotency_key),
            bucket: bucket.into(),
            delta,
            reason: pb::AdjustmentReason::Receipt.into(),
            change_from: None,
            reference_document_uri: String::new(),
        }
    }

    /// A cart reservation; its id defaults to the idempotency key.
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

    /// Commits `quantity` (0: all it still holds) of a reservation to an order.
    pub fn commit(
        key: &pb::PositionKey,
        idempotency_key: &str,
        reservation_id: &str,
        quantity: i64,
        order_ref: &str,
    ) -> pb::CommitReservationRequest {
        pb::CommitReservationRequest {
            header: header(key, idempotency_key),
            reservation_id: reservation_id.into(),
            quantity,
            order_ref: order_ref.into(),
        }
    }

    /// Ships `quantity` of an order's commitment.
    pub fn fulfill(
        key: &pb::PositionKey,
        idempotency_key: &str,
        order_ref: &str,
        quantity: i64,
    ) -> pb::FulfillRequest {
        pb::FulfillRequest {
            header: header(key, idempotency_key),
            order_ref: order_ref.into(),
            quantity,
        }
    }

    pub fn release(
        key: &pb::PositionKey,
        idempotency_key: &str,
        reservation_id: &str,
    ) -> pb::ReleaseReservationRequest {
        pb::ReleaseReservationRequest {
            header: header(key, idempotency_key),
            reservation_id: reservation_id.into(),
        }
    }

    /// The first page (100) of the position's active reservations.
    pub fn get(key: &pb::PositionKey) -> pb::GetPositionRequest {
        pb::GetPositionRequest {
            key: Some(key.clone()),
            ..pb::GetPositionRequest::default()
        }
    }
}
