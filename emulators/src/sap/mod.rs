//! SAP S/4HANA emulator (ERP.md A-C, "What the emulator and connector should
//! do" 1-7): the OData V2 service `API_CREDIT_MEMO_REQUEST_SRV` (deep-insert
//! create of `A_CreditMemoRequest` with `to_Item` and item pricing, GET by
//! key and by `$filter`), the read-only `API_BILLING_DOCUMENT_SRV` whose
//! `AccountingTransferStatus` says a credit was posted (A.9, A.10), Basic
//! auth, the CSRF token bound to a session cookie (B.3), and SAP's Gateway
//! error body (B.5).
//!
//! Like SAP (B.7) a repeated POST creates a second document: the emulator
//! has no idempotency, so a connector must dedupe by its reference.
//! Billing and posting happen on the emulator's schedule (the "posting
//! window"): automatically some time after the create, or only on a control
//! call. Beyond the shared front-door faults, create-only switches reject,
//! fail, answer late or lose the reply of the next creates, because a
//! front-door fault would hit the CSRF fetch that precedes every create.

mod api;
mod control;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::faults::Faults;
use crate::recorder::Recorder;
use crate::server::{serve, FrontDoor, RunningServer};

/// The credit memo request service root (A.1).
pub const CMR_SERVICE: &str = "/sap/opu/odata/sap/API_CREDIT_MEMO_REQUEST_SRV";
/// The billing document service root (A.9).
pub const BILLING_SERVICE: &str = "/sap/opu/odata/sap/API_BILLING_DOCUMENT_SRV";

/// When billing and posting to accounting happen after a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Posting {
    /// The G2 credit memo is billed and posted (`AccountingTransferStatus`
    /// `C`) this long after the request was created.
    After { delay_ms: u64 },
    /// Nothing is billed until a control call (`bill`, `post`): finance is
    /// slow, or a reviewer holds the billing block.
    Manual,
}

#[derive(Debug, Clone)]
pub struct SapConfig {
    /// 0 picks a free port.
    pub port: u16,
    /// The communication user (B.2: Basic auth).
    pub username: String,
    pub password: String,
    /// Requests are numbered from here (A.2: e.g. `60000002`).
    pub first_credit_memo_request: u64,
    pub first_billing_document: u64,
    pub first_accounting_document: u64,
    pub company_code: String,
    pub posting: Posting,
}

impl Default for SapConfig {
    fn default() -> Self {
        Self {
            port: 0,
            username: "SKULD_COMM_USER".to_owned(),
            password: "skuld-emulator-password".to_owned(),
            first_credit_memo_request: 60_000_000,
            first_billing_document: 90_000_000,
            first_accounting_document: 1_400_000_000,
            company_code: "1710".to_owned(),
            posting: Posting::After { delay_ms: 0 },
        }
    }
}

/// Create-only faults (the control API's `/_control/sap/faults`); each
/// field replaces only what it names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFaults {
    /// Refuse the next N creates with a business error (400).
    pub reject_next: Option<u32>,
    /// The T100 code and text of that error; defaults are a blocked customer.
    pub reject_code: Option<String>,
    pub reject_message: Option<String>,
    /// Answer the next N creates with `fail_status` without applying them.
    pub fail_next: Option<u32>,
    pub fail_status: Option<u16>,
    /// Apply the next N creates, then close the connection without a reply.
    pub drop_reply_next: Option<u32>,
    /// Apply each create, then wait this long before answering.
    pub late_reply_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct CreateFaultState {
    reject_next: u32,
    reject_code: Option<String>,
    reject_message: Option<String>,
    fail_next: u32,
    fail_status: Option<u16>,
    drop_reply_next: u32,
    late_reply: Duration,
}

/// What a create does, decided when it arrives.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CreatePlan {
    pub reject: Option<(String, String)>,
    pub fail_with: Option<u16>,
    pub drop_reply: bool,
    pub late_reply: Duration,
}

/// One credit memo request as the emulator keeps it.
#[derive(Debug, Clone)]
pub(crate) struct CreditMemoRequest {
    pub number: String,
    /// The header fields the caller sent (writable ones only).
    pub header: serde_json::Map<String, Value>,
    pub items: Vec<Item>,
    /// Milli-units of the currency (Decimal(16,3)).
    pub total_net_milli: i128,
    pub currency: String,
    pub created_unix_ms: u64,
    pub created: Instant,
    pub billing_document: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub number: String,
    pub fields: serde_json::Map<String, Value>,
    pub pricing: Vec<serde_json::Map<String, Value>>,
    pub net_milli: i128,
}

/// A G2 credit memo billing document (A.9).
#[derive(Debug, Clone, Serialize)]
pub struct BillingDocument {
    pub billing_document: String,
    pub credit_memo_request: String,
    /// A.10 (domain RFBSK): `A` blocked for FI, `C` posted, `E` cancelled.
    pub accounting_transfer_status: String,
    pub accounting_document: String,
    pub is_cancelled: bool,
    pub total_net_milli: i128,
    pub currency: String,
    pub purchase_order_by_customer: String,
    pub sold_to_party: String,
}

/// A credit memo request as the control API and tests read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreditMemoSummary {
    pub credit_memo_request: String,
    pub purchase_order_by_customer: String,
    pub sold_to_party: String,
    pub total_net_amount: String,
    pub currency: String,
    pub billing_document: Option<String>,
    pub accounting_transfer_status: Option<String>,
}

#[derive(Default)]
pub(crate) struct Documents {
    pub requests: BTreeMap<String, CreditMemoRequest>,
    pub billing: BTreeMap<String, BillingDocument>,
    next_request: u64,
    next_billing: u64,
    next_accounting: u64,
}

pub(crate) struct SapState {
    pub config: SapConfig,
    pub posting: Mutex<Posting>,
    /// Session cookie value -> its CSRF token (B.3: the token is bound to
    /// the session's cookies).
    pub sessions: Mutex<HashMap<String, String>>,
    pub documents: Mutex<Documents>,
    create_faults: Mutex<CreateFaultState>,
}

/// The session cookie and the anti-XSRF cookie (B.3), system `EMU`, client 100.
pub(crate) const SESSION_COOKIE: &str = "SAP_SESSIONID_EMU_100";
pub(crate) const XSRF_COOKIE: &str = "sap-XSRF_EMU_100";

/// B.5: the Gateway error body, with `errordetails` (code, message,
/// propertyref) and a transaction id for SAP support.
pub(crate) fn sap_error(
    status: StatusCode,
    code: &str,
    message: &str,
    details: &[(&str, &str, &str)],
) -> Response<Body> {
    let transaction = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    let errordetails: Vec<Value> = details
        .iter()
        .map(|(code, message, propertyref)| {
            json!({"ContentID": "", "code": code, "message": message, "longtext_url": "",
                   "propertyref": propertyref, "severity": "error", "target": "", "transition": false})
        })
        .collect();
    let mut response = (
        status,
        axum::Json(json!({"error": {
            "code": code,
            "message": {"lang": "en", "value": message},
            "innererror": {
                "application": {"component_id": "SD-SLS-API", "service_namespace": "/SAP/",
                                "service_id": "API_CREDIT_MEMO_REQUEST_SRV", "service_version": "0001"},
                "transactionid": transaction,
                "timestamp": crate::clock::unix_millis().to_string(),
                "Error_Resolution": {
                    "SAP_Transaction": "For backend administrators: run transaction /IWFND/ERROR_LOG on SAP Gateway hub system and search for entries with the timestamp above for more details",
                    "SAP_Note": "See SAP Note 1797736 for error analysis (https://service.sap.com/sap/support/notes/1797736)"
                },
                "errordetails": errordetails,
            }
        }})),
    )
        .into_response();
    response
        .headers_mut()
        .insert("dataserviceversion", HeaderValue::from_static("1.0"));
    response
}

fn injected_error(status: StatusCode) -> Response<Body> {
    // The code is the emulator's choice: ERP.md lists 500/503 without a
    // confirmed message.
    sap_error(
        status,
        "/IWFND/CM_BEC/026",
        "The system is temporarily unavailable; try again later",
        &[],
    )
}

/// Milli-units as SAP writes an amount: scaled to the currency (B.4: USD
/// shows 2 decimals though the scale is 3).
pub(crate) fn amount_text(milli: i128, currency: &str) -> String {
    let decimals = match currency {
        "JPY" | "KRW" => 0,
        _ => 2,
    };
    let negative = milli < 0;
    let milli = milli.abs();
    let whole = milli / 1000;
    let fraction = milli % 1000;
    let sign = if negative { "-" } else { "" };
    match decimals {
        0 => format!("{sign}{whole}"),
        _ => format!("{sign}{whole}.{:02}", fraction / 10),
    }
}

/// A decimal string (`"17.55"`, `"1"`) as milli-units; more than three
/// decimals or anything else is `None`.
pub(crate) fn parse_decimal(text: &str) -> Option<i128> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || fraction.len() > 3
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || whole.len() > 20
    {
        return None;
    }
    let mut value: i128 = whole.parse().ok()?;
    value *= 1000;
    let padded = format!("{fraction:0<3}");
    value += padded.parse::<i128>().ok()?;
    Some(if negative { -value } else { value })
}

impl SapState {
    pub fn create_plan(&self) -> CreatePlan {
        let mut faults = self.create_faults.lock();
        let mut plan = CreatePlan {
            late_reply: faults.late_reply,
            ..CreatePlan::default()
        };
        if faults.fail_next > 0 {
            faults.fail_next -= 1;
            plan.fail_with = Some(faults.fail_status.unwrap_or(503));
            return plan;
        }
        if faults.reject_next > 0 {
            faults.reject_next -= 1;
            plan.reject = Some((
                faults
                    .reject_code
                    .clone()
                    .unwrap_or_else(|| "V1/313".to_owned()),
                faults
                    .reject_message
                    .clone()
                    .unwrap_or_else(|| "Sold-to party is blocked for sales support".to_owned()),
            ));
            return plan;
        }
        if faults.drop_reply_next > 0 {
            faults.drop_reply_next -= 1;
            plan.drop_reply = true;
        }
        plan
    }

    /// Moves every request whose posting window has passed to billed and
    /// posted. Run on each read, so no timer task is needed.
    pub fn settle(&self) {
        let Posting::After { delay_ms } = *self.posting.lock() else {
            return;
        };
        let mut documents = self.documents.lock();
        let due: Vec<String> = documents
            .requests
            .values()
            .filter(|request| {
                request.created.elapsed() >= Duration::from_millis(delay_ms)
                    && request.billing_document.is_none()
            })
            .map(|request| request.number.clone())
            .collect();
        for number in due {
            self.bill_locked(&mut documents, &number);
            self.post_locked(&mut documents, &number);
        }
    }

    /// Creates the G2 credit memo for a request, blocked for FI (`A`).
    fn bill_locked(&self, documents: &mut Documents, number: &str) -> Option<String> {
        let request = documents.requests.get(number)?;
        if let Some(existing) = &request.billing_document {
            return Some(existing.clone());
        }
        let billing_number =
            (self.config.first_billing_document + documents.next_billing).to_string();
        documents.next_billing += 1;
        let field = |name: &str| {
            request
                .header
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let document = BillingDocument {
            billing_document: billing_number.clone(),
            credit_memo_request: number.to_owned(),
            accounting_transfer_status: "A".to_owned(),
            accounting_document: String::new(),
            is_cancelled: false,
            total_net_milli: request.total_net_milli,
            currency: request.currency.clone(),
            purchase_order_by_customer: field("PurchaseOrderByCustomer"),
            sold_to_party: field("SoldToParty"),
        };
        documents.billing.insert(billing_number.clone(), document);
        if let Some(request) = documents.requests.get_mut(number) {
            request.billing_document = Some(billing_number.clone());
        }
        Some(billing_number)
    }

    /// Transfers the request's credit memo to accounting (`C`).
    fn post_locked(&self, documents: &mut Documents, number: &str) -> Option<String> {
        let billing = self.bill_locked(documents, number)?;
        let accounting =
            (self.config.first_accounting_document + documents.next_accounting).to_string();
        let document = documents.billing.get_mut(&billing)?;
        if document.accounting_transfer_status == "C" {
            return Some(billing);
        }
        document.accounting_transfer_status = "C".to_owned();
        document.accounting_document = accounting;
        documents.next_accounting += 1;
        Some(billing)
    }

    pub fn next_request_number(&self, documents: &mut Documents) -> String {
        let number = (self.config.first_credit_memo_request + documents.next_request).to_string();
        documents.next_request += 1;
        number
    }
}

/// A running SAP emulator.
#[derive(Clone)]
pub struct SapEmulator {
    state: Arc<SapState>,
    front: Arc<FrontDoor>,
    base_url: String,
}

pub(crate) async fn start(config: SapConfig) -> std::io::Result<(SapEmulator, RunningServer)> {
    let port = config.port;
    let posting = config.posting;
    let state = Arc::new(SapState {
        config,
        posting: Mutex::new(posting),
        sessions: Mutex::new(HashMap::new()),
        documents: Mutex::new(Documents::default()),
        create_faults: Mutex::new(CreateFaultState::default()),
    });
    let front = Arc::new(FrontDoor {
        recorder: Arc::new(Recorder::new()),
        faults: Arc::new(Faults::default()),
        injected_error,
    });
    let emulator = SapEmulator {
        state: state.clone(),
        front: front.clone(),
        base_url: String::new(),
    };
    let router = Router::new()
        .merge(control::routes(emulator.clone()))
        .merge(crate::control::routes(front.clone()))
        .merge(api::routes(state));
    let server = serve(router, front, port).await?;
    let base_url = format!("http://{}", server.addr);
    Ok((
        SapEmulator {
            base_url,
            ..emulator
        },
        server,
    ))
}

impl SapEmulator {
    /// `http://127.0.0.1:<port>`: the host a connector is configured with.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn config(&self) -> &SapConfig {
        &self.state.config
    }

    pub fn recorder(&self) -> &Recorder {
        &self.front.recorder
    }

    pub fn faults(&self) -> &Faults {
        &self.front.faults
    }

    /// SAP has no rate limit here: always 0, kept for `Emulators`.
    pub fn budget_violations(&self) -> u64 {
        self.front.recorder.budget_violations()
    }

    /// Merges create-only faults.
    pub fn set_create_faults(&self, plan: &CreateFaults) {
        let mut faults = self.state.create_faults.lock();
        if let Some(count) = plan.reject_next {
            faults.reject_next = count;
        }
        if let Some(code) = &plan.reject_code {
            faults.reject_code = Some(code.clone());
        }
        if let Some(message) = &plan.reject_message {
            faults.reject_message = Some(message.clone());
        }
        if let Some(count) = plan.fail_next {
            faults.fail_next = count;
        }
        if let Some(status) = plan.fail_status {
            faults.fail_status = Some(status);
        }
        if let Some(count) = plan.drop_reply_next {
            faults.drop_reply_next = count;
        }
        if let Some(ms) = plan.late_reply_ms {
            faults.late_reply = Duration::from_millis(ms);
        }
    }

    pub fn clear_create_faults(&self) {
        *self.state.create_faults.lock() = CreateFaultState::default();
    }

    pub fn set_posting(&self, posting: Posting) {
        *self.state.posting.lock() = posting;
    }

    /// Bills a request (G2, blocked for FI); the billing document number.
    pub fn bill(&self, credit_memo_request: &str) -> Option<String> {
        let mut documents = self.state.documents.lock();
        self.state.bill_locked(&mut documents, credit_memo_request)
    }

    /// Bills (if needed) and posts a request to accounting.
    pub fn post(&self, credit_memo_request: &str) -> Option<String> {
        let mut documents = self.state.documents.lock();
        self.state.post_locked(&mut documents, credit_memo_request)
    }

    /// Cancels a request's credit memo (A.10 `E`).
    pub fn cancel(&self, credit_memo_request: &str) -> bool {
        let mut documents = self.state.documents.lock();
        let Some(billing) = documents
            .requests
            .get(credit_memo_request)
            .and_then(|request| request.billing_document.clone())
        else {
            return false;
        };
        match documents.billing.get_mut(&billing) {
            Some(document) => {
                document.is_cancelled = true;
                document.accounting_transfer_status = "E".to_owned();
                true
            }
            None => false,
        }
    }

    /// Voids every CSRF token (B.3: a session ended), so the next modifying
    /// call gets `403 Required` and the connector must fetch again.
    pub fn expire_tokens(&self) {
        self.state.sessions.lock().clear();
    }

    /// Every credit memo request, in number order.
    pub fn credit_memo_requests(&self) -> Vec<CreditMemoSummary> {
        self.state.settle();
        let documents = self.state.documents.lock();
        documents
            .requests
            .values()
            .map(|request| {
                let field = |name: &str| {
                    request
                        .header
                        .get(name)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                let billing = request
                    .billing_document
                    .as_ref()
                    .and_then(|number| documents.billing.get(number));
                CreditMemoSummary {
                    credit_memo_request: request.number.clone(),
                    purchase_order_by_customer: field("PurchaseOrderByCustomer"),
                    sold_to_party: field("SoldToParty"),
                    total_net_amount: amount_text(request.total_net_milli, &request.currency),
                    currency: request.currency.clone(),
                    billing_document: request.billing_document.clone(),
                    accounting_transfer_status: billing
                        .map(|document| document.accounting_transfer_status.clone()),
                }
            })
            .collect()
    }

    /// The requests that carry `reference` in `PurchaseOrderByCustomer`.
    pub fn requests_with_reference(&self, reference: &str) -> Vec<CreditMemoSummary> {
        self.credit_memo_requests()
            .into_iter()
            .filter(|request| request.purchase_order_by_customer == reference)
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_to_milli_units_and_print_scaled() {
        assert_eq!(parse_decimal("17.55"), Some(17_550));
        assert_eq!(parse_decimal("1"), Some(1_000));
        assert_eq!(parse_decimal("0.125"), Some(125));
        assert_eq!(parse_decimal("-2.5"), Some(-2_500));
        assert_eq!(parse_decimal("1.2345"), None);
        assert_eq!(parse_decimal("abc"), None);
        assert_eq!(parse_decimal(".5"), None);
        assert_eq!(amount_text(17_550, "USD"), "17.55");
        assert_eq!(amount_text(35_100, "EUR"), "35.10");
        assert_eq!(amount_text(1_000, "JPY"), "1");
    }
}
