//! turmoil's simulated TCP as tonic's transport, both ways.
//!
//! turmoil ships no tonic glue on purpose (turmoil PR #189: users copy it),
//! so this is the shape of its `examples/grpc`: an accepted stream wrapped
//! to implement tonic's [`Connected`], and a connector for
//! `Endpoint::connect_with_connector_lazy`, so a channel dials through
//! turmoil's DNS (`http://node-1:7070`) and never through getaddrinfo.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Channel, Endpoint, Uri};

/// A simulated TCP connection a server accepted.
pub struct Accepted(pub turmoil::net::TcpStream);

impl Connected for Accepted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        TcpConnectInfo {
            local_addr: self.0.local_addr().ok(),
            remote_addr: self.0.peer_addr().ok(),
        }
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(context, buffer)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(context, buffer)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(context)
    }
}

/// The connections `listener` accepts, as the incoming stream of
/// `serve_with_incoming`. An accept error ends nothing: tonic logs it and
/// polls again, as with a real listener.
pub fn incoming(
    listener: turmoil::net::TcpListener,
) -> impl Stream<Item = io::Result<Accepted>> + Send + 'static {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| Accepted(stream));
        Some((accepted, listener))
    })
}

/// Binds `0.0.0.0:port` on the current simulated host and returns its
/// incoming connections.
pub async fn listen(port: u16) -> io::Result<impl Stream<Item = io::Result<Accepted>> + Send> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(incoming(listener))
}

/// What the connector hands hyper: a simulated stream as hyper I/O.
pub type Dialed = TokioIo<turmoil::net::TcpStream>;

/// Dials `uri`'s host and port through the simulated network (port 80
/// when the URI names none, as for `http://`).
pub async fn dial(uri: Uri) -> io::Result<Dialed> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} has no host")))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
    Ok(TokioIo::new(stream))
}

/// A tower connector for `Endpoint::connect_with_connector(_lazy)`.
pub fn connector() -> impl tower::Service<
    Uri,
    Response = Dialed,
    Error = io::Error,
    Future = Pin<Box<dyn std::future::Future<Output = io::Result<Dialed>> + Send>>,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|uri: Uri| Box::pin(dial(uri)) as Pin<Box<_>>)
}

/// A lazy channel to `endpoint` (`http://host:port`) over the simulated
/// network: it connects on first use and again after a broken connection,
/// like a production channel.
pub fn channel(
    endpoint: &str,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(connect_timeout)
        .connect_with_connector_lazy(connector()))
}
