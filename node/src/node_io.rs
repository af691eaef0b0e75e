//! What a node reaches the world through, injected: the connections its
//! servers take, the dialer of its peer hop, its etcd client and its store.
//!
//! Production builds a [`NodeIo`] from bound [`Listeners`]: TCP accept
//! loops with their connection budgets, TLS from the configuration's files
//! (mTLS on the peer hop), etcd from `etcd_endpoints`, PostgreSQL from
//! `[postgres]`, as before. The deterministic simulation builds one over its
//! simulated network instead ([`Incoming::stream`], [`Peers::plaintext`],
//! [`EtcdSource::Client`], an in-memory store), so the real `server::run`
//! runs under it. Plaintext peers exist only here: no configuration file
//! can ask for them, and cluster mode from a configuration keeps requiring
//! peer TLS.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt as _};
use hyper_util::rt::TokioIo;
use skuld_cluster::Store;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::Uri;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt as _};

use crate::environment::Environment;
use crate::server::Listeners;

/// Any byte stream a server can take or a dialer can open.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

/// The error of a dialer.
pub type DialError = Box<dyn std::error::Error + Send + Sync>;

/// Everything a node does I/O through (besides its data directory and the
/// HTTP clients of its connectors and sinks).
pub struct NodeIo {
    /// Connections to the client API.
    pub grpc: Incoming,
    /// The peer hop (cluster mode): how other nodes reach this one and how
    /// this one reaches them. `None` outside cluster mode.
    pub peers: Option<Peers>,
    /// Probes, metrics, the JSON door, inbound webhooks; `None` serves no
    /// HTTP at all.
    pub http: Option<HttpListener>,
    /// The cluster's etcd (cluster mode).
    pub etcd: EtcdSource,
    /// The cluster's store, instead of PostgreSQL (cluster mode): neither
    /// connected to nor migrated. Outside cluster mode the embedded store
    /// in `data_dir` is used whatever this says.
    pub store: Option<Arc<dyn Store>>,
    /// The node's wall clock and id source.
    pub environment: Environment,
}

impl From<Listeners> for NodeIo {
    /// Production's: TLS from the configuration's files, etcd and
    /// PostgreSQL from its endpoints, the system clock and random ids.
    fn from(listeners: Listeners) -> Self {
        Self {
            grpc: Incoming::listener(listeners.grpc),
            peers: listeners
                .peer
                .map(|listener| Peers(PeersKind::Tls(listener))),
            http: Some(HttpListener(HttpKind::Tcp(listeners.http))),
            etcd: EtcdSource::Endpoints,
            store: None,
            environment: Environment::default(),
        }
    }
}

/// Where a server's connections come from.
pub struct Incoming {
    pub(crate) local_addr: SocketAddr,
    pub(crate) kind: IncomingKind,
}

pub(crate) enum IncomingKind {
    /// Accepted by the node's accept loop (`listen.rs`): per-client and
    /// total budgets, TLS when configured.
    Listener(TcpListener),
    /// Served as they come, in plaintext.
    Stream(AcceptedStream),
}

pub(crate) type AcceptedStream = Pin<Box<dyn Stream<Item = io::Result<Accepted>> + Send>>;

impl Incoming {
    /// A bound TCP listener, accepted as in production.
    pub fn listener(listener: TcpListener) -> Self {
        // A bound listener has its address; the unspecified one is only a
        // fallback for logs should the OS not say.
        let local_addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Self {
            local_addr,
            kind: IncomingKind::Listener(listener),
        }
    }

    /// Connections that something else accepts (the simulation's network,
    /// a `TcpListenerStream`), served in plaintext as they come, without
    /// the accept loop's budgets. `local_addr` is the address they arrive
    /// at: logged, written to the ports file, and the client endpoint's
    /// port when none is advertised.
    pub fn stream<S, C>(local_addr: SocketAddr, connections: S) -> Self
    where
        S: Stream<Item = io::Result<C>> + Send + 'static,
        C: Connected<ConnectInfo = TcpConnectInfo> + Connection,
    {
        let connections = connections.map(|connection| {
            connection.map(|connection| {
                let info = connection.connect_info();
                Accepted {
                    io: Box::new(connection),
                    info,
                }
            })
        });
        Self {
            local_addr,
            kind: IncomingKind::Stream(Box::pin(connections)),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// A connection of an injected stream, with the addresses it was accepted
/// with (tonic puts them in each request's extensions).
pub struct Accepted {
    io: Box<dyn Connection>,
    info: TcpConnectInfo,
}

impl Connected for Accepted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The peer hop of a cluster node, both ways.
pub struct Peers(pub(crate) PeersKind);

pub(crate) enum PeersKind {
    /// Production's: the peer listener and the peer channels on mTLS from
    /// the configuration's files; callers must present a certificate that
    /// names a current member.
    Tls(TcpListener),
    /// No TLS either way and no caller check: for a simulated network,
    /// where every host is a node of the test.
    Plaintext { incoming: Incoming, dialer: Dialer },
}

impl Peers {
    /// Peers in plaintext: other nodes' calls arrive on `incoming`, and
    /// this node reaches them through `dialer` at the `http://` endpoints
    /// they advertise. The certificate checks (of callers, and of this
    /// node's own certificate against its advertised host) do not apply.
    pub fn plaintext(incoming: Incoming, dialer: Dialer) -> Self {
        Self(PeersKind::Plaintext { incoming, dialer })
    }

    pub fn local_addr(&self) -> SocketAddr {
        match &self.0 {
            PeersKind::Tls(listener) => listener
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            PeersKind::Plaintext { incoming, .. } => incoming.local_addr,
        }
    }
}

/// Opens connections to peers for tonic's channels
/// (`Endpoint::connect_with_connector_lazy`): each call is given the peer's
/// endpoint URI and returns a connected byte stream. Cloned once per peer
/// channel.
#[derive(Clone)]
pub struct Dialer(BoxCloneSyncService<Uri, TokioIo<Box<dyn Connection>>, DialError>);

impl Dialer {
    /// A dialer from a tower service, such as
    /// `tower::service_fn(|uri: Uri| async move { .. Ok(TokioIo::new(stream)) })`.
    pub fn new<S, C>(service: S) -> Self
    where
        S: Service<Uri, Response = TokioIo<C>> + Clone + Send + Sync + 'static,
        S::Error: Into<DialError>,
        S::Future: Send + 'static,
        C: Connection,
    {
        let boxed = service
            .map_response(|io: TokioIo<C>| {
                TokioIo::new(Box::new(io.into_inner()) as Box<dyn Connection>)
            })
            .map_err(Into::into);
        Self(BoxCloneSyncService::new(boxed))
    }
}

impl Service<Uri> for Dialer {
    type Response = TokioIo<Box<dyn Connection>>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.0.call(uri)
    }
}

impl fmt::Debug for Dialer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Dialer")
    }
}

/// How the node reaches etcd.
pub enum EtcdSource {
    /// `cluster.etcd_endpoints`, with the configuration's TLS and the
    /// connect options of `Membership::join`.
    Endpoints,
    /// A client built by the caller, over a channel it dials
    /// (`Client::from_channel`, etcd-client's `raw-channel`). The channel's
    /// `Endpoint` must carry the connect timeout and HTTP/2 keep-alive
    /// itself (`ConnectOptions` only shape the endpoints etcd-client builds);
    /// give `from_channel` `skuld_cluster::membership::etcd_connect_options()`
    /// so that calls require a leader as production's do.
    /// Boxed: a client is some 3.7 kB.
    Client(Box<etcd_client::Client>),
}

/// The HTTP server's listener.
pub struct HttpListener(pub(crate) HttpKind);

pub(crate) enum HttpKind {
    Tcp(TcpListener),
    Injected(Box<dyn DynListener>),
}

impl HttpListener {
    /// Any axum listener (the simulation's network).
    pub fn new<L>(listener: L) -> Self
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        Self(HttpKind::Injected(Box::new(listener)))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.0 {
            HttpKind::Tcp(listener) => listener.local_addr(),
            HttpKind::Injected(listener) => listener.local_addr(),
        }
    }
}

/// An axum listener behind a box (axum's trait has an `async fn`, so it
/// cannot be a trait object itself).
pub(crate) trait DynListener: Send + 'static {
    fn accept(&mut self) -> AcceptFuture<'_>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A connection an HTTP listener accepted, and where from.
pub(crate) type AcceptFuture<'a> =
    Pin<Box<dyn Future<Output = (Box<dyn Connection>, SocketAddr)> + Send + 'a>>;

impl<L> DynListener for L
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    fn accept(&mut self) -> AcceptFuture<'_> {
        Box::pin(async move {
            let (io, addr) = axum::serve::Listener::accept(self).await;
            (Box::new(io) as Box<dyn Connection>, addr)
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        axum::serve::Listener::local_addr(self)
    }
}

/// The boxed listener as axum takes it.
pub(crate) struct BoxedListener(pub(crate) Box<dyn DynListener>);

impl axum::serve::Listener for BoxedListener {
    type Io = Box<dyn Connection>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.0.accept().await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}
