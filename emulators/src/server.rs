//! The HTTP front door every emulator shares: loopback listener, hyper HTTP/1
//! connections, the recorder, and the faults that act on whole requests
//! (latency, injected 5xx, duplicate, lost reply). hyper is used directly, not
//! `axum::serve`, because a lost reply needs the connection closed without a
//! response, which only a service error does.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::Service;

use crate::faults::Faults;
use crate::recorder::{Exchange, Recorder};

/// Paths under this prefix are the control API: never faulted, never recorded.
pub const CONTROL_PREFIX: &str = "/_control";

/// Largest request body read (Walmart answers 413 above 5 MB itself, C.2).
const BODY_READ_LIMIT: usize = 32 * 1024 * 1024;

/// A response extension: this request was refused for a rate limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Throttled;

/// A response extension: apply, then close the connection without this
/// reply (an emulator's own lost-reply switch, e.g. SAP's for creates only).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropReply;

/// Builds the channel's own error response for an injected failure.
pub(crate) type InjectedError = fn(StatusCode) -> Response<Body>;

/// What the front door shares with its emulator.
pub(crate) struct FrontDoor {
    pub recorder: Arc<Recorder>,
    pub faults: Arc<Faults>,
    pub injected_error: InjectedError,
}

#[derive(Debug, thiserror::Error)]
#[error("reply dropped by an injected fault")]
struct ReplyDropped;

/// A server running on loopback until shut down.
pub(crate) struct RunningServer {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The emulator's own workers (delayed applies, feed processing).
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    pub fn add_background(&mut self, task: tokio::task::JoinHandle<()>) {
        self.background.push(task);
    }

    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        for task in self.background {
            task.abort();
            let _ = task.await;
        }
    }
}

pub(crate) async fn serve(
    router: Router,
    front: Arc<FrontDoor>,
    port: u16,
) -> std::io::Result<RunningServer> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let (shutdown, mut shutdown_seen) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _peer)) = accepted else { continue };
                    let router = router.clone();
                    let front = front.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            handle(front.clone(), router.clone(), request)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                _ = shutdown_seen.changed() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.shutdown().await;
    });
    Ok(RunningServer {
        addr,
        shutdown,
        task,
        background: Vec::new(),
    })
}

async fn dispatch(mut router: Router, request: Request<Body>) -> Response<Body> {
    match router.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

async fn handle(
    front: Arc<FrontDoor>,
    router: Router,
    request: Request<Incoming>,
) -> Result<Response<Body>, ReplyDropped> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let method = parts.method.to_string();
    let body = match axum::body::to_bytes(Body::new(body), BODY_READ_LIMIT).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return Ok((front.injected_error)(StatusCode::PAYLOAD_TOO_LARGE));
        }
    };
    if path.starts_with(CONTROL_PREFIX) {
        let request = Request::from_parts(parts, Body::from(body));
        return Ok(dispatch(router, request).await);
    }
    let faults = front.faults.for_request();
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let mut exchange = Exchange {
        method: &method,
        path: &path,
        query: query.as_deref(),
        body: &body,
        status: 0,
        throttled: false,
        fault_injected: false,
        reply_dropped: false,
    };
    if let Some(status) = faults.fail_with {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let response = (front.injected_error)(status);
        exchange.status = response.status().as_u16();
        exchange.fault_injected = true;
        front.recorder.record(exchange);
        return Ok(response);
    }
    if faults.duplicate {
        let copy = Request::from_parts(parts.clone(), Body::from(body.clone()));
        let first = dispatch(router.clone(), copy).await;
        front.recorder.count_duplicate();
        let mut first_exchange = exchange;
        first_exchange.status = first.status().as_u16();
        first_exchange.throttled = first.extensions().get::<Throttled>().is_some();
        front.recorder.record(first_exchange);
    }
    let response = dispatch(router, Request::from_parts(parts, Body::from(body.clone()))).await;
    exchange.status = response.status().as_u16();
    exchange.throttled = response.extensions().get::<Throttled>().is_some();
    let drop_reply = faults.drop_reply || response.extensions().get::<DropReply>().is_some();
    exchange.reply_dropped = drop_reply;
    front.recorder.record(exchange);
    if drop_reply {
        return Err(ReplyDropped);
    }
    Ok(response)
}
