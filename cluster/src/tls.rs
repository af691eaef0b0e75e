//! TLS material from PEM files, laid out as Kubernetes mounts a secret
//! (cert-manager's `tls.crt`, `tls.key`, `ca.crt`), and the stamp that tells
//! when they changed on disk. Every TLS user of the node (the client and peer
//! listeners, the peer, etcd and PostgreSQL clients) reads its files here,
//! so that one rule holds everywhere: a file that cannot be read or used
//! is named in the error, its contents never are.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ClusterError;

/// The PEM files of one TLS endpoint; an empty path is "not configured".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain this side presents (leaf first).
    pub cert: PathBuf,
    /// Private key of `cert`.
    pub key: PathBuf,
    /// CA bundle the other side's certificate must chain to.
    pub ca: PathBuf,
}

impl TlsFiles {
    pub fn new(cert: &Path, key: &Path, ca: &Path) -> Self {
        Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: ca.to_owned(),
        }
    }

    /// Nothing configured: plaintext.
    pub fn is_empty(&self) -> bool {
        self.cert.as_os_str().is_empty()
            && self.key.as_os_str().is_empty()
            && self.ca.as_os_str().is_empty()
    }

    /// This side presents a certificate.
    pub fn has_identity(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }

    /// This side checks the other's certificate against a CA of its own.
    pub fn has_ca(&self) -> bool {
        !self.ca.as_os_str().is_empty()
    }

    /// A certificate without its key (or the reverse) is a mistake, told at
    /// start rather than at the first handshake.
    pub fn check_pairing(&self, what: &str) -> Result<(), ClusterError> {
        if self.cert.as_os_str().is_empty() != self.key.as_os_str().is_empty() {
            return Err(ClusterError::Tls(format!(
                "{what}: a certificate file needs its key file and the key its certificate"
            )));
        }
        Ok(())
    }

    /// When any of the files last changed.
    pub fn stamp(&self) -> FileStamp {
        FileStamp::of(&[&self.cert, &self.key, &self.ca])
    }

    /// The configured certificate and key, checked to belong together.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, ClusterError> {
        certified_key(&self.cert, &self.key)
    }

    /// A client configuration: the server must chain to `ca` (the system
    /// has no other roots here: every endpoint skuld dials is the
    /// operator's own), and `cert`/`key`, when set, are presented.
    pub fn client_config(&self) -> Result<ClientConfig, ClusterError> {
        let roots = read_roots(&self.ca)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| ClusterError::Tls(error.to_string()))?
            .with_root_certificates(roots);
        if self.has_identity() {
            let chain = read_chain(&self.cert)?;
            let key = read_key(&self.key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| ClusterError::Tls(format!("{}: {error}", self.key.display())))
        } else {
            Ok(builder.with_no_client_auth())
        }
    }
}

/// A client configuration that follows its files on disk: each new
/// connection asks for [`ReloadingClientConfig::current`], which reads the
/// files again when their [`FileStamp`] changed since the last look, so a
/// certificate Kubernetes rotated in place is presented (and a rotated CA
/// trusted) from the next connection on, without a restart. Connections
/// already open keep the configuration they were made with.
///
/// Checked before each connection, so that none goes out with files older
/// than the ones on disk (the clients that use it, the PostgreSQL pool and
/// the etcd channel, connect rarely, and a check is three `stat` calls),
/// and by the node's reload timer through
/// [`ReloadingClientConfig::reload_if_changed`], so that a rotation that
/// cannot be used is reported when it happens, not at the next reconnect.
/// Such a set of files (a rotation seen half-way, a key that does not match
/// its certificate) is warned about once per change, naming the file, and
/// the last good configuration stays in use.
pub struct ReloadingClientConfig {
    /// Who connects ("etcd_client", "postgres_client"), for logs and the
    /// `skuld_tls_reloads_total` counter.
    what: &'static str,
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    state: parking_lot::Mutex<Loaded>,
}

struct Loaded {
    /// The stamp of the files last tried, good or not.
    stamp: FileStamp,
    config: Arc<ClientConfig>,
}

impl ReloadingClientConfig {
    /// Reads the files; fails (at start, naming the file) when they cannot
    /// be used. `alpn` is offered on every connection.
    pub fn load(
        what: &'static str,
        files: TlsFiles,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<Self>, ClusterError> {
        files.check_pairing(what)?;
        if !files.has_ca() {
            return Err(ClusterError::Tls(format!(
                "{what}: TLS needs the CA file that signs the server's certificate"
            )));
        }
        let stamp = files.stamp();
        let config = build_client_config(&files, &alpn)?;
        Ok(Arc::new(Self {
            what,
            files,
            alpn,
            state: parking_lot::Mutex::new(Loaded {
                stamp,
                config: Arc::new(config),
            }),
        }))
    }

    /// The files this configuration is read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration for the next connection: read again first when
    /// the files changed.
    pub fn current(&self) -> Arc<ClientConfig> {
        self.reload_if_changed();
        Arc::clone(&self.state.lock().config)
    }

    /// Reads the files again when they changed since the last look; keeps
    /// the configuration in use (and says why) when they cannot be used.
    pub fn reload_if_changed(&self) {
        let stamp = self.files.stamp();
        let mut state = self.state.lock();
        if state.stamp == stamp {
            return;
        }
        // Taken even when the files turn out unusable: the same broken set
        // is not parsed and warned about again at every connection; the
        // next write to any of them changes the stamp and is tried.
        state.stamp = stamp;
        match build_client_config(&self.files, &self.alpn) {
            Ok(config) => {
                state.config = Arc::new(config);
                metrics::counter!("skuld_tls_reloads_total", "listener" => self.what, "outcome" => "ok")
                    .increment(1);
                tracing::info!(
                    client = self.what,
                    "TLS files changed: new connections use them"
                );
            }
            Err(error) => {
                metrics::counter!("skuld_tls_reloads_total", "listener" => self.what, "outcome" => "failed")
                    .increment(1);
                tracing::warn!(
                    client = self.what,
                    %error,
                    "TLS files changed but cannot be used; new connections keep the previous ones"
                );
            }
        }
    }
}

impl std::fmt::Debug for ReloadingClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingClientConfig")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn build_client_config(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<ClientConfig, ClusterError> {
    let mut config = files.client_config()?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

/// A TLS failure of a connection to `server` in the words of the option to
/// look at (rustls names the alert received or the check that failed, not
/// whose certificate it was); `None` for any other error. With TLS 1.3 a
/// server's refusal of the client certificate arrives as an alert after
/// the handshake looked done.
pub fn explain_failure(
    error: &std::io::Error,
    server: &str,
    cert_option: &str,
    server_trusts: &str,
    ca_option: &str,
) -> Option<String> {
    use rustls::AlertDescription as Alert;
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateRequired
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::UnsupportedCertificate
            | Alert::AccessDenied,
        )) => Some(format!(
            "{server} refused this node's client certificate ({cert_option}: none, expired, or \
             not of a CA in {server_trusts}): {error}"
        )),
        Some(rustls::Error::InvalidCertificate(_)) => Some(format!(
            "{server}'s certificate does not verify against {ca_option} or does not name the \
             host connected to: {error}"
        )),
        _ => None,
    }
}

/// The crypto provider of every TLS context skuld builds: ring, the only
/// one compiled in (no process-wide default needs to be guessed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain in a PEM file, leaf first.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClusterError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|error| pem_error(path, &error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(path, &error))?;
    if chain.is_empty() {
        return Err(ClusterError::Tls(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(chain)
}

/// The (first) private key in a PEM file: PKCS#8, PKCS#1 or SEC1.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClusterError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| pem_error(path, &error))
}

/// Every certificate of a CA bundle, as trust anchors.
pub fn read_roots(path: &Path) -> Result<RootCertStore, ClusterError> {
    let mut roots = RootCertStore::empty();
    for cert in read_chain(path)? {
        roots
            .add(cert)
            .map_err(|error| ClusterError::Tls(format!("{}: {error}", path.display())))?;
    }
    Ok(roots)
}

/// A certificate and its key, checked to belong together (a rotation that
/// has written one file but not yet the other fails here, and the caller
/// keeps what it had).
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, ClusterError> {
    let chain = read_chain(cert)?;
    let private = read_key(key)?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|error| {
        ClusterError::Tls(format!("{} and {}: {error}", cert.display(), key.display()))
    })?;
    Ok(Arc::new(certified))
}

fn pem_error(path: &Path, error: &rustls_pki_types::pem::Error) -> ClusterError {
    // The PEM error may quote bytes of the file (a key): only its kind.
    let reason = match error {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        _ => "malformed PEM".into(),
    };
    ClusterError::Tls(format!("{}: {reason}", path.display()))
}

/// When a set of files last changed: for each, its device and inode, its
/// status-change and modification times and its size, through symlinks.
/// Kubernetes updates a mounted secret by swapping a `..data` symlink, so
/// the path resolves to another inode; a copy that keeps the old
/// modification time (`cp -p`, `rsync -a`) of a same-sized certificate
/// still changes the inode or the status-change time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp(Vec<Option<FileIdentity>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
    changed: (i64, i64),
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    pub fn of(paths: &[&Path]) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self(
            paths
                .iter()
                .map(|path| {
                    let metadata = std::fs::metadata(path).ok()?;
                    Some(FileIdentity {
                        device: metadata.dev(),
                        inode: metadata.ino(),
                        changed: (metadata.ctime(), metadata.ctime_nsec()),
                        modified: metadata.modified().ok(),
                        len: metadata.len(),
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_that_keeps_the_modification_time_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.crt");
        std::fs::write(&path, "first").unwrap();
        let before = FileStamp::of(&[&path]);
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        // Same size, same modification time, a new file in its place.
        let next = dir.path().join("next");
        std::fs::write(&next, "secnd").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&next)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            modified
        );
        assert_ne!(FileStamp::of(&[&path]), before);
        assert_eq!(FileStamp::of(&[&path]), FileStamp::of(&[&path]));
    }

    #[test]
    fn a_missing_file_is_named_and_nothing_else_is_said() {
        let error = read_chain(Path::new("/nonexistent/tls.crt")).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("/nonexistent/tls.crt"), "{text}");
    }

    #[test]
    fn a_key_file_that_is_not_pem_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.key");
        std::fs::write(&path, "SECRET-MATERIAL not a key").unwrap();
        let text = read_key(&path).unwrap_err().to_string();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("tls.key"), "{text}");
    }

    /// A CA and a leaf it signs, written as `dir/ca.crt`, `tls.crt`, `tls.key`.
    fn issue(dir: &Path, ca: &rcgen::Issuer<'static, rcgen::KeyPair>, ca_pem: &str) -> TlsFiles {
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        let files = TlsFiles::new(
            &dir.join("tls.crt"),
            &dir.join("tls.key"),
            &dir.join("ca.crt"),
        );
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.ca, ca_pem).unwrap();
        files
    }

    fn test_ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        (rcgen::Issuer::new(params, key), pem)
    }

    #[test]
    fn a_client_config_follows_its_files_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_pem) = test_ca();
        let files = issue(dir.path(), &ca, &ca_pem);
        let tls = ReloadingClientConfig::load("test_client", files.clone(), Vec::new()).unwrap();
        let first = tls.current();
        assert!(
            Arc::ptr_eq(&first, &tls.current()),
            "rebuilt without a change"
        );
        // Rotated in place; the pause keeps the new modification times
        // apart from the old ones on a file system with coarse timestamps.
        std::thread::sleep(std::time::Duration::from_millis(20));
        issue(dir.path(), &ca, &ca_pem);
        let second = tls.current();
        assert!(!Arc::ptr_eq(&first, &second), "the rotation was not read");
        // Half a rotation: a key that is not the certificate's.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(
            &files.key,
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let kept = tls.current();
        assert!(Arc::ptr_eq(&second, &kept), "an unusable key was taken");
        // A missing file at start is named.
        let missing = TlsFiles::new(Path::new(""), Path::new(""), &dir.path().join("none.crt"));
        let error = ReloadingClientConfig::load("test_client", missing, Vec::new()).unwrap_err();
        assert!(error.to_string().contains("none.crt"), "{error}");
    }

    #[test]
    fn a_certificate_without_its_key_is_refused_at_start() {
        let files = TlsFiles::new(Path::new("a.crt"), Path::new(""), Path::new(""));
        assert!(files.check_pairing("client API").is_err());
        assert!(TlsFiles::default().check_pairing("client API").is_ok());
    }
}
