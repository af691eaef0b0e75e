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
        ClusterError::Tls(format!(
            "{} and {}: {error}",
            cert.display(),
            key.display()
        ))
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

/// When a set of files last changed: their modification times and sizes,
/// through symlinks (Kubernetes updates a mounted secret by swapping a
/// `..data` symlink, which changes what the path resolves to, and so this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp(Vec<Option<(SystemTime, u64)>>);

impl FileStamp {
    pub fn of(paths: &[&Path]) -> Self {
        Self(
            paths
                .iter()
                .map(|path| {
                    let metadata = std::fs::metadata(path).ok()?;
                    Some((metadata.modified().ok()?, metadata.len()))
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

    #[test]
    fn a_certificate_without_its_key_is_refused_at_start() {
        let files = TlsFiles::new(Path::new("a.crt"), Path::new(""), Path::new(""));
        assert!(files.check_pairing("client API").is_err());
        assert!(TlsFiles::default().check_pairing("client API").is_ok());
    }
}
