//! The error type of cluster coordination (membership, ownership).

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// etcd could not be reached or refused a request.
    #[error("etcd: {0}")]
    Etcd(String),
    /// Another process runs under this node id: its member record, under a
    /// lease that has not expired, names another incarnation.
    #[error("node id {node_id} is in use by another process (incarnation {incarnation}, endpoint {endpoint})")]
    NodeIdInUse {
        node_id: String,
        incarnation: String,
        endpoint: String,
    },
    /// A certificate, key or CA file could not be read or used. The text
    /// names the file and what is wrong with it, never its contents.
    #[error("TLS: {0}")]
    Tls(String),
    /// A stored cluster record could not be read.
    #[error("malformed cluster record {key}: {reason}")]
    Malformed { key: String, reason: String },
}

impl From<etcd_client::Error> for ClusterError {
    fn from(error: etcd_client::Error) -> Self {
        ClusterError::Etcd(error.to_string())
    }
}
