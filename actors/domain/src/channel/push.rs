//! The coalescing rule (CHANNELS.md, items 15 and 16): availability is
//! state, not events.
//!
//! Per pushed key (channel, SKU, location or the SKU's sum) the state keeps
//! the *desired* value with its version and the value the channel last
//! *acknowledged*. A new desired value overwrites the old one; a push is due
//! only when they differ, so ten thousand changes collapse into the few
//! pushes that were due while they came, the last with the final value.
//! At most one push is in flight; the desired value waiting behind it is
//! the one pending push.
//!
//! When a push is due: a decrease, and any crossing of zero (out of stock,
//! back in stock), at once, since selling what is gone oversells; an
//! increase at most once per `min_interval` after the last push started;
//! an unchanged value re-asserted after `reassert_interval`, last in line.
//! A failed push waits for its backoff (the connector's retry policy) and
//! a throttled one for the channel's hint.

use serde::{Deserialize, Serialize};

/// How urgent a due push is; the scheduler sends the smaller first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Urgency {
    /// Fewer units than the channel shows, or none where it shows some.
    Decrease,
    /// From zero to some: back in stock.
    BackInStock,
    /// More units than the channel shows (paced).
    Increase,
    /// The channel already shows the value; asserted again in case it
    /// drifted unseen.
    Reassert,
}

impl Urgency {
    pub fn name(self) -> &'static str {
        match self {
            Urgency::Decrease => "decrease",
            Urgency::BackInStock => "back_in_stock",
            Urgency::Increase => "increase",
            Urgency::Reassert => "reassert",
        }
    }
}

/// The pacing of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushPolicy {
    pub min_interval_ms: u64,
    pub reassert_interval_ms: u64,
}

/// The value one push sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    pub value: i64,
    /// The desired version it carries. A connector's idempotency key
    /// derives from it and `change_from`: a retry of this push is the same
    /// request, a newer version or a compare against a new figure (after a
    /// conflict) a new one.
    pub version: u64,
    /// What the channel is believed to show (the last acknowledged value),
    /// for a compare-and-set write.
    pub change_from: Option<i64>,
    pub urgency: Urgency,
    /// Changes of the desired value this push stands for.
    pub coalesced: u64,
    /// When the oldest of those changes was observed (unix ms): the push
    /// lag of its acknowledgement counts from here, the worst of the
    /// changes it carries.
    pub oldest_change_ms: u64,
}

/// The desired value and when it became so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub value: i64,
    pub version: u64,
    /// When this version was observed (unix ms): push lag counts from here.
    pub since_ms: u64,
}

/// What the channel confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acked {
    pub value: i64,
    pub version: u64,
    pub at_ms: u64,
}

/// One pushed key's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushState {
    pub desired: Desired,
    pub acked: Option<Acked>,
    /// The push being sent, if one is.
    pub in_flight: Option<Push>,
    /// When the last push started (unix ms).
    pub last_push_ms: Option<u64>,
    /// No push before this: the backoff after a failed attempt. (A
    /// channel's throttle is the account limiter's, not the key's.)
    pub not_before_ms: u64,
    /// Given up on (dead-lettered): no push until a new desired value or a
    /// replay.
    pub parked: bool,
    /// Failed attempts of the current desired version.
    pub attempts: u32,
    /// Desired changes since the last push started.
    pub changes: u64,
    /// When the oldest change no push has carried yet was observed.
    #[serde(default)]
    pub unpushed_since_ms: Option<u64>,
}

impl PushState {
    /// A key first seen with `value`: nothing acknowledged yet, so a push
    /// is due at once (the channel's figure is unknown).
    pub fn new(value: i64, version: u64, now_ms: u64) -> Self {
        PushState {
            desired: Desired {
                value,
                version,
                since_ms: now_ms,
            },
            acked: None,
            in_flight: None,
            last_push_ms: None,
            not_before_ms: 0,
            parked: false,
            attempts: 0,
            changes: 1,
            unpushed_since_ms: Some(now_ms),
        }
    }

    /// A new desired value. Versions only move forward: an older or equal
    /// version (a replayed event) changes nothing. Returns whether the
    /// desired value changed.
    pub fn observe(&mut self, value: i64, version: u64, now_ms: u64) -> bool {
        if version <= self.desired.version {
            return false;
        }
        let changed = value != self.desired.value;
        self.desired = Desired {
            value,
            version,
            since_ms: if changed {
                now_ms
            } else {
                self.desired.since_ms
            },
        };
        if changed {
            self.changes += 1;
            self.unpushed_since_ms.get_or_insert(now_ms);
            // A value the channel refused may be followed by one it takes.
            // A backoff stays: a failing channel is not helped by being
            // called more often because stock moves.
            self.parked = false;
        }
        changed
    }

    /// Whether the channel is believed to show the desired value.
    pub fn settled(&self) -> bool {
        self.acked
            .is_some_and(|acked| acked.value == self.desired.value)
    }

    /// When the next push may start and how urgent it is, or `None` while
    /// one is in flight or the key is parked. A key whose channel figure is
    /// unknown is pushed as urgently as a decrease: the channel may show
    /// more than there is.
    pub fn next_due(&self, policy: &PushPolicy) -> Option<(u64, Urgency)> {
        if self.in_flight.is_some() || self.parked {
            return None;
        }
        let (at, urgency) = match self.acked {
            None => (0, Urgency::Decrease),
            Some(acked) if acked.value == self.desired.value => (
                acked.at_ms.saturating_add(policy.reassert_interval_ms),
                Urgency::Reassert,
            ),
            Some(acked) => {
                let urgency = if self.desired.value < acked.value || self.desired.value <= 0 {
                    Urgency::Decrease
                } else if acked.value <= 0 {
                    Urgency::BackInStock
                } else {
                    Urgency::Increase
                };
                let at = match urgency {
                    Urgency::Increase => self
                        .last_push_ms
                        .map_or(0, |last| last.saturating_add(policy.min_interval_ms)),
                    _ => 0,
                };
                (at, urgency)
            }
        };
        Some((at.max(self.not_before_ms), urgency))
    }

    /// Starts the due push: it is in flight until [`Self::succeeded`],
    /// [`Self::failed`] or [`Self::conflicted`].
    pub fn start(&mut self, urgency: Urgency, now_ms: u64) -> Push {
        let push = Push {
            value: self.desired.value,
            version: self.desired.version,
            change_from: self.acked.map(|acked| acked.value),
            urgency,
            coalesced: self.changes,
            oldest_change_ms: self.unpushed_since_ms.take().unwrap_or(now_ms),
        };
        self.in_flight = Some(push.clone());
        self.last_push_ms = Some(now_ms);
        self.changes = 0;
        push
    }

    /// The channel applied `push`. An acknowledgement never goes back to
    /// an older version than one already acknowledged (a late reply).
    pub fn succeeded(&mut self, push: &Push, now_ms: u64) {
        self.finish(push);
        if self.acked.is_none_or(|acked| push.version >= acked.version) {
            self.acked = Some(Acked {
                value: push.value,
                version: push.version,
                at_ms: now_ms,
            });
        }
        // The channel answers again: no backoff holds the next push.
        self.attempts = 0;
        self.not_before_ms = 0;
    }

    /// The push failed in a way worth retrying: the next one (of whatever
    /// is desired by then) waits until `retry_at_ms`.
    pub fn failed(&mut self, push: &Push, retry_at_ms: u64) {
        self.finish(push);
        self.carry_over(push);
        self.attempts = self.attempts.saturating_add(1);
        self.not_before_ms = self.not_before_ms.max(retry_at_ms);
    }

    /// The channel refused the compare: it shows `remote`, not what was
    /// last acknowledged. The next push compares against `remote`, at once
    /// (and so carries a new idempotency key), never a blind retry.
    pub fn conflicted(&mut self, push: &Push, remote: i64, now_ms: u64) {
        self.finish(push);
        self.carry_over(push);
        let version = self.acked.map_or(0, |acked| acked.version);
        self.acked = Some(Acked {
            value: remote,
            version,
            at_ms: now_ms,
        });
    }

    /// A read-back found the channel showing `remote`: if that is not what
    /// was acknowledged, the acknowledged value was wrong (a channel-side
    /// edit, an accepted write never applied) and a push is due again.
    /// Returns whether it drifted.
    pub fn reconciled(&mut self, remote: i64, now_ms: u64) -> bool {
        let drifted = self.acked.is_none_or(|acked| acked.value != remote);
        if drifted {
            let version = self.acked.map_or(0, |acked| acked.version);
            self.acked = Some(Acked {
                value: remote,
                version,
                at_ms: now_ms,
            });
        }
        drifted
    }

    /// A newer desired value replaces `push` while the channel has only
    /// accepted it, not shown it (Amazon's `ACCEPTED`): waiting for the old
    /// value to show would hold a decrease back. `push` is no longer in
    /// flight, and no attempt is counted; a late acknowledgement of it is
    /// still taken only if nothing newer was acknowledged.
    pub fn superseded(&mut self, push: &Push) {
        self.finish(push);
        self.carry_over(push);
    }

    /// The push gave up (dead-lettered): the key waits for a new desired
    /// value or a replay.
    pub fn abandoned(&mut self, push: &Push) {
        self.finish(push);
        self.attempts = 0;
        self.parked = true;
    }

    /// A replay: the current desired value is due again at once.
    pub fn replay(&mut self) {
        self.parked = false;
        self.not_before_ms = 0;
        self.attempts = 0;
        self.last_push_ms = None;
    }

    /// The changes `push` carried are not shown yet: the next push carries
    /// them, and its lag counts from the oldest.
    fn carry_over(&mut self, push: &Push) {
        let oldest = self
            .unpushed_since_ms
            .map_or(push.oldest_change_ms, |since| {
                since.min(push.oldest_change_ms)
            });
        self.unpushed_since_ms = Some(oldest);
    }

    fn finish(&mut self, push: &Push) {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|flying| flying.version == push.version)
        {
            self.in_flight = None;
        }
    }
}
