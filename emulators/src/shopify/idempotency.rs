//! The `@idempotent(key:)` store (CHANNELS.md A.3): the same key with the same
//! input replays the original result; with another input it is
//! `IDEMPOTENCY_KEY_PARAMETER_MISMATCH`; while the original still runs it is
//! `IDEMPOTENCY_CONCURRENT_REQUEST`. Keys are per app (access token): one app's
//! keys never collide with another's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

#[derive(Debug)]
enum Entry {
    Running {
        fingerprint: Value,
    },
    Done {
        fingerprint: Value,
        payload: Value,
        finished: Instant,
    },
}

/// What a request holding a key may do.
#[derive(Debug, PartialEq)]
pub(crate) enum Claim {
    /// First use: run the mutation, then `finish`.
    Run,
    /// Seen before with the same input: answer with this payload.
    Replay(Value),
    Mismatch,
    Concurrent,
}

#[derive(Debug)]
pub(crate) struct IdempotencyStore {
    entries: HashMap<(String, String), Entry>,
    /// How long a finished key is remembered (A.3: the window's value is
    /// unconfirmed, so it is a setting).
    retention: Duration,
}

impl IdempotencyStore {
    pub fn new(retention: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            retention,
        }
    }

    pub fn claim(&mut self, app: &str, key: &str, fingerprint: &Value) -> Claim {
        let retention = self.retention;
        self.entries.retain(|_, entry| match entry {
            Entry::Running { .. } => true,
            Entry::Done { finished, .. } => finished.elapsed() < retention,
        });
        let slot = (app.to_owned(), key.to_owned());
        match self.entries.get(&slot) {
            None => {
                self.entries.insert(
                    slot,
                    Entry::Running {
                        fingerprint: fingerprint.clone(),
                    },
                );
                Claim::Run
            }
            Some(Entry::Running { fingerprint: seen })
            | Some(Entry::Done {
                fingerprint: seen, ..
            }) if seen != fingerprint => Claim::Mismatch,
            Some(Entry::Running { .. }) => Claim::Concurrent,
            Some(Entry::Done { payload, .. }) => Claim::Replay(payload.clone()),
        }
    }

    pub fn finish(&mut self, app: &str, key: &str, payload: Value) {
        let slot = (app.to_owned(), key.to_owned());
        if let Some(Entry::Running { fingerprint }) = self.entries.remove(&slot) {
            self.entries.insert(
                slot,
                Entry::Done {
                    fingerprint,
                    payload,
                    finished: Instant::now(),
                },
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_follow_the_directive_rules() {
        let mut store = IdempotencyStore::new(Duration::from_secs(60));
        let input = json!({"quantity": 5});
        assert_eq!(store.claim("app", "k", &input), Claim::Run);
        assert_eq!(store.claim("app", "k", &input), Claim::Concurrent);
        assert_eq!(
            store.claim("app", "k", &json!({"quantity": 6})),
            Claim::Mismatch
        );
        assert_eq!(store.claim("other-app", "k", &input), Claim::Run);
        store.finish("app", "k", json!({"ok": true}));
        assert_eq!(
            store.claim("app", "k", &input),
            Claim::Replay(json!({"ok": true}))
        );
    }

    #[test]
    fn finished_keys_expire_after_the_retention() {
        let mut store = IdempotencyStore::new(Duration::ZERO);
        let input = json!(1);
        assert_eq!(store.claim("app", "k", &input), Claim::Run);
        store.finish("app", "k", json!(2));
        assert_eq!(store.claim("app", "k", &json!(3)), Claim::Run);
    }
}
