//! Secrets in the configuration: printed redacted everywhere.

use serde::{Deserialize, Serialize};

/// A connection URL whose password is never printed: its `Debug`, its
/// `Display` and its serialization (what `skuld config` shows) replace the
/// password with `***`; only [`SecretUrl::expose`] gives it whole, to the
/// code that connects.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// No URL was given.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// The URL with the password of its user info (`scheme://user:pass@`),
    /// any `password=` parameter (URL query or key=value form), and a bare
    /// token as user info (`nats://token@host`, every scheme but
    /// PostgreSQL's, where a bare user name is no secret) masked, in each
    /// URL of a comma-separated list.
    pub fn redacted(&self) -> String {
        self.0
            .split(',')
            .map(redact_one)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn redact_one(url: &str) -> String {
    let mut text = url.to_owned();
    if let Some(scheme_end) = text.find("://") {
        let rest = scheme_end + 3;
        let authority_end = text[rest..]
            .find(['/', '?'])
            .map_or(text.len(), |end| rest + end);
        if let Some(at) = text[rest..authority_end].rfind('@') {
            let user_info = rest..rest + at;
            let scheme = text[..scheme_end].to_ascii_lowercase();
            match text[user_info.clone()].find(':') {
                Some(colon) => {
                    text.replace_range(user_info.start + colon + 1..user_info.end, "***")
                }
                None if !scheme.starts_with("postgres") => text.replace_range(user_info, "***"),
                None => {}
            }
        }
    }
    let mut redacted = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(found) = rest.find("password=") {
        let value = found + "password=".len();
        redacted.push_str(&rest[..value]);
        redacted.push_str("***");
        let end = rest[value..]
            .find(['&', ' '])
            .map_or(rest.len(), |end| value + end);
        rest = &rest[end..];
    }
    redacted.push_str(rest);
    redacted
}

impl std::str::FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}
