//! The accept loops of the gRPC listeners: TCP accepted here, a client
//! address (an IPv6 /64 counts as one) over its connection budget, or a
//! listener at its total, closed at once, the TLS handshake
//! (when the listener has TLS) run in a task of its own under a timeout,
//! and the finished connections handed to tonic as a stream.
//!
//! Handshakes run beside the accept loop, not in it: one client that opens
//! a socket and says nothing must not stall every connection behind it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tls::ServerTls;

/// Handshaken connections not yet taken by the server, at most.
const READY_CONNECTIONS: usize = 64;

/// How a listener accepts.
#[derive(Clone)]
pub struct AcceptPolicy {
    /// `client` or `peer`, in metrics and logs.
    pub listener: &'static str,
    /// Open connections one remote address may hold at once.
    pub max_per_client: usize,
    /// Open connections of the listener at once, whoever holds them: many
    /// addresses together must not use up the process's file descriptors
    /// (the store's, etcd's and the peers' connections need them too).
    pub max_total: usize,
    pub handshake_timeout: Duration,
}

/// A connection counted against its client address's budget until it is
/// dropped.
pub struct Counted<T> {
    inner: T,
    _slot: Slot,
}

struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    _total: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
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

/// The same connection info as a bare TCP stream, so that tonic's TLS
/// wrapper exposes the peer's certificates (`Request::peer_certs`) and
/// address as usual.
impl Connected for Counted<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Open connections by client address.
#[derive(Clone, Default)]
struct Budget {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Why a connection was closed unserved.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    PerClient,
    Total,
}

impl Budget {
    fn take(
        &self,
        ip: IpAddr,
        max: usize,
        total: &Arc<tokio::sync::Semaphore>,
    ) -> Result<Slot, Refused> {
        let ip = client_of(ip);
        let mut open = self.open.lock();
        if open.get(&ip).copied().unwrap_or(0) >= max {
            return Err(Refused::PerClient);
        }
        let permit = Arc::clone(total)
            .try_acquire_owned()
            .map_err(|_| Refused::Total)?;
        *open.entry(ip).or_insert(0) += 1;
        Ok(Slot {
            ip,
            open: Arc::clone(&self.open),
            _total: permit,
        })
    }
}

/// The address a budget is kept for: an IPv6 client is its /64 (one host
/// commonly has the whole prefix), an IPv4 client its address.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// Plaintext connections of `listener`, until `stop`.
pub fn plain(
    listener: TcpListener,
    policy: AcceptPolicy,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<Counted<TcpStream>>> {
    let (ready, incoming) = mpsc::channel(READY_CONNECTIONS);
    tokio::spawn(accept_loop(listener, policy, stop, move |connection, _| {
        let ready = ready.clone();
        async move {
            let _ = ready.send(Ok(connection)).await;
        }
    }));
    ReceiverStream::new(incoming)
}

/// TLS connections of `listener`, each handshaken with the newest
/// configuration of `tls`, until `stop`.
pub fn tls(
    listener: TcpListener,
    policy: AcceptPolicy,
    tls: Arc<ServerTls>,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<tokio_rustls::server::TlsStream<Counted<TcpStream>>>> {
    let (ready, incoming) = mpsc::channel(READY_CONNECTIONS);
    let timeout = policy.handshake_timeout;
    let name = policy.listener;
    tokio::spawn(accept_loop(
        listener,
        policy,
        stop,
        move |connection, remote| {
            let ready = ready.clone();
            let acceptor = tls.acceptor();
            async move {
                match tokio::time::timeout(timeout, acceptor.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        metrics::counter!("skuld_tls_handshake_failures_total", "listener" => name, "reason" => "refused")
                        .increment(1);
                        // The peer's fault, and a scanner can cause any number:
                        // debug, not warn.
                        tracing::debug!(listener = name, %remote, %error, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!("skuld_tls_handshake_failures_total", "listener" => name, "reason" => "timeout")
                        .increment(1);
                        tracing::debug!(listener = name, %remote, "TLS handshake timed out");
                    }
                }
            }
        },
    ));
    ReceiverStream::new(incoming)
}

/// Accepts until `stop` (or until the server stops taking connections),
/// running `serve` for each connection within budget in a task of its own.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    policy: AcceptPolicy,
    stop: CancellationToken,
    serve: F,
) where
    F: Fn(Counted<TcpStream>, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let budget = Budget::default();
    let total = Arc::new(tokio::sync::Semaphore::new(policy.max_total));
    let mut last_accept_warning: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: the next accept may
                // work once connections close; spinning would not help, and
                // neither would a warning every 50 ms.
                if last_accept_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(listener = policy.listener, %error, "accept failed");
                    last_accept_warning = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match budget.take(remote.ip(), policy.max_per_client, &total) {
            Ok(slot) => slot,
            Err(refused) => {
                let reason = match refused {
                    Refused::PerClient => "per_client",
                    Refused::Total => "total",
                };
                metrics::counter!("skuld_connections_refused_total", "listener" => policy.listener, "reason" => reason)
                    .increment(1);
                tracing::debug!(listener = policy.listener, %remote, reason, "connection over budget: closed");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(
            Counted {
                inner: stream,
                _slot: slot,
            },
            remote,
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_budget_back_as_connections_close() {
        let budget = Budget::default();
        let total = Arc::new(tokio::sync::Semaphore::new(100));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let first = budget.take(ip, 2, &total).unwrap();
        let _second = budget.take(ip, 2, &total).unwrap();
        assert_eq!(budget.take(ip, 2, &total).err(), Some(Refused::PerClient));
        assert!(budget.take([10, 0, 0, 2].into(), 2, &total).is_ok());
        drop(first);
        assert!(budget.take(ip, 2, &total).is_ok());
    }

    #[test]
    fn the_listener_total_holds_across_addresses() {
        let budget = Budget::default();
        let total = Arc::new(tokio::sync::Semaphore::new(2));
        let a = budget.take([10, 0, 0, 1].into(), 10, &total).unwrap();
        let _b = budget.take([10, 0, 0, 2].into(), 10, &total).unwrap();
        assert_eq!(
            budget.take([10, 0, 0, 3].into(), 10, &total).err(),
            Some(Refused::Total)
        );
        // A refusal by the total leaves the address's own count alone.
        drop(a);
        assert!(budget.take([10, 0, 0, 3].into(), 1, &total).is_ok());
    }

    #[test]
    fn one_ipv6_prefix_is_one_client() {
        let budget = Budget::default();
        let total = Arc::new(tokio::sync::Semaphore::new(100));
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_prefix: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_prefix: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = budget.take(first, 1, &total).unwrap();
        assert_eq!(
            budget.take(same_prefix, 1, &total).err(),
            Some(Refused::PerClient)
        );
        assert!(budget.take(other_prefix, 1, &total).is_ok());
    }
}
