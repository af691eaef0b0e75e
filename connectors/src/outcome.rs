//! What a push came to, and the classification every adapter shares
//! (CHANNELS.md item 19): retry only the retryable classes, send validation
//! errors to dead letters, and never retry a stale compare blindly (item 18).

use std::time::Duration;

/// The result of one pushed item, in the order the items were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The channel applied the value.
    Applied,
    /// Accepted for processing, *not* applied (Amazon's `ACCEPTED`, a feed
    /// submitted, CHANNELS.md B.1 and F.11): the worker confirms it with
    /// [`crate::Connector::read`] before counting it acknowledged.
    Accepted { submission_id: String },
    /// The channel refused the compare-and-set: it shows `remote`, read
    /// back by the connector. The worker recomputes and sends again with a
    /// new key (A.6); the connector never retries it itself.
    Conflict { remote: i64 },
    /// Worth sending again, not before `after` (the channel's hint, or the
    /// local limiter's wait when the budget is spent). The worker adds its
    /// own backoff with [`crate::backoff::retry_delay`].
    Retry { after: Duration, reason: String },
    /// The channel refused the item itself (validation): a dead letter.
    Invalid { code: String, message: String },
}

impl PushOutcome {
    pub fn retry(after: Duration, reason: impl Into<String>) -> Self {
        PushOutcome::Retry {
            after,
            reason: reason.into(),
        }
    }

    pub fn invalid(code: impl Into<String>, message: impl Into<String>) -> Self {
        PushOutcome::Invalid {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn is_applied(&self) -> bool {
        matches!(self, PushOutcome::Applied)
    }
}

/// Why a call other than a push (a read-back, a token) failed, or why a
/// connector could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    #[error("retry after {after:?}: {reason}")]
    Retry { after: Duration, reason: String },
    #[error("refused ({code}): {message}")]
    Invalid { code: String, message: String },
    #[error("configuration: {0}")]
    Config(String),
}

impl ConnectorError {
    pub fn retry(after: Duration, reason: impl Into<String>) -> Self {
        ConnectorError::Retry {
            after,
            reason: reason.into(),
        }
    }

    pub fn invalid(code: impl Into<String>, message: impl Into<String>) -> Self {
        ConnectorError::Invalid {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The same failure as the outcome of each item it stopped.
    pub fn to_outcome(&self) -> PushOutcome {
        match self {
            ConnectorError::Retry { after, reason } => PushOutcome::retry(*after, reason.clone()),
            ConnectorError::Invalid { code, message } => {
                PushOutcome::invalid(code.clone(), message.clone())
            }
            ConnectorError::Config(message) => PushOutcome::invalid("CONFIG", message.clone()),
        }
    }
}

/// The class of a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Send again later (429, 5xx, timeouts, THROTTLED, ...).
    Retryable,
    /// The request itself is wrong: a dead letter.
    Invalid,
}

/// The HTTP status table every adapter starts from (item 19, B.2, C.3,
/// D.5). 401 and 403 are retryable: a credential is the account's problem,
/// not the item's, and once it is fixed the push goes through without a
/// replay (the adapters refresh their token once before they say so).
pub fn http_status_class(status: u16) -> Class {
    match status {
        401 | 403 | 408 | 409 | 423 | 425 | 429 => Class::Retryable,
        500..=599 => Class::Retryable,
        _ => Class::Invalid,
    }
}

/// Statuses above this are errors; 2xx is the only success (3xx is not
/// followed: a channel API never redirects a write).
pub fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_classification_table() {
        let table = [
            (400, Class::Invalid),
            (401, Class::Retryable),
            (403, Class::Retryable),
            (404, Class::Invalid),
            (408, Class::Retryable),
            (413, Class::Invalid),
            (415, Class::Invalid),
            (422, Class::Invalid),
            (429, Class::Retryable),
            (500, Class::Retryable),
            (502, Class::Retryable),
            (503, Class::Retryable),
            (504, Class::Retryable),
        ];
        for (status, class) in table {
            assert_eq!(http_status_class(status), class, "{status}");
        }
        assert!(is_success(200) && is_success(202) && !is_success(302));
    }

    #[test]
    fn errors_become_outcomes() {
        assert_eq!(
            ConnectorError::retry(Duration::from_secs(1), "503").to_outcome(),
            PushOutcome::retry(Duration::from_secs(1), "503")
        );
        assert!(matches!(
            ConnectorError::Config("x".into()).to_outcome(),
            PushOutcome::Invalid { .. }
        ));
    }
}
