//! What setting up a router fails with; calls fail with their own
//! `tonic::Status`.

/// A router cannot be built from its options.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoint given: a router needs at least one node to start from")]
    NoEndpoint,
    #[error("invalid endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot use the TLS settings for {endpoint}: {source}")]
    Tls {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}
