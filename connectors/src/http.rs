//! The HTTP plumbing the adapters share: one client per connector, bodies
//! read with a size cap (a channel can send anything, CHANNELS.md F), the
//! `Retry-After` header, and transport failures as retryable errors that
//! carry no URL (a query string may name a SKU, never a secret, but a
//! token endpoint's error must not echo a form).

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::{Client, RequestBuilder, Response};
use serde_json::Value;

use crate::outcome::ConnectorError;

/// The largest response body read; a bigger one is a failed call.
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// When a channel says "retry" but not when (a 5xx, a lost reply).
pub const DEFAULT_RETRY: Duration = Duration::from_secs(1);

/// A client that never follows redirects (a write is not re-sent to
/// another host) and gives up on a call after `timeout`.
pub fn client(timeout: Duration) -> Result<Client, ConnectorError> {
    Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| ConnectorError::Config(format!("http client: {}", error.without_url())))
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON, `Null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// At most 300 characters of the body, for an error message.
    pub fn excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(300).collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn header_f64(&self, name: &str) -> Option<f64> {
        self.header(name)
            .and_then(|value| value.trim().parse::<f64>().ok())
            .filter(|value| value.is_finite())
    }

    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers)
    }
}

/// Sends and reads the reply. A failure to send, a timeout or a lost reply
/// is retryable: every write here is absolute and keyed, so sending it
/// again is safe (item 18).
pub async fn send(request: RequestBuilder) -> Result<Reply, ConnectorError> {
    let response = request.send().await.map_err(transport)?;
    read(response).await
}

async fn read(mut response: Response) -> Result<Reply, ConnectorError> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(ConnectorError::retry(
                DEFAULT_RETRY,
                format!("response body over {BODY_LIMIT} bytes (status {status})"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn transport(error: reqwest::Error) -> ConnectorError {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "no reply"
    };
    ConnectorError::retry(DEFAULT_RETRY, format!("{kind}: {}", error.without_url()))
}

/// `Retry-After` as seconds or as an HTTP-date (RFC 9110 10.2.3).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::try_from_secs_f64(seconds.min(86_400.0)).ok())
            .flatten();
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after", HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(500)));
        headers.insert("retry-after", HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        headers.insert("retry-after", HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(27) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        let past = "Sun, 06 Nov 1994 08:49:37 GMT";
        headers.insert("retry-after", HeaderValue::from_static(past));
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
    }

    #[test]
    fn bodies_that_are_not_json_are_null() {
        let reply = Reply {
            status: 502,
            headers: HeaderMap::new(),
            body: b"<html>bad gateway".to_vec(),
        };
        assert_eq!(reply.json(), Value::Null);
        assert!(reply.excerpt().starts_with("<html>"));
    }
}
