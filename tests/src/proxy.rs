//! A TCP proxy that can black-hole its traffic: the network partition of the
//! fault tests, between one node and etcd or PostgreSQL.
//!
//! While cut, nothing flows in either direction and nothing is closed:
//! bytes already read wait in the proxy, new connections are accepted but
//! not connected onward, as when packets are dropped on the way. Both ends
//! see silence, never a reset, so they notice only by their own timeouts
//! (keep-alive pings, TCP user timeouts), as they would in a real partition.
//! When healed, everything held flows again, like TCP retransmitting after
//! the partition ends.
//!
//! The proxy runs on a runtime of its own, so a test that blocks its own
//! threads (a blocking restart of etcd, say) does not stall the traffic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    listen: SocketAddr,
    cut: watch::Sender<bool>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .context("cannot build the proxy's runtime")?;
        // Bound here (this may run inside a test's runtime, where blocking
        // on another runtime is not allowed), served by the proxy's own.
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind the proxy")?;
        listener.set_nonblocking(true)?;
        let listen = listener.local_addr()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let (cut, cut_rx) = watch::channel(false);
        let accepted = Arc::new(AtomicU64::new(0));
        runtime.spawn(accept_loop(listener, target, cut_rx, Arc::clone(&accepted)));
        Ok(Self {
            listen,
            cut,
            accepted,
            runtime: Some(runtime),
        })
    }

    /// The address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Black-holes all traffic until [`FaultProxy::heal`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }

    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    cut: watch::Receiver<bool>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let _ = inbound.set_nodelay(true);
        tokio::spawn(relay(inbound, target, cut.clone()));
    }
}

/// Waits while the link is cut; false once the proxy is gone.
async fn open(cut: &mut watch::Receiver<bool>) -> bool {
    cut.wait_for(|cut| !*cut).await.is_ok()
}

async fn relay(inbound: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    // A connection made during a cut hangs, as if the SYN were dropped.
    if !open(&mut cut).await {
        return;
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = outbound.set_nodelay(true);
    let (from_client, to_client) = inbound.into_split();
    let (from_server, to_server) = outbound.into_split();
    tokio::select! {
        _ = pump(from_client, to_server, cut.clone()) => {}
        _ = pump(from_server, to_client, cut) => {}
    }
}

/// Copies one direction, holding every chunk while the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if !open(&mut cut).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // Cut while waiting: stop reading, as a dropped link would.
            _ = cut.wait_for(|cut| *cut) => continue,
        };
        let Ok(count) = read else { return };
        if count == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if !open(&mut cut).await {
            return;
        }
        if to.write_all(&buffer[..count]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_cut_holds_traffic_and_a_heal_delivers_it() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let target = echo.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut socket, _)) = echo.accept().await {
                    tokio::spawn(async move {
                        let mut buffer = [0u8; 1024];
                        while let Ok(count) = socket.read(&mut buffer).await {
                            if count == 0 || socket.write_all(&buffer[..count]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            let proxy = FaultProxy::start(target).unwrap();
            let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
            let mut answer = [0u8; 5];
            client.write_all(b"hello").await.unwrap();
            client.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"hello");

            proxy.cut();
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(b"again").await.unwrap();
            let silent =
                tokio::time::timeout(Duration::from_millis(300), client.read_exact(&mut answer))
                    .await;
            assert!(silent.is_err(), "traffic flowed through a cut");
            proxy.heal();
            tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut answer))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&answer, b"again");
            drop(proxy);
        });
    }
}
