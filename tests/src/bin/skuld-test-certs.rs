//! A CA and the certificates it signs, for a cluster run outside Cargo's
//! tests (`scripts/pod-smoke` plays cert-manager for the chart's pods,
//! `scripts/cluster` gives its local nodes peer certificates), made with
//! the end-to-end tests' own [`skuld_tests::certs`].
//!
//!   skuld-test-certs DIR NAME=HOST[,HOST...] [NAME=HOST[,HOST...] ...]
//!
//! Writes the CA to `DIR/ca.crt` and each certificate in the layout of a
//! cert-manager Secret, `DIR/NAME/tls.crt`, `DIR/NAME/tls.key` and
//! `DIR/NAME/ca.crt`: common name NAME, valid for the HOSTs (DNS names,
//! `*.` wildcards or IP addresses) as server and as client, for 47 hours
//! (the CA for two days). Keys are written mode 0600. Prints one JSON line,
//! `{"ca": "DIR/ca.crt", "certificates": {"NAME": "DIR/NAME", ...}}`.
//! Test certificates only: the CA's key is never written anywhere.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use skuld_tests::certs::{write_replacing, Leaf, TestCa};

/// Under the CA's two days, so every certificate expires before its CA.
const VALID_HOURS: i64 = 47;

fn usage() -> anyhow::Error {
    anyhow::anyhow!("usage: skuld-test-certs DIR NAME=HOST[,HOST...] [NAME=HOST[,HOST...] ...]")
}

/// `NAME=HOST,HOST` as the name and its hosts.
fn parse_leaf(arg: &str) -> anyhow::Result<(String, Vec<String>)> {
    let (name, hosts) = arg.split_once('=').ok_or_else(usage)?;
    let hosts: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(str::to_owned)
        .collect();
    if name.is_empty() || hosts.is_empty() {
        bail!("{arg:?}: a certificate needs a name and at least one host");
    }
    // The name is a directory under DIR.
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        bail!("{name:?}: a name is letters, digits, '-', '_' and '.'");
    }
    Ok((name.to_owned(), hosts))
}

/// Issues one certificate into `DIR/NAME/` as cert-manager lays a Secret out.
fn issue(ca: &TestCa, dir: &Path, name: &str, hosts: &[String]) -> anyhow::Result<PathBuf> {
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut leaf = Leaf::new(name, &hosts);
    leaf.valid_for = time::Duration::hours(VALID_HOURS);
    let target = dir.join(name);
    let files = ca.issue(&leaf, &target, "tls")?;
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", files.key.display()))?;
    let bundle = target.join("ca.crt");
    std::fs::rename(&files.ca, &bundle)
        .with_context(|| format!("cannot write {}", bundle.display()))?;
    Ok(target)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or_else(usage)?);
    let leaves = args
        .map(|arg| parse_leaf(&arg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if leaves.is_empty() {
        return Err(usage());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = TestCa::new("skuld test CA")?;
    let ca_file = dir.join("ca.crt");
    write_replacing(&ca_file, ca.pem())?;
    let mut certificates = BTreeMap::new();
    for (name, hosts) in &leaves {
        let target = issue(&ca, &dir, name, hosts)?;
        certificates.insert(name.clone(), target.display().to_string());
    }
    let made = serde_json::json!({
        "ca": ca_file.display().to_string(),
        "certificates": certificates,
    });
    println!("{made}");
    Ok(())
}
