//! The channel to etcd over TLS, built by the node rather than by
//! etcd-client, so that a reconnect reads the certificate files again.
//!
//! etcd-client's own TLS (`ConnectOptions::with_tls`) hands tonic a
//! `ClientTlsConfig` made once from PEM bytes: every reconnect after that
//! presents the certificate the process started with, until it expires and
//! etcd refuses the node. Here the channel's connector dials TCP and does
//! the handshake itself with [`ReloadingClientConfig::current`], the
//! configuration of the files as they are on disk now. The connection that
//! is open stays up (etcd checked the certificate when it was made); the
//! next one, after etcd restarts, a network fault or a keep-alive timeout,
//! uses the rotated files.
//!
//! Several endpoints are tried in turn, starting with the one that answered
//! last: one HTTP/2 connection at a time, as etcd's own clients do.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::Endpoint;

use crate::tls::ReloadingClientConfig;
use crate::ClusterError;

/// Bounds one endpoint's TCP connect, TLS handshake and first read.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings: a connection to an etcd that vanished is noticed (and the
/// next one made) within interval + timeout.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new connection waits for etcd's first bytes (its HTTP/2
/// SETTINGS, sent as soon as the handshake is done) before going on
/// without: only the diagnosis of a refused certificate needs them.
const FIRST_READ_TIMEOUT: Duration = Duration::from_millis(500);
/// The same connection failure is logged again after this.
const REPEAT_WARNING_AFTER: Duration = Duration::from_secs(30);

/// One etcd endpoint: where to dial and the name its certificate must have.
#[derive(Debug, Clone)]
struct Target {
    /// As configured, for logs.
    url: String,
    host: String,
    port: u16,
    name: ServerName<'static>,
}

/// The last way a TLS connection to etcd failed, for the error of a call
/// that failed because of it: tonic and etcd-client report only
/// "transport error" or "broken pipe" above it.
#[derive(Debug, Clone, Default)]
pub(crate) struct LastFailure(Arc<parking_lot::Mutex<Option<(String, Instant)>>>);

impl LastFailure {
    /// Keeps `failure` and logs it, unless it is the one logged less than
    /// [`REPEAT_WARNING_AFTER`] ago: tonic dials again for every call while
    /// etcd is unreachable.
    fn set(&self, failure: String) {
        let mut last = self.0.lock();
        let repeated = last
            .as_ref()
            .is_some_and(|(text, at)| *text == failure && at.elapsed() < REPEAT_WARNING_AFTER);
        if !repeated {
            tracing::warn!(%failure, "cannot connect to etcd over TLS");
            *last = Some((failure, Instant::now()));
        }
    }

    /// `error`, with the TLS failure that explains it when there was one.
    pub(crate) fn explain(&self, error: ClusterError) -> ClusterError {
        match (self.0.lock().as_ref(), error) {
            (Some((failure, _)), ClusterError::Etcd(message))
                if !message.contains(failure.as_str()) =>
            {
                ClusterError::Etcd(format!("{message} (over TLS: {failure})"))
            }
            (_, error) => error,
        }
    }
}

/// A tonic channel to `endpoints` (`https://host:port`, or `host:port`)
/// whose every connection is made with the current files of `tls`, and
/// where its connections' failures are kept.
pub(crate) fn channel(
    endpoints: &[String],
    tls: Arc<ReloadingClientConfig>,
) -> Result<(etcd_client::Channel, LastFailure), ClusterError> {
    let targets = endpoints
        .iter()
        .map(|url| target(url))
        .collect::<Result<Vec<_>, _>>()?;
    let first = targets
        .first()
        .ok_or_else(|| ClusterError::Etcd("no etcd endpoint".into()))?;
    // The URI tonic is given only sets the requests' authority: the
    // connector below dials and encrypts. Its scheme is http because tonic
    // would otherwise insist on doing TLS itself.
    let authority = format!("http://{}:{}", bracketed(&first.host), first.port);
    let endpoint = Endpoint::from_shared(authority)
        .map_err(|error| ClusterError::Etcd(format!("{}: {error}", first.url)))?
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let failure = LastFailure::default();
    let connector = Connector {
        targets: targets.into(),
        next: Arc::new(AtomicUsize::new(0)),
        tls,
        failure: failure.clone(),
    };
    Ok((
        etcd_client::Channel::Tonic(endpoint.connect_with_connector_lazy(connector)),
        failure,
    ))
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Parses `https://host:port` or `host:port` (etcd's port 2379 when none).
fn target(url: &str) -> Result<Target, ClusterError> {
    let invalid = |why: &str| ClusterError::Etcd(format!("etcd endpoint {url}: {why}"));
    let rest = match url.split_once("://") {
        Some(("https", rest)) => rest,
        Some(_) => {
            return Err(invalid(
                "with etcd_tls_ca_file set, the endpoints must be https://",
            ))
        }
        None => url,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("unclosed ["))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    let port = match port {
        Some(port) => port.parse().map_err(|_| invalid("bad port"))?,
        None => 2379,
    };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| invalid("the host is not a DNS name or an IP address"))?;
    Ok(Target {
        url: url.to_owned(),
        host: host.to_owned(),
        port,
        name,
    })
}

/// Dials the endpoints in turn and does the TLS handshake with the files
/// as they are now.
#[derive(Clone)]
struct Connector {
    targets: Arc<[Target]>,
    /// The endpoint to try first: the one that answered last.
    next: Arc<AtomicUsize>,
    tls: Arc<ReloadingClientConfig>,
    failure: LastFailure,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<EtcdStream>>> + Send>>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<EtcdStream>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

impl Connector {
    async fn connect(&self) -> io::Result<EtcdStream> {
        let count = self.targets.len();
        let start = self.next.load(Ordering::Relaxed);
        let mut failures = Vec::with_capacity(count);
        for offset in 0..count {
            let index = (start + offset) % count;
            let target = &self.targets[index];
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_to(target)).await {
                Ok(Ok(stream)) => {
                    self.next.store(index, Ordering::Relaxed);
                    return Ok(stream);
                }
                Ok(Err(error)) => failures.push(format!("{}: {}", target.url, explained(&error))),
                Err(_) => failures.push(format!(
                    "{}: no answer within {CONNECT_TIMEOUT:?}",
                    target.url
                )),
            }
        }
        // Said here, where the cause is known: above, tonic and etcd-client
        // may only say "transport error".
        let failures = failures.join("; ");
        self.failure.set(failures.clone());
        Err(io::Error::other(failures))
    }

    async fn connect_to(&self, target: &Target) -> io::Result<EtcdStream> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        tcp.set_nodelay(true)?;
        let mut tls = TlsConnector::from(self.tls.current())
            .connect(target.name.clone(), tcp)
            .await?;
        // With TLS 1.3 the handshake is done on this side before etcd has
        // checked this node's certificate: a refusal comes as an alert
        // afterwards, and once the HTTP/2 preface is written it races a
        // connection reset, which is all hyper would report. etcd speaks
        // first (its HTTP/2 SETTINGS), so the first read, before anything
        // is written, says whether the certificate was taken. Its bytes are
        // handed to HTTP/2 unchanged.
        let mut first = vec![0; 1024];
        match tokio::time::timeout(FIRST_READ_TIMEOUT, tls.read(&mut first)).await {
            Ok(Ok(0)) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "etcd closed the connection right after the TLS handshake",
            )),
            Ok(Ok(read)) => {
                first.truncate(read);
                Ok(EtcdStream {
                    inner: tls,
                    first,
                    at: 0,
                })
            }
            Ok(Err(error)) => Err(error),
            // A slow server: HTTP/2 finds out.
            Err(_) => Ok(EtcdStream {
                inner: tls,
                first: Vec::new(),
                at: 0,
            }),
        }
    }
}

/// A connection's failure, naming the option to look at when it is TLS's.
fn explained(error: &io::Error) -> String {
    crate::tls::explain_failure(
        error,
        "etcd",
        "etcd_tls_cert_file",
        "etcd's --trusted-ca-file",
        "etcd_tls_ca_file",
    )
    .unwrap_or_else(|| error.to_string())
}

/// One TLS connection to etcd: the bytes of the first read, then the rest.
pub(crate) struct EtcdStream {
    inner: TlsStream<TcpStream>,
    first: Vec<u8>,
    at: usize,
}

impl tokio::io::AsyncRead for EtcdStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.first.len() {
            let count = buf.remaining().min(this.first.len() - this.at);
            buf.put_slice(&this.first[this.at..this.at + count]);
            this.at += count;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for EtcdStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_and_without_scheme_and_port() {
        let parsed = target("https://etcd-0.etcd:2380").unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("etcd-0.etcd", 2380));
        let parsed = target("127.0.0.1").unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("127.0.0.1", 2379));
        let parsed = target("https://[::1]:2379/").unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("::1", 2379));
        assert!(target("http://etcd:2379").is_err());
        assert!(target("https://:2379").is_err());
        assert!(target("https://etcd:port").is_err());
    }
}
