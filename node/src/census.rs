//! The census: business figures that are levels, not flows, and so cannot
//! be counted write by write (a restart would lose the count): return cases
//! by state, the refund backlog and its age, open exceptions by type and
//! team, the oldest active reservation by owner type.
//!
//! Every `census_interval_secs` the node reads the return cases' listing
//! summaries from the store, page by page, and sets the gauges from what it
//! read. In cluster mode each node counts only the cases of shards it owns
//! now, so the cluster's figure is the sum over nodes (`sum(skuld_returns)`)
//! and nothing is counted twice; a shard in handoff is briefly counted by
//! nobody. Reservation ages come from the positions this node has written
//! (see [`OldestHolds`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use skuld_actors::position::{OldestHolds, OwnerType, PositionEntity};
use skuld_actors::returns::{ExceptionKind, ReturnEntity, ReturnState, ReturnSummary, Team};
use skuld_actors::runtime::Entity;
use skuld_cluster::shards::ShardTable;
use skuld_cluster::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// Summaries read per store round trip.
const PAGE: usize = 1_000;

/// Every owner type, for the age gauges (0 when none is active).
const OWNER_TYPES: [OwnerType; 7] = [
    OwnerType::Cart,
    OwnerType::Checkout,
    OwnerType::Order,
    OwnerType::Fulfillment,
    OwnerType::ReturnExchange,
    OwnerType::Draft,
    OwnerType::Manual,
];

/// What one census counted.
#[derive(Debug, Default, PartialEq)]
pub struct ReturnFigures {
    pub by_state: BTreeMap<&'static str, u64>,
    pub refunds_pending: u64,
    pub oldest_pending_refund_ms: Option<i64>,
    pub open_exceptions: BTreeMap<(ExceptionKind, Team), u64>,
    /// Summaries that did not decode (counted, not fatal).
    pub unreadable: u64,
    /// Summaries stored before the census fields: their refunds and
    /// exceptions are not counted until the case is written again.
    pub legacy: u64,
}

impl ReturnFigures {
    fn add(&mut self, summary: &ReturnSummary) {
        if let Some(state) = summary.state {
            *self.by_state.entry(state.name()).or_default() += 1;
        }
        self.refunds_pending += u64::from(summary.refunds_pending);
        self.oldest_pending_refund_ms = match (
            self.oldest_pending_refund_ms,
            summary.oldest_pending_refund_ms,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for kind_and_team in &summary.open_exception_kinds {
            *self.open_exceptions.entry(*kind_and_team).or_default() += 1;
        }
    }
}

pub struct Census {
    pub store: Arc<dyn Store>,
    /// Cluster mode: the shards this node serves; `None` on a single node,
    /// which owns everything.
    pub shards: Option<Arc<ShardTable>>,
    pub holds: Arc<OldestHolds>,
    pub interval: Duration,
}

impl Census {
    /// Counts every `interval` until `stop`; the first count at once.
    pub async fn run(self, stop: CancellationToken) {
        // (kind, team) pairs a gauge was set for: set to 0 when they vanish.
        let mut exception_series: Vec<(ExceptionKind, Team)> = ExceptionKind::ALL
            .iter()
            .map(|kind| (*kind, kind.owner()))
            .collect();
        let mut epochs = HashMap::new();
        loop {
            let started = Instant::now();
            // A long scan (a large store, a store that hangs) must not hold
            // the drain up.
            let counted = tokio::select! {
                counted = self.count_returns() => counted,
                () = stop.cancelled() => return,
            };
            match counted {
                Ok(figures) => publish_returns(&figures, &mut exception_series),
                Err(error) => {
                    metrics::counter!("skuld_census_errors_total").increment(1);
                    tracing::warn!(%error, "returns census failed; the gauges keep the last count");
                }
            }
            self.publish_holds(&mut epochs);
            metrics::histogram!("skuld_census_seconds").record(started.elapsed().as_secs_f64());
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    fn owns(&self, encoded_key: &[u8]) -> bool {
        self.shards
            .as_ref()
            .is_none_or(|table| table.local_epoch(table.shard_of(encoded_key)).is_some())
    }

    /// Reads the summaries of every return case this node owns.
    pub async fn count_returns(&self) -> Result<ReturnFigures, StoreError> {
        let mut figures = ReturnFigures::default();
        let mut after = None;
        loop {
            let page = self
                .store
                .scan_summaries(b"returns/", after.take(), PAGE)
                .await?;
            let full = page.len() == PAGE;
            for row in &page {
                if !self.owns(&row.entity) || ReturnEntity::decode_key(&row.entity).is_none() {
                    continue;
                }
                match ReturnSummary::decode_any(&row.value) {
                    Ok((summary, legacy)) => {
                        figures.add(&summary);
                        figures.legacy += u64::from(legacy);
                    }
                    Err(_) => figures.unreadable += 1,
                }
            }
            match page.into_iter().last() {
                Some(last) if full => after = Some((last.scope, last.entity)),
                _ => return Ok(figures),
            }
        }
    }

    /// The hold gauges, from the positions of shards this node owns under
    /// the epoch it owned them at the last census (`epochs`): a shard that
    /// left and came back may have changed meanwhile, so what was noted of
    /// its positions before is dropped.
    fn publish_holds(&self, epochs: &mut HashMap<u32, u64>) {
        let census = self.holds.census(|key| {
            let Some(table) = &self.shards else {
                return true;
            };
            let shard = table.shard_of(&PositionEntity::encode_key(key));
            match table.local_epoch(shard) {
                Some(epoch) => epochs.get(&shard).is_none_or(|seen| *seen == epoch),
                None => false,
            }
        });
        if let Some(table) = &self.shards {
            *epochs = table
                .local_shards()
                .into_iter()
                .filter_map(|shard| table.local_epoch(shard).map(|epoch| (shard, epoch)))
                .collect();
        }
        let now_ms = skuld_cluster::now_ms();
        let seconds_since = |at_ms: i64| now_ms.saturating_sub(at_ms).max(0) as f64 / 1_000.0;
        for owner in OWNER_TYPES {
            let age_seconds = census
                .oldest_by_owner
                .iter()
                .find(|(of, _)| *of == owner)
                .map_or(0.0, |(_, created_at_ms)| seconds_since(*created_at_ms));
            metrics::gauge!("skuld_reservation_oldest_age_seconds", "owner" => owner.name())
                .set(age_seconds);
        }
        let overdue_seconds = census.earliest_expiry_ms.map_or(0.0, seconds_since);
        metrics::gauge!("skuld_reservation_expiry_overdue_seconds").set(overdue_seconds);
    }
}

fn publish_returns(figures: &ReturnFigures, exception_series: &mut Vec<(ExceptionKind, Team)>) {
    for state in ReturnState::ALL {
        let count = figures.by_state.get(state.name()).copied().unwrap_or(0);
        metrics::gauge!("skuld_returns", "state" => state.name()).set(count as f64);
    }
    metrics::gauge!("skuld_refunds_pending").set(figures.refunds_pending as f64);
    let oldest_seconds = figures
        .oldest_pending_refund_ms
        .map_or(0.0, |decided_at_ms| {
            skuld_cluster::now_ms().saturating_sub(decided_at_ms).max(0) as f64 / 1_000.0
        });
    metrics::gauge!("skuld_refund_oldest_pending_seconds").set(oldest_seconds);
    for kind_and_team in figures.open_exceptions.keys() {
        if !exception_series.contains(kind_and_team) {
            exception_series.push(*kind_and_team);
        }
    }
    for (kind, team) in exception_series.iter() {
        let open = figures
            .open_exceptions
            .get(&(*kind, *team))
            .copied()
            .unwrap_or(0);
        metrics::gauge!("skuld_return_exceptions_open", "type" => kind.name(), "team" => team.name())
            .set(open as f64);
    }
    metrics::gauge!("skuld_census_unreadable").set(figures.unreadable as f64);
    metrics::gauge!("skuld_census_legacy_summaries").set(figures.legacy as f64);
}

/// HELP text for the business series, and the counters a dashboard reads
/// registered at 0 so that a rate is defined before the first event.
pub fn describe_business_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "skuld_returns",
        "Return cases by state, on the shards this node owns (sum over nodes)"
    );
    describe_gauge!(
        "skuld_refunds_pending",
        "Refunds decided and waiting for their gate (manual approval, ERP), on this node's shards"
    );
    describe_gauge!(
        "skuld_refund_oldest_pending_seconds",
        Unit::Seconds,
        "Age of the oldest refund waiting for its gate; 0 when none"
    );
    describe_gauge!(
        "skuld_return_exceptions_open",
        "Open exceptions of return cases by type and owning team"
    );
    describe_gauge!(
        "skuld_reservation_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest active reservation by owner type, among positions written on this node; 0 when none"
    );
    describe_gauge!(
        "skuld_reservation_expiry_overdue_seconds",
        Unit::Seconds,
        "How long the earliest expiry of an active reservation is past; more than a few seconds means expiry is not running"
    );
    describe_gauge!(
        "skuld_census_legacy_summaries",
        "Return summaries stored before this version: their refunds and exceptions count once the case is written again"
    );
    describe_histogram!(
        "skuld_return_cycle_seconds",
        Unit::Seconds,
        "Time from a return's request to its refund's release"
    );
    describe_counter!(
        "skuld_reservations_total",
        "Reservations created, and how they ended (released, expired, committed)"
    );
    describe_counter!(
        "skuld_refusals_total",
        "Requests the entity refused, by kind and reason (insufficient_available: not enough stock)"
    );
    describe_counter!(
        "skuld_return_transitions_total",
        "Return cases entering each state"
    );
    describe_counter!(
        "skuld_return_exceptions_raised_total",
        "Exceptions raised on return cases by type and owning team"
    );
    describe_counter!("skuld_refunds_released_total", "Refunds released");
    describe_histogram!(
        "skuld_census_seconds",
        Unit::Seconds,
        "Time one census of the business gauges took"
    );
    for outcome in ["created", "released", "expired", "committed"] {
        metrics::counter!("skuld_reservations_total", "outcome" => outcome).increment(0);
    }
    metrics::counter!("skuld_refunds_released_total").increment(0);
    metrics::counter!("skuld_store_commit_errors_total").increment(0);
    metrics::counter!("skuld_census_errors_total").increment(0);
}
