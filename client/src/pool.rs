//! Channels per endpoint: a few HTTP/2 connections to each node, opened on
//! first use and kept, shared by every caller of the router.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::ClientError;

/// One endpoint's channels.
pub(crate) struct Channels {
    channels: Vec<Channel>,
    next: AtomicUsize,
}

impl Channels {
    pub(crate) fn pick(&self) -> Channel {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[at].clone()
    }
}

/// `per_endpoint` lazily connected channels to each endpoint it is asked
/// for, round robin; TLS (with the same CA and client identity for every
/// node, the server name taken from each endpoint's host) for https://.
pub struct ChannelPool {
    per_endpoint: usize,
    tls: Option<ClientTlsConfig>,
    connect_timeout: Duration,
    endpoints: RwLock<HashMap<Arc<str>, Arc<Channels>>>,
}

impl ChannelPool {
    pub fn new(
        per_endpoint: usize,
        tls: Option<ClientTlsConfig>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            per_endpoint: per_endpoint.max(1),
            tls,
            connect_timeout,
            endpoints: RwLock::new(HashMap::new()),
        }
    }

    /// A channel to `endpoint`, opening the endpoint's channels on first
    /// use (no connection is made before a call needs one).
    pub fn channel(&self, endpoint: &Arc<str>) -> Result<Channel, ClientError> {
        Ok(self.channels(endpoint)?.pick())
    }

    /// `endpoint`'s channels, opened on first use.
    pub(crate) fn channels(&self, endpoint: &Arc<str>) -> Result<Arc<Channels>, ClientError> {
        if let Some(channels) = self.endpoints.read().get(endpoint) {
            return Ok(Arc::clone(channels));
        }
        let opened = Arc::new(self.open(endpoint)?);
        Ok(Arc::clone(
            self.endpoints
                .write()
                .entry(Arc::clone(endpoint))
                .or_insert(opened),
        ))
    }

    fn open(&self, endpoint: &str) -> Result<Channels, ClientError> {
        let mut builder = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|source| ClientError::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
                source,
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        let https = endpoint
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        if let (true, Some(tls)) = (https, &self.tls) {
            builder = builder
                .tls_config(tls.clone())
                .map_err(|source| ClientError::Tls {
                    endpoint: endpoint.to_owned(),
                    source,
                })?;
        }
        // One HTTP/2 connection per channel.
        let channels = (0..self.per_endpoint)
            .map(|_| builder.connect_lazy())
            .collect();
        Ok(Channels {
            channels,
            next: AtomicUsize::new(0),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_endpoint_is_refused_and_good_ones_are_opened_once() {
        let pool = ChannelPool::new(2, None, Duration::from_secs(1));
        assert!(matches!(
            pool.channel(&Arc::from("not a uri")),
            Err(ClientError::InvalidEndpoint { .. })
        ));
        let endpoint: Arc<str> = Arc::from("http://127.0.0.1:1");
        pool.channel(&endpoint).unwrap();
        pool.channel(&endpoint).unwrap();
        assert_eq!(pool.endpoints.read().len(), 1);
    }
}
