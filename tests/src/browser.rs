//! Headless Chromium (Debian's `chromium`, which `scripts/setup --browser`
//! installs) for tests of the pages a node serves: load a URL, let its
//! scripts run, and take the DOM or a screenshot.
//!
//! Scripts run on virtual time (`--virtual-time-budget`): Chromium jumps
//! from timer to timer while no fetch is pending, so a page that refreshes
//! every 2 s refreshes three times in a 5 s budget that takes well under a
//! second of real time. A test that needs figures to move between captures
//! takes two captures some real time apart. Each run gets a fresh profile
//! (`--user-data-dir`) and is killed if it outlives [`RUN_TIMEOUT`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::services::find_on_path;

/// One Chromium run, from start to the capture written.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of Chromium's stderr a failure shows.
const STDERR_TAIL_LINES: usize = 20;

/// The flags that work as root on a machine without a GPU, D-Bus or a big
/// /dev/shm, and keep Chromium from calling home.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--hide-scrollbars",
];

/// The Chromium binary the tests run.
pub struct Chromium {
    binary: PathBuf,
}

impl Chromium {
    /// `SKULD_CHROMIUM` when set, else `chromium` on `PATH`; fails with one
    /// line saying how to install it.
    pub fn find() -> anyhow::Result<Self> {
        if let Ok(path) = std::env::var("SKULD_CHROMIUM") {
            let binary = PathBuf::from(path);
            if !binary.is_file() {
                bail!("SKULD_CHROMIUM={} does not exist", binary.display());
            }
            return Ok(Self { binary });
        }
        let binary = find_on_path("chromium")
            .context("chromium not found: run scripts/setup --browser (installs chromium and fonts-dejavu-core)")?;
        Ok(Self { binary })
    }

    /// The DOM after the page's scripts ran for `budget` of virtual time.
    pub async fn dump_dom(&self, url: &str, budget: Duration) -> anyhow::Result<String> {
        let stdout = self
            .run(&[
                format!("--virtual-time-budget={}", budget.as_millis()),
                "--dump-dom".to_owned(),
                url.to_owned(),
            ])
            .await?;
        String::from_utf8(stdout).context("the DOM Chromium printed is not UTF-8")
    }

    /// A PNG of the page at `width` x `height` after `budget` of virtual
    /// time, written to `path` (its directory is created).
    pub async fn screenshot(
        &self,
        url: &str,
        budget: Duration,
        (width, height): (u32, u32),
        path: &Path,
    ) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(path);
        self.run(&[
            format!("--virtual-time-budget={}", budget.as_millis()),
            format!("--window-size={width},{height}"),
            format!("--screenshot={}", path.display()),
            url.to_owned(),
        ])
        .await?;
        if !path.is_file() {
            bail!("Chromium exited without writing {}", path.display());
        }
        Ok(())
    }

    async fn run(&self, args: &[String]) -> anyhow::Result<Vec<u8>> {
        let profile = tempfile::Builder::new()
            .prefix("skuld-chromium-")
            .tempdir()
            .context("cannot create a Chromium profile dir")?;
        let child = tokio::process::Command::new(&self.binary)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("Chromium ran longer than {RUN_TIMEOUT:?}: {args:?}"))?
            .context("cannot wait for Chromium")?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = stderr.lines().collect();
            bail!(
                "Chromium exited with {} for {args:?}; last stderr lines:\n{}",
                output.status,
                lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
            );
        }
        Ok(output.stdout)
    }
}

/// Where tests keep files for people to look at after a run (screenshots):
/// `target/test-artifacts/`, beside the profile directories Cargo builds in.
pub fn artifact_path(name: &str) -> anyhow::Result<PathBuf> {
    let test_executable = std::env::current_exe().context("cannot find the test executable")?;
    let target_dir = test_executable
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("the test executable is not in target/<profile>/deps")?;
    Ok(target_dir.join("test-artifacts").join(name))
}
