//! Test certificates: a CA and the leaves it signs, written as PEM files
//! the way a Kubernetes secret (cert-manager's `tls.crt`, `tls.key`,
//! `ca.crt`) puts them on disk. "Wrong CA" in a test is a second,
//! independent [`TestCa`].

use std::path::{Path, PathBuf};
use std::time::Duration as StdDuration;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A certificate authority that signs test leaves.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A leaf's PEM files on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA bundle that signed it (the `ca.crt` beside it).
    pub ca: PathBuf,
}

/// What a leaf is for and how long it is valid.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Its common name (a service identity or a PostgreSQL role).
    pub common_name: String,
    /// DNS names and IP addresses it is valid for.
    pub names: Vec<String>,
    /// Valid from this far in the past (negative: in the future) ...
    pub valid_since: Duration,
    /// ... until this far from now (negative: already expired).
    pub valid_for: Duration,
}

impl Leaf {
    /// A leaf for `names`, as server and as client, valid from three days
    /// ago for thirty days: like a real certificate, it stays valid for a
    /// node whose clock is days off (the clock-skew tests), which a
    /// certificate of an hour would not.
    pub fn new(common_name: &str, names: &[&str]) -> Self {
        Self {
            common_name: common_name.to_owned(),
            names: names.iter().map(|name| (*name).to_owned()).collect(),
            valid_since: Duration::days(3),
            valid_for: Duration::days(30),
        }
    }

    /// The same leaf, expired an hour ago.
    pub fn expired(mut self) -> Self {
        self.valid_since = Duration::hours(2);
        self.valid_for = Duration::hours(-1);
        self
    }
}

impl TestCa {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(7);
        params.not_after = now + Duration::days(60);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Signs `leaf` and writes `<dir>/<file_stem>.crt`, `.key` and the CA
    /// as `<dir>/<file_stem>-ca.crt`. Writing again to the same stem
    /// replaces the files in place (a rotation), each by a rename.
    pub fn issue(&self, leaf: &Leaf, dir: &Path, file_stem: &str) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(leaf.names.clone())?;
        params
            .distinguished_name
            .push(DnType::CommonName, leaf.common_name.as_str());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - leaf.valid_since;
        params.not_after = now + leaf.valid_for;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let files = CertFiles {
            cert: dir.join(format!("{file_stem}.crt")),
            key: dir.join(format!("{file_stem}.key")),
            ca: dir.join(format!("{file_stem}-ca.crt")),
        };
        write_replacing(&files.key, &key.serialize_pem())?;
        write_replacing(&files.cert, &cert.pem())?;
        write_replacing(&files.ca, &self.pem)?;
        Ok(files)
    }
}

/// Writes `path` through a temporary file and a rename, so a reader never
/// sees half a file.
pub fn write_replacing(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}

/// A new TLS connection to `addr` (`127.0.0.1:PORT`) that trusts `ca_pem`
/// and presents `identity` when given.
pub async fn tls_channel(
    addr: &str,
    ca_pem: &str,
    identity: Option<&CertFiles>,
) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("127.0.0.1");
    if let Some(files) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&files.cert)?,
            std::fs::read(&files.key)?,
        ));
    }
    Ok(Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(StdDuration::from_secs(5))
        .timeout(StdDuration::from_secs(5))
        .connect()
        .await?)
}
