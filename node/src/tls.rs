//! TLS of the node's own listeners and of its peer client: rustls
//! configurations built from PEM files ([`skuld_cluster::tls`]) and built
//! again when the files change on disk, without a restart. Kubernetes
//! rotates a mounted secret in place; a new connection gets the new
//! certificate, a connection already open keeps the one it was accepted
//! with, so no request in flight fails.
//!
//! A rotation seen half-way (the key written, not yet the certificate)
//! fails to build; the last good configuration stays, and the next check
//! tries again.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;
use rustls_pki_types::{CertificateDer, ServerName};
use skuld_cluster::tls::{provider, read_roots, FileStamp, TlsFiles};
use skuld_cluster::ClusterError;
use tokio_util::sync::CancellationToken;

/// Something built from files that is built again when they change.
pub trait Reloadable: Send + Sync {
    /// Rebuilds when the files changed since the last build; logs and
    /// keeps what it has when the new files cannot be used.
    fn reload_if_changed(&self);
}

/// Checks every `interval` whether the files of `reloadables` changed.
pub async fn watch(
    reloadables: Vec<Arc<dyn Reloadable>>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for reloadable in &reloadables {
            reloadable.reload_if_changed();
        }
    }
}

/// Who must present a certificate on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// One is asked for and verified when given (mapped to an identity).
    Optional,
    /// No connection without a certificate of the listener's CA.
    Required,
}

/// The rustls configuration of one listener (`client` or `peer`).
pub struct ServerTls {
    listener: &'static str,
    files: TlsFiles,
    client_auth: ClientAuth,
    current: ArcSwap<ServerConfig>,
    stamp: Mutex<FileStamp>,
}

impl ServerTls {
    /// Reads the files; fails (at start) when they cannot be used.
    pub fn load(
        listener: &'static str,
        files: TlsFiles,
        client_auth: ClientAuth,
    ) -> Result<Arc<Self>, ClusterError> {
        let stamp = files.stamp();
        let (config, expiry) = build_server_config(&files, client_auth)?;
        record_expiry(listener, expiry);
        Ok(Arc::new(Self {
            listener,
            files,
            client_auth,
            current: ArcSwap::from_pointee(config),
            stamp: Mutex::new(stamp),
        }))
    }

    /// The acceptor for the next connection: the newest configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    pub fn listener(&self) -> &'static str {
        self.listener
    }
}

impl Reloadable for ServerTls {
    fn reload_if_changed(&self) {
        let stamp = self.files.stamp();
        let mut last = self.stamp.lock();
        if *last == stamp {
            return;
        }
        match build_server_config(&self.files, self.client_auth) {
            Ok((config, expiry)) => {
                self.current.store(Arc::new(config));
                *last = stamp;
                record_expiry(self.listener, expiry);
                metrics::counter!("skuld_tls_reloads_total", "listener" => self.listener, "outcome" => "ok")
                    .increment(1);
                tracing::info!(
                    listener = self.listener,
                    "TLS files changed: new connections use them"
                );
            }
            Err(error) => {
                // The stamp is taken all the same: it was read before the
                // files, so the other half of a rotation changes it again
                // and is tried then; files that stay broken warn once.
                *last = stamp;
                metrics::counter!("skuld_tls_reloads_total", "listener" => self.listener, "outcome" => "failed")
                    .increment(1);
                tracing::warn!(listener = self.listener, %error, "TLS files changed but cannot be used; keeping the previous ones");
            }
        }
    }
}

/// The listener's configuration and when its certificate expires (taken
/// from the certificate it was built with, not read again).
fn build_server_config(
    files: &TlsFiles,
    client_auth: ClientAuth,
) -> Result<(ServerConfig, Option<i64>), ClusterError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| ClusterError::Tls(error.to_string()))?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let roots = Arc::new(read_roots(&files.ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if client_auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|error| ClusterError::Tls(format!("{}: {error}", files.ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = files.certified_key()?;
    let expiry = key.end_entity_cert().ok().and_then(not_after);
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, expiry))
}

/// `skuld_tls_certificate_expiry_timestamp_seconds{listener}`: when the
/// certificate in use expires, for an alert well before it does.
fn record_expiry(listener: &'static str, expiry: Option<i64>) {
    if let Some(not_after) = expiry {
        metrics::gauge!("skuld_tls_certificate_expiry_timestamp_seconds", "listener" => listener)
            .set(not_after as f64);
    }
}

fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// The PEM text of this node's peer client identity and the cluster CA,
/// for the channels it opens to other nodes; read again when the files
/// change, after which new channels are opened with it.
pub struct PeerClientTls {
    files: TlsFiles,
    current: ArcSwap<tonic::transport::ClientTlsConfig>,
    stamp: Mutex<FileStamp>,
    generation: std::sync::atomic::AtomicU64,
}

impl PeerClientTls {
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, ClusterError> {
        let stamp = files.stamp();
        let config = build_client_config(&files)?;
        Ok(Arc::new(Self {
            files,
            current: ArcSwap::from_pointee(config),
            stamp: Mutex::new(stamp),
            generation: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// The configuration for a channel to a peer at `host`, which its
    /// certificate must name.
    pub fn config_for(&self, host: &str) -> tonic::transport::ClientTlsConfig {
        let config: &tonic::transport::ClientTlsConfig = &self.current.load();
        config.clone().domain_name(host)
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Changes each time the files were read again: channels opened before
    /// are replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Reloadable for PeerClientTls {
    fn reload_if_changed(&self) {
        let stamp = self.files.stamp();
        let mut last = self.stamp.lock();
        if *last == stamp {
            return;
        }
        match build_client_config(&self.files) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                *last = stamp;
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                metrics::counter!("skuld_tls_reloads_total", "listener" => "peer_client", "outcome" => "ok")
                    .increment(1);
                tracing::info!("peer TLS files changed: new peer connections use them");
            }
            Err(error) => {
                *last = stamp;
                metrics::counter!("skuld_tls_reloads_total", "listener" => "peer_client", "outcome" => "failed")
                    .increment(1);
                tracing::warn!(%error, "peer TLS files changed but cannot be used; keeping the previous ones");
            }
        }
    }
}

/// How long the peer client's TLS handshake may take (the connect timeout
/// covers TCP only).
const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

fn build_client_config(
    files: &TlsFiles,
) -> Result<tonic::transport::ClientTlsConfig, ClusterError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|error| ClusterError::Tls(format!("{}: {error}", path.display())))
    };
    let ca = read(&files.ca)?;
    let cert = read(&files.cert)?;
    let key = read(&files.key)?;
    // The very bytes the channels will use are checked, so that a bad file
    // fails here (at start, or keeping the old ones at a reload), not at
    // the next dial, and a rotation between two reads cannot slip by.
    check_identity_pem(&cert, &key, files)?;
    check_roots_pem(&ca, files)?;
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .timeout(PEER_HANDSHAKE_TIMEOUT))
}

fn check_identity_pem(cert: &[u8], key: &[u8], files: &TlsFiles) -> Result<(), ClusterError> {
    use rustls_pki_types::pem::PemObject as _;
    let malformed = |path: &std::path::Path, what: &str| {
        ClusterError::Tls(format!("{}: {what}", path.display()))
    };
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| malformed(&files.cert, "malformed PEM"))?;
    if chain.is_empty() {
        return Err(malformed(&files.cert, "no certificate in the file"));
    }
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key)
        .map_err(|_| malformed(&files.key, "no usable private key"))?;
    rustls::sign::CertifiedKey::from_der(chain, key, &provider()).map_err(|error| {
        ClusterError::Tls(format!(
            "{} and {}: {error}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    Ok(())
}

fn check_roots_pem(ca: &[u8], files: &TlsFiles) -> Result<(), ClusterError> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        let cert =
            cert.map_err(|_| ClusterError::Tls(format!("{}: malformed PEM", files.ca.display())))?;
        roots
            .add(cert)
            .map_err(|error| ClusterError::Tls(format!("{}: {error}", files.ca.display())))?;
    }
    if roots.is_empty() {
        return Err(ClusterError::Tls(format!(
            "{}: no certificate in the file",
            files.ca.display()
        )));
    }
    Ok(())
}

/// Whether a certificate (a peer's, already verified to chain to the
/// cluster CA, or this node's own) is valid for `host` by the rules a
/// server certificate is checked by (wildcards included; an IP host only
/// against IP names): a certificate the cluster's CA issued for anything
/// else (a client service, a host no member advertises) does not make its
/// holder a node.
pub fn names_host(cert: &webpki::EndEntityCert<'_>, host: &str) -> bool {
    match ServerName::try_from(host) {
        Ok(name) => cert.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => false,
    }
}

/// The host of an endpoint URL as the dialer resolves it
/// (`https://skuld-0.skuld-peer:7071` -> `skuld-0.skuld-peer`; IPv6
/// brackets removed): parsed as tonic parses it, so the name checked is
/// the name dialled.
pub fn endpoint_host(endpoint: &str) -> Option<String> {
    let uri: http::Uri = endpoint.parse().ok()?;
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| host.to_owned())
}

/// Whether this node's own peer certificate names `host`, the host it
/// advertises: otherwise every other node would refuse its calls.
pub fn own_certificate_names(files: &TlsFiles, host: &str) -> Result<bool, ClusterError> {
    let chain = skuld_cluster::tls::read_chain(&files.cert)?;
    let Some(leaf) = chain.first() else {
        return Ok(false);
    };
    let leaf = webpki::EndEntityCert::try_from(leaf)
        .map_err(|error| ClusterError::Tls(format!("{}: {error}", files.cert.display())))?;
    Ok(names_host(&leaf, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_endpoint() {
        let host = |endpoint| endpoint_host(endpoint);
        assert_eq!(
            host("https://skuld-0.skuld-peer:7071").as_deref(),
            Some("skuld-0.skuld-peer")
        );
        assert_eq!(
            host("https://127.0.0.1:7071/").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(host("https://[::1]:7071").as_deref(), Some("::1"));
        assert_eq!(
            host("https://user@skuld-0:7071").as_deref(),
            Some("skuld-0")
        );
        assert_eq!(host("https://:7071"), None);
        assert_eq!(host("https://"), None);
    }
}
