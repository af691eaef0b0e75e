//! Real etcd, PostgreSQL and nats-server processes for tests, started by
//! the tests themselves from the Debian packages `scripts/setup` installs.
//!
//! Each server listens on loopback ports picked free just before it starts
//! (bind `127.0.0.1:0`, read the port, let it go), so parallel tests and
//! parallel test runs never share one; when another process grabs a port in
//! that short window the start is retried on new ports. Dropping a server
//! stops it, so no process outlives its test. The servers stay in the
//! test's process group: a Ctrl-C of `cargo test`, which skips every
//! `Drop`, reaches them too.
//!
//! Starting, killing and restarting are blocking calls (they wait for the
//! server, at most tens of seconds) so they can be used from sync and async
//! tests alike; the waits that need async I/O run on a private runtime.

use std::future::Future;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::certs::CertFiles;

/// How long etcd may take to answer `GET /health` with `"health":"true"`.
pub const ETCD_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long PostgreSQL may take to accept connections (crash recovery
/// included).
pub const POSTGRES_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts retried on new ports when the chosen ones were taken meanwhile.
const START_ATTEMPTS: u32 = 3;
/// How long a server may take to exit after it was told to stop at once.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports::<1>()?[0])
}

/// `N` distinct free loopback ports: all listeners are held until every
/// port is read, so the same port cannot come back twice.
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot bind a free loopback port")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Runs `future` to completion on a runtime of its own, on a thread of its
/// own, so blocking callers work inside a test's runtime as well as outside.
fn block_on<F>(future: F) -> anyhow::Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot build a runtime")?;
                Ok(runtime.block_on(future))
            })
            .join()
            .map_err(|_| anyhow!("the waiting thread panicked"))?
    })
}

/// The last lines of a server log, for error messages.
fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(crate::LOG_TAIL_LINES)..].join("\n")
}

/// What a log says after `offset` (this start's part of an appended log).
fn log_since(path: &Path, offset: u64) -> String {
    let log = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(log.len());
    String::from_utf8_lossy(&log[start..]).into_owned()
}

fn open_log(path: &Path) -> anyhow::Result<(std::fs::File, u64)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the log {}", path.display()))?;
    let offset = log.metadata()?.len();
    Ok((log, offset))
}

/// How one attempt to start a server ended.
enum Started {
    Ready,
    /// It exited because one of its ports was taken: worth new ports.
    PortTaken(anyhow::Error),
}

/// Waits until `ready` succeeds (started), the child exits (a failed start;
/// `PortTaken` when its log since `offset` mentions `port_taken`), or
/// `timeout` passes (an error; the caller stops the child).
fn await_start<F, Fut>(
    child: &mut Option<Child>,
    what: &str,
    timeout: Duration,
    log_path: &Path,
    offset: u64,
    port_taken: &str,
    mut ready: F,
) -> anyhow::Result<Started>
where
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let waited = block_on(async {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(running) = child.as_mut() {
                if let Some(status) = running.try_wait()? {
                    *child = None;
                    return Ok(Err(status));
                }
            }
            let last = match ready().await {
                Ok(()) => return Ok(Ok(())),
                Err(last) => last,
            };
            if Instant::now() > deadline {
                return Err(anyhow!("{what} not ready in {timeout:?} ({last})"));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    })?;
    match waited {
        Ok(Ok(())) => Ok(Started::Ready),
        Ok(Err(status)) => {
            let error = anyhow!(
                "{what} exited with {status} while starting; log {}:\n{}",
                log_path.display(),
                log_tail(log_path)
            );
            if log_since(log_path, offset).contains(port_taken) {
                Ok(Started::PortTaken(error))
            } else {
                Err(error)
            }
        }
        Err(error) => Err(error.context(format!(
            "log {}:\n{}",
            log_path.display(),
            log_tail(log_path)
        ))),
    }
}

/// SIGKILL, then reaps the process.
fn kill9(child: &mut Option<Child>) -> anyhow::Result<()> {
    if let Some(mut process) = child.take() {
        // Fails only when the process already exited; wait() reaps it.
        let _ = process.kill();
        process.wait()?;
    }
    Ok(())
}

/// Sends `signal` and waits up to [`STOP_TIMEOUT`] for the process to exit,
/// then SIGKILLs it.
fn stop(child: &mut Option<Child>, signal: &str) -> anyhow::Result<()> {
    let Some(process) = child.as_mut() else {
        return Ok(());
    };
    if process.try_wait()?.is_none() {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(process.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while process.try_wait()?.is_none() {
            if Instant::now() > deadline {
                return kill9(child);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    *child = None;
    Ok(())
}

pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The etcd binary: `SKULD_ETCD_BIN`, else `etcd` on `PATH`, else
/// `/usr/bin/etcd`.
pub fn etcd_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("SKULD_ETCD_BIN") {
        let binary = PathBuf::from(path);
        if !binary.is_file() {
            bail!("SKULD_ETCD_BIN={} does not exist", binary.display());
        }
        return Ok(binary);
    }
    find_on_path("etcd")
        .or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|path| path.is_file()))
        .context("etcd not found: run scripts/setup (installs the etcd-server package)")
}

/// TLS of a test etcd's client listener: the certificate it serves, and
/// the CA every client must present a certificate of (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub server: CertFiles,
    pub client_ca: PathBuf,
}

/// A single-member etcd on loopback ports, with its data and log in the
/// directory given to [`Etcd::start`].
pub struct Etcd {
    child: Option<Child>,
    binary: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// With TLS on the client port, a plaintext listener for `/health`
    /// (what a probe without a certificate reads).
    metrics_port: u16,
    tls: Option<EtcdTls>,
}

impl Etcd {
    /// Starts etcd with its data in `dir/etcd-data` and its log in
    /// `dir/etcd.log`, and waits until it reports itself healthy.
    pub fn start(dir: &Path) -> anyhow::Result<Etcd> {
        Self::start_with(dir, None)
    }

    /// [`Etcd::start`] with the client port on TLS and client certificates
    /// required (`https://` endpoint), health on a plaintext metrics port.
    pub fn start_tls(dir: &Path, tls: EtcdTls) -> anyhow::Result<Etcd> {
        Self::start_with(dir, Some(tls))
    }

    fn start_with(dir: &Path, tls: Option<EtcdTls>) -> anyhow::Result<Etcd> {
        let binary = etcd_binary()?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let data_dir = dir.join("etcd-data");
        let fresh = !data_dir.exists();
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let [client_port, peer_port, metrics_port] = free_ports::<3>()?;
            let mut etcd = Etcd {
                child: None,
                binary: binary.clone(),
                data_dir: data_dir.clone(),
                log_path: dir.join("etcd.log"),
                client_port,
                peer_port,
                metrics_port,
                tls: tls.clone(),
            };
            match etcd.spawn()? {
                Started::Ready => return Ok(etcd),
                Started::PortTaken(error) => {
                    // A member's data dir remembers its peer URL: a retry on
                    // new ports needs a new one.
                    if fresh {
                        let _ = std::fs::remove_dir_all(&data_dir);
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context(format!("etcd did not start in {START_ATTEMPTS} attempts")))
    }

    /// `http://127.0.0.1:PORT`, the client URL (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: etcd loses whatever it had not synced. Waits until it is gone.
    pub fn kill(&mut self) {
        let _ = kill9(&mut self.child);
    }

    /// Starts etcd again on the same ports and data (killing it first if it
    /// still runs) and waits until it is healthy.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match self.spawn()? {
                Started::Ready => return Ok(()),
                // Someone holds our port; it may let go soon.
                Started::PortTaken(error) => {
                    last_error = Some(error);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context("etcd did not restart on its ports"))
    }

    fn spawn(&mut self) -> anyhow::Result<Started> {
        let (log, offset) = open_log(&self.log_path)?;
        let name = "skuld-test";
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.binary);
        command
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .arg("--initial-cluster")
            .arg(format!("{name}={peer_url}"))
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", name])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let health_port = match &self.tls {
            Some(tls) => {
                command
                    .arg("--cert-file")
                    .arg(&tls.server.cert)
                    .arg("--key-file")
                    .arg(&tls.server.key)
                    .arg("--trusted-ca-file")
                    .arg(&tls.client_ca)
                    .arg("--client-cert-auth")
                    .arg("--listen-metrics-urls")
                    .arg(format!("http://127.0.0.1:{}", self.metrics_port));
                self.metrics_port
            }
            None => self.client_port,
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        let address = format!("127.0.0.1:{health_port}");
        let waited = await_start(
            &mut self.child,
            "etcd",
            ETCD_START_TIMEOUT,
            &self.log_path,
            offset,
            "address already in use",
            || async {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    crate::http_get(&address, "/health"),
                )
                .await
                {
                    Ok(Ok((200, body))) if body.contains(r#""health":"true""#) => Ok(()),
                    Ok(other) => Err(format!("last /health: {other:?}")),
                    Err(_) => Err("no /health answer in 2 s".into()),
                }
            },
        );
        let endpoint = self.endpoint();
        waited
            .inspect_err(|_| self.kill())
            .map_err(|error| error.context(format!("etcd at {endpoint}")))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "etcd log at {}; last lines:\n{}",
                self.log_path.display(),
                log_tail(&self.log_path)
            );
        }
    }
}

/// The PostgreSQL binaries: `SKULD_PG_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout).
pub fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    const MISSING: &str =
        "PostgreSQL not found: run scripts/setup (installs the postgresql package)";
    if let Ok(path) = std::env::var("SKULD_PG_BIN_DIR") {
        let dir = PathBuf::from(path);
        if !dir.join("postgres").is_file() {
            bail!(
                "SKULD_PG_BIN_DIR={} has no `postgres` binary",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql").context(MISSING)?;
    versions
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .context(MISSING)
}

/// Whether this process runs as root (effective uid 0).
fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match status.lines().find_map(|line| line.strip_prefix("Uid:")) {
        Some(uids) => uids.split_whitespace().nth(1) == Some("0"),
        None => Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| output.stdout.trim_ascii() == b"0"),
    }
}

/// `id -u postgres` or `id -g postgres`.
fn postgres_id(flag: &str) -> anyhow::Result<u32> {
    let output = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .context("cannot run `id`")?;
    if !output.status.success() {
        bail!(
            "running as root, PostgreSQL must run as the `postgres` user, which does not exist \
             (the postgresql package creates it): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("unexpected output of `id`")
}

/// A throwaway PostgreSQL server on a loopback port, its data dir and log
/// in a temp dir of its own, removed on drop (kept when a test panics).
///
/// PostgreSQL refuses to run as root; as root, its temp dir is created in
/// `/tmp` (not inside a root-only test dir) and handed to the `postgres`
/// user, and `initdb` and `postgres` run as that user. They are started
/// with their uid and gid set directly rather than through `runuser`, so
/// the child process is the postmaster itself and can be signalled.
pub struct Postgres {
    child: Option<Child>,
    bin_dir: PathBuf,
    root: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    /// The `postgres` user's (uid, gid) when this process is root.
    run_as: Option<(u32, u32)>,
    /// `ssl = on` with these files (copies the server owns), when started
    /// with [`Postgres::start_tls`].
    tls: Option<ServerTlsFiles>,
}

/// TLS of a test PostgreSQL: the certificate it serves, the CA client
/// certificates must chain to, and the roles that may connect only over
/// TLS with a client certificate whose CN is the role (`cert`
/// authentication).
#[derive(Debug, Clone)]
pub struct PostgresTls {
    pub server: CertFiles,
    pub client_ca: PathBuf,
    pub cert_roles: Vec<String>,
}

/// The server's copies of its TLS files, inside its own directory.
#[derive(Debug, Clone)]
struct ServerTlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Postgres {
    /// Creates a cluster (`initdb`) and starts a server on a free port with
    /// fsync on, and waits until it accepts connections.
    pub fn start() -> anyhow::Result<Postgres> {
        Self::start_with(None)
    }

    /// [`Postgres::start`] with `ssl = on`, and a `pg_hba.conf` that lets
    /// each of `tls.cert_roles` in only over TLS with a client certificate
    /// of `tls.client_ca` naming it (`hostssl ... cert`), rejects every
    /// other role over TCP but the `postgres` superuser (plaintext trust on
    /// loopback: the harness's own connections), and logs connections.
    pub fn start_tls(tls: &PostgresTls) -> anyhow::Result<Postgres> {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&PostgresTls>) -> anyhow::Result<Postgres> {
        let bin_dir = postgres_bin_dir()?;
        let run_as = if running_as_root() {
            Some((postgres_id("-u")?, postgres_id("-g")?))
        } else {
            None
        };
        let root = tempfile::Builder::new()
            .prefix("skuld-pg-")
            .tempdir_in("/tmp")
            .context("cannot create a temp dir in /tmp")?;
        if run_as.is_some() {
            let chowned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(root.path())
                .status()
                .context("cannot run `chown`")?;
            if !chowned.success() {
                bail!(
                    "chown -R postgres:postgres {} failed",
                    root.path().display()
                );
            }
        }
        let mut postgres = Postgres {
            child: None,
            data_dir: root.path().join("data"),
            log_path: root.path().join("postgres.log"),
            root: Some(root),
            bin_dir,
            port: 0,
            run_as,
            tls: None,
        };
        postgres.initdb()?;
        if let Some(tls) = tls {
            postgres.set_up_tls(tls)?;
        }
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            postgres.port = free_port()?;
            match postgres.spawn()? {
                Started::Ready => return Ok(postgres),
                Started::PortTaken(error) => last_error = Some(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context(format!(
                "PostgreSQL did not start in {START_ATTEMPTS} attempts"
            )))
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Creates an empty database and returns its URL.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        if name.is_empty()
            || name.len() > 63
            || !name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
        {
            bail!("database name {name:?}: use 1 to 63 ASCII letters, digits and underscores");
        }
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .with_context(|| format!("cannot connect to PostgreSQL on port {}", self.port))?;
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        drop(client);
        let _ = connection.await;
        Ok(self.url(name))
    }

    /// Stops the server the way a crash would: immediate shutdown (SIGQUIT:
    /// every backend quits at once, nothing is checkpointed, the next start
    /// replays the WAL), SIGKILL if that takes too long. Waits until it is
    /// gone.
    pub fn kill(&mut self) {
        let _ = stop(&mut self.child, "QUIT");
    }

    /// Starts the server again on the same port and data (killing it first
    /// if it still runs) and waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match self.spawn()? {
                Started::Ready => return Ok(()),
                // Someone holds our port; it may let go soon.
                Started::PortTaken(error) => {
                    last_error = Some(error);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context("PostgreSQL did not restart on its port"))
    }

    fn command(&self, program: &str) -> anyhow::Result<Command> {
        let mut command = Command::new(self.bin_dir.join(program));
        let (log, _) = open_log(&self.log_path)?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(root) = &self.root {
            // The test's working directory may be closed to the postgres user.
            command.current_dir(root.path());
        }
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        Ok(command)
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let status = self
            .command("initdb")?
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            // The server's messages and sort order then do not depend on
            // which locales the machine has generated.
            .arg("--locale=C")
            .status()
            .with_context(|| format!("cannot run {}", self.bin_dir.join("initdb").display()))?;
        if !status.success() {
            bail!(
                "initdb failed with {status}; log {}:\n{}",
                self.log_path.display(),
                log_tail(&self.log_path)
            );
        }
        Ok(())
    }

    /// Copies the TLS files where the server (the `postgres` user) owns
    /// them, the key readable by it alone (PostgreSQL refuses a key others
    /// can read), and writes `pg_hba.conf`.
    fn set_up_tls(&mut self, tls: &PostgresTls) -> anyhow::Result<()> {
        let dir = self
            .data_dir
            .parent()
            .context("the data dir has no parent")?
            .join("tls");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let files = ServerTlsFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            ca: dir.join("client-ca.crt"),
        };
        for (from, to) in [
            (&tls.server.cert, &files.cert),
            (&tls.server.key, &files.key),
            (&tls.client_ca, &files.ca),
        ] {
            std::fs::copy(from, to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod {}", files.key.display()))?;
        if let Some((uid, gid)) = self.run_as {
            for path in [&dir, &files.cert, &files.key, &files.ca] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("cannot chown {}", path.display()))?;
            }
        }
        let mut hba = String::from("local all all trust\n");
        for role in &tls.cert_roles {
            hba.push_str(&format!("hostssl all {role} 127.0.0.1/32 cert\n"));
        }
        hba.push_str("host all postgres 127.0.0.1/32 trust\n");
        hba.push_str("host all all 127.0.0.1/32 reject\n");
        let hba_path = self.data_dir.join("pg_hba.conf");
        std::fs::write(&hba_path, hba)
            .with_context(|| format!("cannot write {}", hba_path.display()))?;
        self.tls = Some(files);
        Ok(())
    }

    /// A connection of the `postgres` superuser to `database` (plaintext,
    /// loopback), for a test's own queries.
    pub async fn admin(&self, database: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) =
            tokio_postgres::connect(&self.url(database), tokio_postgres::NoTls)
                .await
                .with_context(|| format!("cannot connect to PostgreSQL on port {}", self.port))?;
        tokio::spawn(connection);
        Ok(client)
    }

    fn spawn(&mut self) -> anyhow::Result<Started> {
        let offset = open_log(&self.log_path)?.1;
        let mut command = self.command("postgres")?;
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.data_dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=200"])
            .args(["-c", "shared_buffers=64MB"]);
        if let Some(tls) = &self.tls {
            command.args(["-c", "ssl=on", "-c", "log_connections=on"]);
            for (setting, path) in [
                ("ssl_cert_file", &tls.cert),
                ("ssl_key_file", &tls.key),
                ("ssl_ca_file", &tls.ca),
            ] {
                command
                    .arg("-c")
                    .arg(format!("{setting}={}", path.display()));
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin_dir.join("postgres").display()))?;
        self.child = Some(child);
        let url = self.url("postgres");
        let waited = await_start(
            &mut self.child,
            "postgres",
            POSTGRES_START_TIMEOUT,
            &self.log_path,
            offset,
            "Address already in use",
            || async {
                let mut config: tokio_postgres::Config =
                    url.parse().map_err(|error| format!("{error}"))?;
                config.connect_timeout(Duration::from_secs(2));
                match config.connect(tokio_postgres::NoTls).await {
                    Ok(_) => Ok(()),
                    Err(error) => Err(format!("last connection attempt: {error}")),
                }
            },
        );
        let port = self.port;
        waited
            .inspect_err(|_| self.kill())
            .map_err(|error| error.context(format!("PostgreSQL on port {port}")))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            if let Some(root) = self.root.as_mut() {
                root.disable_cleanup(true);
            }
            eprintln!(
                "PostgreSQL data and log kept in {}; last log lines:\n{}",
                self.data_dir.parent().unwrap_or(&self.data_dir).display(),
                log_tail(&self.log_path)
            );
        }
    }
}

/// How long nats-server may take to accept connections.
pub const NATS_START_TIMEOUT: Duration = Duration::from_secs(20);

/// The nats-server binary: on PATH, else Debian's `/usr/sbin/nats-server`.
fn nats_binary() -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|path| path.is_file())
        })
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|path| path.is_file()))
        .context(
            "nats-server not found: run scripts/setup --cluster (installs the nats-server package)",
        )
}

/// A nats-server with JetStream on a loopback port, its store and log in
/// the directory given to [`Nats::start`], memory and disk capped.
pub struct Nats {
    child: Option<Child>,
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    port: u16,
}

impl Nats {
    pub fn start(dir: &Path) -> anyhow::Result<Nats> {
        let binary = nats_binary()?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let config_path = dir.join("nats.conf");
            std::fs::write(
                &config_path,
                format!(
                    "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 256MB }}\n",
                    dir.join("jetstream").display()
                ),
            )?;
            let mut nats = Nats {
                child: None,
                binary: binary.clone(),
                config_path,
                log_path: dir.join("nats.log"),
                port,
            };
            match nats.spawn()? {
                Started::Ready => return Ok(nats),
                Started::PortTaken(error) => last_error = Some(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context(format!(
                "nats-server did not start in {START_ATTEMPTS} attempts"
            )))
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then start again on the same port and store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        kill9(&mut self.child)?;
        match self.spawn()? {
            Started::Ready => Ok(()),
            Started::PortTaken(error) => Err(error.context("nats-server lost its port")),
        }
    }

    fn spawn(&mut self) -> anyhow::Result<Started> {
        let (log, offset) = open_log(&self.log_path)?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        let address = format!("127.0.0.1:{}", self.port);
        let waited = await_start(
            &mut self.child,
            "nats-server",
            NATS_START_TIMEOUT,
            &self.log_path,
            offset,
            "address already in use",
            || async {
                // Ready once the log says so and the port answers with INFO.
                let log = log_since(&self.log_path, offset);
                if !log.contains("Server is ready") {
                    return Err("not ready yet".into());
                }
                match tokio::net::TcpStream::connect(&address).await {
                    Ok(_) => Ok(()),
                    Err(error) => Err(error.to_string()),
                }
            },
        );
        waited.inspect_err(|_| {
            let _ = kill9(&mut self.child);
        })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = kill9(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "nats-server log at {}; last lines:\n{}",
                self.log_path.display(),
                log_tail(&self.log_path)
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // A reaped process has no /proc entry; a zombie would still say Z.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat.contains(") Z "))
            .unwrap_or(false)
    }

    async fn healthy(endpoint: &str) -> bool {
        let address = endpoint.trim_start_matches("http://");
        matches!(
            crate::http_get(address, "/health").await,
            Ok((200, body)) if body.contains(r#""health":"true""#)
        )
    }

    #[tokio::test]
    async fn etcd_starts_restarts_and_is_gone_after_drop() {
        let dir = crate::TestDir::new().unwrap();
        let mut etcd = Etcd::start(dir.path()).unwrap();
        let endpoint = etcd.endpoint();
        assert!(healthy(&endpoint).await);
        etcd.kill();
        assert!(!healthy(&endpoint).await);
        etcd.restart().unwrap();
        assert_eq!(etcd.endpoint(), endpoint);
        assert!(healthy(&endpoint).await);
        let pid = etcd.pid().unwrap();
        drop(etcd);
        assert!(!alive(pid));
        assert!(dir.path().join("etcd-data").is_dir());
    }

    #[tokio::test]
    async fn postgres_stops_on_drop_and_removes_its_dir() {
        let postgres = Postgres::start().unwrap();
        let url = postgres.create_database("smoke").await.unwrap();
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let fsync: String = client.query_one("SHOW fsync", &[]).await.unwrap().get(0);
        assert_eq!(fsync, "on");
        let pid = postgres.pid().unwrap();
        let dir = postgres.log_path().parent().unwrap().to_path_buf();
        drop(postgres);
        assert!(!alive(pid));
        assert!(!dir.exists());
    }
}
