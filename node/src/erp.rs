//! The ERP worker: for every return case whose refund is held by the
//! `ERP_VALIDATION` gate, it posts one credit memo request to SAP and, once
//! SAP shows the credit posted to accounting, releases the refund with
//! `ConfirmErp` through the returns actor (docs/erp.md, ERP.md C).
//!
//! Where its state lives. The task of a case is *derived from the case* on
//! each scan, not kept in records of its own: the worker reads the return
//! summaries of the shards this node owns now (as the census does), takes
//! the cases with a refund pending and not closed, and reads each through
//! its actor; a case is worked on while `awaits_erp()` holds and no
//! `ERP_REFUSED` exception is open. Everything that must survive a crash
//! or a shard move is already durable elsewhere, under the shard's fence:
//! * "posted once": SAP itself, looked up by the deterministic reference
//!   (`SKULD-` + a hash of tenant and return id) before every create
//!   (`Sap::ensure`), so a retry, a restart or the shard's next owner adopts
//!   the request an earlier attempt created instead of creating another;
//! * "released once": the case (`erp_credit_memo`, set by `ConfirmErp`,
//!   sent with the idempotency key `erp:<return_id>`); a person's
//!   `ConfirmErp` first makes `awaits_erp()` false and the task stops;
//! * "refused, do not retry" and "overdue": exceptions on the case.
//!
//! Only the retry schedule and the age of a doubt are kept in memory, and a
//! restart forgets them safely: a task seen for the first time by this
//! process counts as in doubt since then (an earlier process or owner may
//! have had a create in flight), so it looks up and waits the settle time
//! before it creates. A second store of per-case records would have to be
//! kept in step with the case and fenced like it, for no guarantee more.
//!
//! The store's fence stops a former owner's `ConfirmErp` but not its HTTP
//! calls, and a step runs long after the scan that found its task (several
//! calls of up to `request_timeout_ms` each, eight cases at a time). So
//! right before the create and before `ConfirmErp` the step checks that
//! this node still serves the case's shard, within the lease's safe
//! window, under the epoch the task was scanned under
//! ([`ShardTable::serving_epoch`]); if not, the step stops and the task is
//! dropped (the shard's owner, or this node if it comes back, starts it
//! afresh, in doubt).
//!
//! The cost is one summary scan per poll interval, like the census's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use futures::StreamExt;
use skuld_actors::returns::{
    ErpReport, ExceptionKind, RefundState, ReturnCase, ReturnCommand, ReturnEntity, ReturnState,
    ReturnSummary, MAX_TEXT_BYTES,
};
use skuld_actors::runtime::{Entity, EntityRuntime, Mutation, RequestMeta};
use skuld_actors::ReturnKey;
use skuld_cluster::shards::ShardTable;
use skuld_cluster::{Store, StoreError};
use skuld_connectors::backoff;
use skuld_connectors::sap::{
    same_amount, CreditMemo, CreditMemoLine, Document, Ensured, Posting, Sap, SapSettings,
};
use skuld_connectors::ConnectorError;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use xxhash_rust::xxh3::xxh3_128;

use crate::config::Erp;

/// Summaries read per store round trip.
const PAGE: usize = 1_000;
/// Cases worked on at once (each is a few HTTP calls).
const CONCURRENCY: usize = 8;

/// The deterministic external reference of a case's credit memo request
/// (ERP.md C.2): `SKULD-` and 26 hex digits of a hash of tenant and return
/// id, 32 upper-case characters, within `PurchaseOrderByCustomer`'s 35.
/// One per case: once a credit memo is confirmed the gate is open for
/// every later refund of the case too.
pub fn reference(key: &ReturnKey) -> String {
    let bytes = serde_json::to_vec(&(&key.tenant, &key.return_id)).unwrap_or_default();
    let hash = format!("{:032X}", xxh3_128(&bytes));
    format!("SKULD-{}", &hash[..26])
}

/// The idempotency key of the worker's `ConfirmErp`.
pub fn confirm_idempotency_key(key: &ReturnKey) -> String {
    format!("erp:{}", key.return_id)
}

/// Minor units as SAP's decimal text (2 decimals).
fn decimal(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.unsigned_abs();
    format!("{sign}{}.{:02}", minor / 100, minor % 100)
}

/// The refunds waiting for the gate, in minor units.
fn pending_total(case: &ReturnCase) -> i64 {
    case.refunds
        .iter()
        .filter(|refund| refund.state == RefundState::PendingGate)
        .map(|refund| refund.total_minor)
        .fold(0i64, i64::saturating_add)
}

/// The credit memo request for a case's pending refunds (ERP.md C.1): one
/// item per refund line, priced by a manual condition at the line's share
/// of the refund after fees. A share that does not divide by the quantity
/// becomes two items (the last unit takes the remainder), so the document
/// totals exactly what skuld refunds.
pub fn credit_memo(erp: &Erp, key: &ReturnKey, case: &ReturnCase) -> CreditMemo {
    let mut lines = Vec::new();
    for refund in case
        .refunds
        .iter()
        .filter(|refund| refund.state == RefundState::PendingGate)
    {
        let gross: i64 = refund.lines.iter().map(|line| line.gross_minor).sum();
        let mut left = refund.total_minor;
        for (index, line) in refund.lines.iter().enumerate() {
            let net = if index + 1 == refund.lines.len() || gross <= 0 {
                left
            } else {
                i64::try_from(
                    i128::from(line.gross_minor) * i128::from(refund.total_minor)
                        / i128::from(gross),
                )
                .unwrap_or(0)
            };
            left -= net;
            if line.quantity <= 0 || net <= 0 {
                continue;
            }
            let sku = case
                .order_lines
                .get(&line.line_id)
                .map(|order_line| order_line.sku.as_str())
                .unwrap_or(line.line_id.as_str());
            let material = erp
                .materials
                .get(sku)
                .cloned()
                .unwrap_or_else(|| sku.to_owned());
            let quantity = u32::try_from(line.quantity).unwrap_or(u32::MAX);
            let unit = net / line.quantity;
            let remainder = net % line.quantity;
            let mut item = |quantity: u32, amount: i64| {
                lines.push(CreditMemoLine {
                    material: material.clone(),
                    quantity,
                    unit: erp.unit.clone(),
                    unit_amount: decimal(amount),
                })
            };
            if remainder == 0 {
                item(quantity, unit);
            } else {
                if quantity > 1 {
                    item(quantity - 1, unit);
                }
                item(1, unit + remainder);
            }
        }
    }
    let reason = case
        .lines
        .values()
        .next()
        .and_then(|line| erp.order_reasons.get(&line.reason_code))
        .unwrap_or(&erp.order_reason);
    CreditMemo {
        reference: reference(key),
        document_type: erp.document_type.clone(),
        sales_organization: erp.sales_organization.clone(),
        distribution_channel: erp.distribution_channel.clone(),
        division: erp.division.clone(),
        sold_to_party: erp
            .customers
            .get(&case.customer_ref)
            .unwrap_or(&erp.sold_to_party)
            .clone(),
        order_reason: reason.clone(),
        currency: erp.currency.clone(),
        condition_type: erp.condition_type.clone(),
        lines,
    }
}

/// Whether the worker should act for a case now.
fn wanted(case: &ReturnCase) -> bool {
    case.awaits_erp() && !case.has_open_exception(ExceptionKind::ErpRefused)
}

/// What the worker remembers of a case between its steps (memory only;
/// see the module doc for why that is enough).
#[derive(Debug)]
struct Task {
    /// The credit memo request SAP holds for the case, once known.
    request: Option<String>,
    /// Since when a create may have been applied without our knowing.
    in_doubt_since: Option<Instant>,
    /// Failed attempts in a row, for the backoff.
    attempts: u32,
    due: Instant,
    /// The epoch of the case's shard when the task was scanned (`None`
    /// without a shard table: single node).
    epoch: Option<u64>,
}

impl Task {
    fn new(now: Instant, epoch: Option<u64>) -> Self {
        Self {
            request: None,
            in_doubt_since: Some(now),
            attempts: 0,
            due: now,
            epoch,
        }
    }
}

/// What one step came to.
enum Step {
    /// Look again after this long.
    Again(Duration),
    /// Nothing more to do for the case (released, refused, overridden).
    Done,
}

pub struct ErpWorker {
    pub store: Arc<dyn Store>,
    pub shards: Option<Arc<ShardTable>>,
    pub returns: Arc<EntityRuntime<ReturnEntity>>,
    pub settings: Erp,
}

pub fn describe_metrics() {
    metrics::describe_counter!(
        "skuld_erp_posted_total",
        "Refunds released because the ERP posted their credit memo"
    );
    metrics::describe_counter!(
        "skuld_erp_requests_total",
        "Credit memo requests ensured in the ERP, by outcome (created, found, in_doubt)"
    );
    metrics::describe_counter!(
        "skuld_erp_retries_total",
        "ERP calls that failed and are retried with backoff, by stage"
    );
    metrics::describe_counter!(
        "skuld_erp_refusals_total",
        "Credit memo requests the ERP refused for good (raised as ERP_REFUSED)"
    );
    metrics::describe_counter!(
        "skuld_erp_overdue_total",
        "Cases whose posting passed the overdue timeout"
    );
    metrics::describe_gauge!(
        "skuld_erp_in_flight",
        "Cases of this node waiting for the ERP"
    );
}

impl ErpWorker {
    /// Works until `stop`; the first scan at once.
    pub async fn run(self, stop: CancellationToken) {
        describe_metrics();
        let mut sap: Option<Arc<Sap>> = None;
        let mut tasks: HashMap<ReturnKey, Task> = HashMap::new();
        loop {
            if sap.is_none() {
                match self.connect() {
                    Ok(connected) => sap = Some(Arc::new(connected)),
                    Err(error) => {
                        tracing::error!(%error, "ERP connector not configured; retrying")
                    }
                }
            }
            if let Some(sap) = &sap {
                let scanned = tokio::select! {
                    scanned = self.candidates() => scanned,
                    () = stop.cancelled() => return,
                };
                match scanned {
                    Ok(scanned) => {
                        let now = Instant::now();
                        tasks.retain(|key, task| scanned.get(key) == Some(&task.epoch));
                        for (key, epoch) in scanned {
                            // A shard that left and came back is a new
                            // epoch: its task starts afresh, in doubt.
                            tasks.entry(key).or_insert_with(|| Task::new(now, epoch));
                        }
                    }
                    Err(error) => tracing::warn!(%error, "ERP worker cannot scan return cases"),
                }
                tokio::select! {
                    () = self.work(sap, &mut tasks) => {}
                    () = stop.cancelled() => return,
                }
                metrics::gauge!("skuld_erp_in_flight").set(tasks.len() as f64);
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.poll_interval()) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    fn connect(&self) -> Result<Sap, String> {
        let password = self.settings.password()?;
        Sap::new(SapSettings {
            base_url: self.settings.base_url.clone(),
            username: self.settings.username.clone(),
            password,
            timeout: Duration::from_millis(self.settings.request_timeout_ms),
            settle: Duration::from_millis(self.settings.settle_ms),
        })
        .map_err(|error| error.to_string())
    }

    /// The epoch under which this node owns the shard of `encoded_key`:
    /// `Some(None)` without a shard table (single node: everything), `None`
    /// when another node owns it.
    fn owned_epoch(&self, encoded_key: &[u8]) -> Option<Option<u64>> {
        match &self.shards {
            None => Some(None),
            Some(table) => table.local_epoch(table.shard_of(encoded_key)).map(Some),
        }
    }

    /// Whether this node may still reach outside the store for the task's
    /// case: it serves the case's shard now, within the lease's safe
    /// window, under the epoch the task was scanned under.
    fn still_serves(&self, key: &ReturnKey, task: &Task, before: &'static str) -> bool {
        let Some(table) = &self.shards else {
            return true;
        };
        if served_under(table, key, task.epoch) {
            return true;
        }
        let shard = table.shard_of(&ReturnEntity::encode_key(key));
        let serving = table.serving_epoch(shard);
        tracing::info!(
            shard,
            before,
            scanned_epoch = ?task.epoch,
            serving_epoch = ?serving,
            "the case's shard is no longer served under the scanned epoch; the ERP step stops"
        );
        false
    }

    /// The cases of owned shards that may wait for the ERP, with their
    /// shard's epoch: a refund pending, not closed, of a configured tenant
    /// (the gate itself is read from the case).
    async fn candidates(&self) -> Result<HashMap<ReturnKey, Option<u64>>, StoreError> {
        let mut keys = HashMap::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .scan_summaries(b"returns/", after.take(), PAGE)
                .await?;
            let full = page.len() == PAGE;
            for row in &page {
                let Some(epoch) = self.owned_epoch(&row.entity) else {
                    continue;
                };
                let Some(key) = ReturnEntity::decode_key(&row.entity) else {
                    continue;
                };
                if !self.settings.tenants.is_empty() && !self.settings.tenants.contains(&key.tenant)
                {
                    continue;
                }
                let Ok(summary) = ReturnSummary::decode(&row.value) else {
                    continue;
                };
                let open = summary
                    .state
                    .is_some_and(|state| !ReturnState::is_terminal(state));
                if open && summary.refunds_pending > 0 {
                    keys.insert(key, epoch);
                }
            }
            match page.last() {
                Some(last) if full => after = Some((last.scope.clone(), last.entity.clone())),
                _ => return Ok(keys),
            }
        }
    }

    /// One step of every due task, a few at a time.
    async fn work(&self, sap: &Arc<Sap>, tasks: &mut HashMap<ReturnKey, Task>) {
        let now = Instant::now();
        let due: Vec<ReturnKey> = tasks
            .iter()
            .filter(|(_, task)| task.due <= now)
            .map(|(key, _)| key.clone())
            .collect();
        let taken: Vec<(ReturnKey, Task)> = due
            .into_iter()
            .filter_map(|key| tasks.remove(&key).map(|task| (key, task)))
            .collect();
        let results: Vec<(ReturnKey, Task, Step)> = futures::stream::iter(taken)
            .map(|(key, mut task)| async move {
                let span = tracing::info_span!(
                    "erp_case",
                    tenant = %key.tenant,
                    return_id = %key.return_id
                );
                let step = self.step(sap, &key, &mut task).instrument(span).await;
                (key, task, step)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (key, mut task, step) in results {
            match step {
                Step::Again(wait) => {
                    task.due = Instant::now() + wait;
                    tasks.insert(key, task);
                }
                Step::Done => {}
            }
        }
    }

    fn retry(&self, task: &mut Task, stage: &'static str, hint: Duration, why: &str) -> Step {
        metrics::counter!("skuld_erp_retries_total", "stage" => stage).increment(1);
        let ceiling = backoff::ceiling_with(
            task.attempts,
            Duration::from_millis(self.settings.retry_base_ms),
            Duration::from_millis(self.settings.retry_cap_ms),
        );
        task.attempts = task.attempts.saturating_add(1);
        let wait = hint
            .min(Duration::from_millis(self.settings.retry_cap_ms))
            .max(backoff::jittered(ceiling, &mut rand::rng()));
        tracing::warn!(stage, attempts = task.attempts, wait_ms = wait.as_millis() as u64, %why, "ERP call failed; retrying");
        Step::Again(wait)
    }

    /// The internal report of what the ERP said; the case raises it once.
    fn report(&self, key: &ReturnKey, report: ErpReport) {
        if let Err(error) = self.returns.handle().send_internal(
            key,
            ReturnCommand::ErpReport { report },
            &format!("erp:{}", key.return_id),
        ) {
            // The next scan finds the case still waiting and reports again.
            tracing::warn!(%error, "ERP report not delivered to the case");
        }
    }

    fn refuse(&self, key: &ReturnKey, code: &str, message: &str) -> Step {
        metrics::counter!("skuld_erp_refusals_total").increment(1);
        tracing::error!(code, message, reference = %reference(key), "the ERP refused the credit memo request");
        self.report(
            key,
            ErpReport::Refused {
                code: bounded(code, 64),
                message: bounded(message, MAX_TEXT_BYTES / 2),
            },
        );
        Step::Done
    }

    async fn step(&self, sap: &Sap, key: &ReturnKey, task: &mut Task) -> Step {
        let meta = RequestMeta {
            correlation_id: format!("erp:{}", key.return_id),
            ..RequestMeta::default()
        };
        let case = match self.returns.read(key, meta).await {
            Ok(case) => case,
            Err(error) => return self.retry(task, "read_case", Duration::ZERO, &error.to_string()),
        };
        if !wanted(&case) {
            return Step::Done;
        }
        self.check_overdue(key, &case);
        let memo = credit_memo(&self.settings, key, &case);
        let expected = decimal(pending_total(&case));
        let request = match &task.request {
            Some(request) => request.clone(),
            None if !self.still_serves(key, task, "create") => return Step::Done,
            None => match sap
                .ensure(&memo, task.in_doubt_since.map(|since| since.elapsed()))
                .await
            {
                Ok(ensured @ (Ensured::Created(_) | Ensured::Found(_))) => {
                    let (outcome, document) = match ensured {
                        Ensured::Created(document) => ("created", document),
                        Ensured::Found(document) => ("found", document),
                        _ => return Step::Again(self.settings.poll_interval()),
                    };
                    metrics::counter!("skuld_erp_requests_total", "outcome" => outcome)
                        .increment(1);
                    if let Some(step) = self.check_document(key, &document, &expected) {
                        return step;
                    }
                    task.request = Some(document.credit_memo_request.clone());
                    task.in_doubt_since = None;
                    task.attempts = 0;
                    document.credit_memo_request
                }
                Ok(Ensured::InDoubt { reason }) => {
                    metrics::counter!("skuld_erp_requests_total", "outcome" => "in_doubt")
                        .increment(1);
                    // The settle time runs from this create.
                    task.in_doubt_since = Some(Instant::now());
                    return self.retry(task, "create", Duration::ZERO, &reason);
                }
                Ok(Ensured::Settling) => {
                    let settle = Duration::from_millis(self.settings.settle_ms);
                    let age = task.in_doubt_since.map_or(settle, |since| since.elapsed());
                    return Step::Again(settle.saturating_sub(age).max(Duration::from_millis(10)));
                }
                Err(ConnectorError::Invalid { code, message }) => {
                    return self.refuse(key, &code, &message);
                }
                Err(ConnectorError::Retry { after, reason }) => {
                    return self.retry(task, "lookup", after, &reason);
                }
                Err(ConnectorError::Config(reason)) => {
                    return self.retry(task, "config", Duration::ZERO, &reason);
                }
            },
        };
        match sap.posting(&request).await {
            Ok(Posting::Posted {
                billing_document,
                company_code,
                fiscal_year,
                accounting_document,
                amount,
                currency,
            }) => {
                if !same_amount(&amount, &expected) || currency != self.settings.currency {
                    return self.refuse(
                        key,
                        "SKULD/AMOUNT_MISMATCH",
                        &format!(
                            "credit memo {billing_document} posted {amount} {currency}; the refund is {expected} {}",
                            self.settings.currency
                        ),
                    );
                }
                tracing::info!(%request, %billing_document, %company_code, %fiscal_year, %accounting_document, "credit memo posted; releasing the refund");
                self.confirm(key, task, &billing_document).await
            }
            Ok(Posting::NotBilled) | Ok(Posting::Held { .. }) => {
                task.attempts = 0;
                Step::Again(self.settings.poll_interval())
            }
            Ok(Posting::Cancelled { billing_document }) => self.refuse(
                key,
                "SKULD/CANCELLED",
                &format!("credit memo {billing_document} of request {request} was cancelled"),
            ),
            Err(ConnectorError::Invalid { code, message }) => {
                // A read refused (404 of the billing service): not a
                // refusal of the credit memo; retry slowly.
                self.retry(
                    task,
                    "posting",
                    Duration::ZERO,
                    &format!("{code}: {message}"),
                )
            }
            Err(ConnectorError::Retry { after, reason }) => {
                self.retry(task, "posting", after, &reason)
            }
            Err(ConnectorError::Config(reason)) => {
                self.retry(task, "config", Duration::ZERO, &reason)
            }
        }
    }

    /// After a create or a look-up: SAP's total must be what skuld refunds
    /// (C.1: on a mismatch, do not release).
    fn check_document(&self, key: &ReturnKey, document: &Document, expected: &str) -> Option<Step> {
        tracing::info!(request = %document.credit_memo_request, reference = %reference(key), "credit memo request in the ERP");
        let amount_known = !document.total_net_amount.is_empty();
        if amount_known && !same_amount(&document.total_net_amount, expected) {
            return Some(self.refuse(
                key,
                "SKULD/AMOUNT_MISMATCH",
                &format!(
                    "credit memo request {} totals {} {}; the refund is {expected}",
                    document.credit_memo_request, document.total_net_amount, document.currency
                ),
            ));
        }
        None
    }

    /// The overdue exception, raised by the node's timeout (the policy's
    /// own `erp_overdue_hours` timer raises it too); `ConfirmErp` clears it.
    fn check_overdue(&self, key: &ReturnKey, case: &ReturnCase) {
        let Some(processed) = case.processed_at_ms else {
            return;
        };
        let timeout = i64::try_from(self.settings.overdue_timeout_ms).unwrap_or(i64::MAX);
        let overdue = skuld_actors::runtime::now_ms() >= processed.saturating_add(timeout);
        if overdue && !case.has_open_exception(ExceptionKind::ErpConfirmationOverdue) {
            metrics::counter!("skuld_erp_overdue_total").increment(1);
            tracing::warn!(
                timeout_ms = self.settings.overdue_timeout_ms,
                "credit memo not posted in time"
            );
            self.report(
                key,
                ErpReport::Overdue {
                    note: format!(
                        "the ERP has not posted the credit memo {} ms after processing",
                        self.settings.overdue_timeout_ms
                    ),
                },
            );
        }
    }

    /// Releases the refund: `ConfirmErp` with the billing document number,
    /// under the case's own idempotency key, so a repeat is a replay.
    async fn confirm(&self, key: &ReturnKey, task: &mut Task, billing_document: &str) -> Step {
        if !self.still_serves(key, task, "confirm") {
            return Step::Done;
        }
        let mutation = Mutation::<ReturnEntity> {
            key: key.clone(),
            idempotency_key: confirm_idempotency_key(key),
            expected_version: None,
            command: ReturnCommand::ConfirmErp {
                credit_memo: billing_document.to_owned(),
            },
        };
        let meta = RequestMeta {
            correlation_id: format!("erp:{}", key.return_id),
            ..RequestMeta::default()
        };
        match self.returns.mutate(mutation, meta).await {
            Ok(mutated) => {
                if !mutated.replayed {
                    metrics::counter!("skuld_erp_posted_total").increment(1);
                }
                Step::Done
            }
            Err(error) if error.is_retryable() => {
                self.retry(task, "confirm", Duration::ZERO, &error.to_string())
            }
            Err(error) => {
                // The case moved on (cancelled, confirmed by hand): nothing
                // left to release.
                tracing::warn!(%error, "ConfirmErp refused; the task stops");
                Step::Done
            }
        }
    }
}

/// Whether `table` serves the case's shard now, within the lease's safe
/// window, under the `scanned` epoch (a shard that moved away and back has
/// another epoch: a create of the owner in between may be in flight).
fn served_under(table: &ShardTable, key: &ReturnKey, scanned: Option<u64>) -> bool {
    let serving = table.serving_epoch(table.shard_of(&ReturnEntity::encode_key(key)));
    serving.is_some() && serving == scanned
}

/// `text` cut to at most `max` bytes on a character boundary.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use skuld_actors::returns::{OrderLine, Refund, RefundLine, RefundMethod};

    fn erp() -> Erp {
        Erp {
            kind: "sap".into(),
            sales_organization: "1710".into(),
            distribution_channel: "10".into(),
            division: "00".into(),
            sold_to_party: "17100001".into(),
            order_reason: "102".into(),
            currency: "USD".into(),
            condition_type: "PMP0".into(),
            materials: [("SHIRT".to_owned(), "TG11".to_owned())].into(),
            ..Erp::default()
        }
    }

    #[test]
    fn the_reference_is_stable_per_case_and_fits_sap() {
        let key = ReturnKey {
            tenant: "acme".into(),
            return_id: "R-1".into(),
        };
        let other = ReturnKey {
            tenant: "acme2".into(),
            return_id: "R-1".into(),
        };
        assert_eq!(reference(&key), reference(&key.clone()));
        assert_ne!(reference(&key), reference(&other));
        assert_eq!(reference(&key).len(), 32);
        assert!(reference(&key).starts_with("SKULD-"));
        assert_eq!(reference(&key), reference(&key).to_ascii_uppercase());
    }

    #[test]
    fn the_memo_totals_exactly_the_refund_after_fees() {
        let key = ReturnKey {
            tenant: "acme".into(),
            return_id: "R-1".into(),
        };
        let mut case = ReturnCase::default();
        case.order_lines.insert(
            "L1".into(),
            OrderLine {
                line_id: "L1".into(),
                sku: "SHIRT".into(),
                quantity: 3,
                amount_paid_minor: 9_000,
                fulfilled_at_ms: 0,
                delivered_at_ms: 0,
                location: "DC1".into(),
            },
        );
        case.refunds.push(Refund {
            refund_id: "R-1-refund-1".into(),
            method: RefundMethod::OriginalPayment,
            lines: vec![RefundLine {
                line_id: "L1".into(),
                quantity: 3,
                gross_minor: 9_000,
            }],
            restocking_fee_minor: 900,
            shipping_fee_minor: 500,
            total_minor: 7_600,
            state: RefundState::PendingGate,
            decided_at_ms: 0,
            released_at_ms: None,
        });
        let memo = credit_memo(&erp(), &key, &case);
        memo.validate().unwrap();
        // 76.00 over 3 units: 2 at 25.33 and 1 at 25.34.
        let total: i64 = memo
            .lines
            .iter()
            .map(|line| {
                assert_eq!(line.material, "TG11");
                let cents: i64 = line.unit_amount.replace('.', "").parse().unwrap();
                cents * i64::from(line.quantity)
            })
            .sum();
        assert_eq!(total, 7_600);
        assert_eq!(memo.lines.len(), 2);
        assert_eq!(decimal(pending_total(&case)), "76.00");
        assert_eq!(decimal(5), "0.05");
    }

    #[test]
    fn a_step_goes_on_only_under_the_scanned_epoch_within_the_lease() {
        let key = ReturnKey {
            tenant: "acme".into(),
            return_id: "R-1".into(),
        };
        let table = ShardTable::new(8);
        let shard = table.shard_of(&ReturnEntity::encode_key(&key));
        // Moving (handed off, or not claimed yet): stop.
        assert!(!served_under(&table, &key, Some(3)));
        table.set(shard, skuld_cluster::shards::Route::Local { epoch: 3 });
        table.serve_until(Instant::now() + Duration::from_secs(60));
        assert!(served_under(&table, &key, Some(3)));
        // Moved away and back since the scan: another epoch.
        assert!(!served_under(&table, &key, Some(2)));
        assert!(!served_under(&table, &key, None));
        // Still the route, but past the lease's safe window.
        table.serve_until(Instant::now());
        assert!(!served_under(&table, &key, Some(3)));
        table.serve_until(Instant::now() + Duration::from_secs(60));
        table.set(shard, skuld_cluster::shards::Route::Moving);
        assert!(!served_under(&table, &key, Some(3)));
    }

    #[test]
    fn bounded_cuts_on_a_character_boundary() {
        assert_eq!(bounded("abc", 5), "abc");
        assert_eq!(bounded("aéb", 2), "a");
    }
}
