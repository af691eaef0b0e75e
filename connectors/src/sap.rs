//! SAP S/4HANA credit memo requests (ERP.md A-C, items 10-13): the OData V2
//! `API_CREDIT_MEMO_REQUEST_SRV` create by deep insert behind a CSRF token,
//! the look-up by the deterministic external reference in
//! `PurchaseOrderByCustomer`, and the posting status read from the G2
//! billing document's `AccountingTransferStatus` (A.9, A.10).
//!
//! SAP has no idempotency of its own (B.7): a second POST is a second credit
//! memo. So [`Sap::ensure`] always looks the reference up before it POSTs,
//! and a POST whose outcome is unknown (timeout, lost reply, 5xx) comes back
//! as [`Ensured::InDoubt`]: the caller records the doubt durably and calls
//! `ensure` again later with its age, which looks up first and POSTs again
//! only once the reference is still absent after the settle time (C.2
//! step 3). This type holds no per-case state; the caller's record does.

use std::time::Duration;

use parking_lot::Mutex;
use reqwest::Client;
use serde_json::{json, Value};

use crate::config::Secret;
use crate::http::{self, Reply, DEFAULT_RETRY};
use crate::outcome::ConnectorError;

const CMR_SERVICE: &str = "/sap/opu/odata/sap/API_CREDIT_MEMO_REQUEST_SRV";
const BILLING_SERVICE: &str = "/sap/opu/odata/sap/API_BILLING_DOCUMENT_SRV";

/// How to reach one SAP tenant.
#[derive(Debug, Clone)]
pub struct SapSettings {
    /// `https://my<tenant>-api.s4hana.cloud.sap` (B.1), without the service path.
    pub base_url: String,
    /// The communication user (B.2, Basic auth).
    pub username: String,
    pub password: Secret,
    /// One HTTP call's budget; past it the call is in doubt.
    pub timeout: Duration,
    /// After an ambiguous create, how long the reference must stay absent
    /// before a new POST (long enough for an in-flight create to commit).
    pub settle: Duration,
}

/// One line of a credit memo request (C.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditMemoLine {
    /// The SAP material the SKU maps to (≤ 40).
    pub material: String,
    pub quantity: u32,
    /// The commercial unit, e.g. `PC`.
    pub unit: String,
    /// Refund per unit as a decimal string, e.g. `"17.55"`.
    pub unit_amount: String,
}

/// A credit memo request as skuld builds it from a return case (C.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditMemo {
    /// The deterministic external reference (C.2), ≤ 35 upper-case ASCII.
    pub reference: String,
    pub document_type: String,
    pub sales_organization: String,
    pub distribution_channel: String,
    pub division: String,
    pub sold_to_party: String,
    /// The 3-character order reason; SAP requires one (A.2).
    pub order_reason: String,
    pub currency: String,
    /// The tenant's manual price condition type (A.4).
    pub condition_type: String,
    pub lines: Vec<CreditMemoLine>,
}

impl CreditMemo {
    /// C.1: checked before sending, so a field SAP would refuse for length
    /// never costs a round trip (item 14).
    pub fn validate(&self) -> Result<(), ConnectorError> {
        let fields = [
            ("PurchaseOrderByCustomer", &self.reference, 35),
            ("CreditMemoRequestType", &self.document_type, 4),
            ("SalesOrganization", &self.sales_organization, 4),
            ("DistributionChannel", &self.distribution_channel, 2),
            ("OrganizationDivision", &self.division, 2),
            ("SoldToParty", &self.sold_to_party, 10),
            ("SDDocumentReason", &self.order_reason, 3),
            ("TransactionCurrency", &self.currency, 5),
            ("ConditionType", &self.condition_type, 4),
        ];
        for (name, value, max) in fields {
            if value.is_empty() || value.chars().count() > max {
                return Err(ConnectorError::invalid(
                    "SKULD/LENGTH",
                    format!("{name} must be 1 to {max} characters"),
                ));
            }
        }
        if self.lines.is_empty() {
            return Err(ConnectorError::invalid(
                "SKULD/NO_ITEMS",
                "a credit memo request needs at least one line",
            ));
        }
        for line in &self.lines {
            if line.material.is_empty() || line.material.chars().count() > 40 {
                return Err(ConnectorError::invalid(
                    "SKULD/LENGTH",
                    "Material must be 1 to 40 characters",
                ));
            }
        }
        Ok(())
    }

    /// B.4's minimal deep insert: header, items, a manual price per item.
    fn payload(&self) -> Value {
        let items: Vec<Value> = self
            .lines
            .iter()
            .enumerate()
            .map(|(index, line)| {
                json!({
                    "CreditMemoRequestItem": ((index + 1) * 10).to_string(),
                    "Material": line.material,
                    "RequestedQuantity": line.quantity.to_string(),
                    "RequestedQuantityUnit": line.unit,
                    "PurchaseOrderByCustomer": self.reference,
                    "to_PricingElement": [{
                        "ConditionType": self.condition_type,
                        "ConditionRateValue": line.unit_amount,
                        "ConditionCurrency": self.currency,
                    }],
                })
            })
            .collect();
        json!({
            "CreditMemoRequestType": self.document_type,
            "SalesOrganization": self.sales_organization,
            "DistributionChannel": self.distribution_channel,
            "OrganizationDivision": self.division,
            "SoldToParty": self.sold_to_party,
            "PurchaseOrderByCustomer": self.reference,
            "SDDocumentReason": self.order_reason,
            "TransactionCurrency": self.currency,
            "to_Item": items,
        })
    }
}

/// A credit memo request SAP holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub credit_memo_request: String,
    pub total_net_amount: String,
    pub currency: String,
    /// The customer SAP holds it for (compared by [`Sap::ensure`], not
    /// filtered on: see [`Sap::find`]).
    pub sold_to_party: String,
}

impl Document {
    fn from_entity(entity: &Value) -> Self {
        Self {
            credit_memo_request: text(entity, "CreditMemoRequest"),
            total_net_amount: text(entity, "TotalNetAmount"),
            currency: text(entity, "TransactionCurrency"),
            sold_to_party: text(entity, "SoldToParty"),
        }
    }
}

/// What [`Sap::ensure`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// This call's POST created it.
    Created(Document),
    /// It existed already (an earlier POST whose reply was lost, or a
    /// previous owner's): adopted, not created again.
    Found(Document),
    /// The POST's outcome is unknown (timeout, lost reply, 5xx): record the
    /// doubt and call `ensure` again with its age.
    InDoubt { reason: String },
    /// In doubt and not yet found, and the settle time has not passed:
    /// look again later, do not POST.
    Settling,
}

/// The posting status of a credit memo request (C.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posting {
    /// No G2 credit memo yet (billing block, billing job not run).
    NotBilled,
    /// Billed, not (yet) posted: `AccountingTransferStatus` other than `C`.
    Held {
        billing_document: String,
        status: String,
    },
    /// Posted to accounting: the proof to record.
    Posted {
        billing_document: String,
        company_code: String,
        fiscal_year: String,
        accounting_document: String,
        amount: String,
        currency: String,
    },
    /// The credit memo was cancelled.
    Cancelled { billing_document: String },
}

/// One SAP tenant's connection: the HTTP client and the CSRF token with
/// the session cookies it is bound to (B.3).
pub struct Sap {
    settings: SapSettings,
    client: Client,
    csrf: Mutex<Option<Csrf>>,
}

#[derive(Clone)]
struct Csrf {
    token: String,
    cookie: String,
}

/// OData literal quoting: `'` doubled.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Percent-encodes a query value; spaces as `%20`, since not every Gateway
/// reads `+` as a space.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'\'' | b',' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn text(value: &Value, field: &str) -> String {
    value
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// Item 11: classifies a reply that is not a success. 400 is a permanent
/// business rejection (with the Gateway `code`, text and `errordetails`),
/// 401/403 configuration, 429 and 5xx retryable (for a create: in doubt).
fn classify(reply: &Reply) -> ConnectorError {
    let body = reply.json();
    let error = &body["error"];
    let code = error["code"].as_str().unwrap_or("").to_owned();
    let mut message = error["message"]["value"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| reply.excerpt());
    if let Some(transaction) = error["innererror"]["transactionid"].as_str() {
        // For SAP support (item 11); carries no secret.
        tracing::warn!(status = reply.status, code = %code, transactionid = transaction, "SAP refused a call");
    }
    if let Some(details) = error["innererror"]["errordetails"].as_array() {
        for detail in details {
            let text = detail["message"].as_str().unwrap_or("");
            if !text.is_empty() && !message.contains(text) {
                message.push_str("; ");
                message.push_str(text);
            }
        }
    }
    match reply.status {
        400 | 404 | 405 | 406 | 412 | 415 | 428 => ConnectorError::invalid(
            if code.is_empty() {
                format!("HTTP/{}", reply.status)
            } else {
                code
            },
            message,
        ),
        401 => ConnectorError::Config("SAP refused the credentials (401)".to_owned()),
        403 => ConnectorError::Config(format!("SAP refused the call (403): {message}")),
        _ => ConnectorError::retry(
            reply.retry_after().unwrap_or(DEFAULT_RETRY),
            format!("SAP answered {}: {message}", reply.status),
        ),
    }
}

impl Sap {
    pub fn new(settings: SapSettings) -> Result<Self, ConnectorError> {
        if settings.base_url.is_empty() || settings.username.is_empty() {
            return Err(ConnectorError::Config(
                "SAP needs a base url and a username".to_owned(),
            ));
        }
        let client = http::client(settings.timeout)?;
        Ok(Self {
            settings: SapSettings {
                base_url: settings.base_url.trim_end_matches('/').to_owned(),
                ..settings
            },
            client,
            csrf: Mutex::new(None),
        })
    }

    fn get(&self, path_and_query: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path_and_query}", self.settings.base_url))
            .basic_auth(
                &self.settings.username,
                Some(self.settings.password.expose()),
            )
            .header("accept", "application/json")
    }

    async fn get_json(&self, path_and_query: &str) -> Result<Value, ConnectorError> {
        let reply = http::send(self.get(path_and_query)).await?;
        if !crate::outcome::is_success(reply.status) {
            return Err(classify(&reply));
        }
        Ok(reply.json())
    }

    /// B.3 step 1: a GET of the service root with `X-CSRF-Token: Fetch`.
    async fn fetch_csrf(&self) -> Result<Csrf, ConnectorError> {
        let reply = http::send(
            self.get(&format!("{CMR_SERVICE}/"))
                .header("x-csrf-token", "Fetch"),
        )
        .await?;
        if !crate::outcome::is_success(reply.status) {
            return Err(classify(&reply));
        }
        let token = reply
            .header("x-csrf-token")
            .filter(|token| !token.is_empty() && !token.eq_ignore_ascii_case("required"))
            .ok_or_else(|| ConnectorError::retry(DEFAULT_RETRY, "SAP sent no CSRF token"))?
            .to_owned();
        let cookie = reply
            .headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .filter_map(|value| value.split(';').next())
            .collect::<Vec<_>>()
            .join("; ");
        let csrf = Csrf { token, cookie };
        *self.csrf.lock() = Some(csrf.clone());
        Ok(csrf)
    }

    async fn csrf(&self) -> Result<Csrf, ConnectorError> {
        let cached = self.csrf.lock().clone();
        match cached {
            Some(csrf) => Ok(csrf),
            None => self.fetch_csrf().await,
        }
    }

    /// Every credit memo request that carries `reference`, whoever it is
    /// for (B.4's look-up, C.2 step 1). The reference alone is unique per
    /// tenant and case; filtering on the sold-to party too would miss the
    /// request an earlier create made once the customer mapping changed,
    /// and `ensure` would create a second credit memo.
    pub async fn find(&self, reference: &str) -> Result<Vec<Document>, ConnectorError> {
        let filter = format!("PurchaseOrderByCustomer eq {}", quoted(reference));
        let body = self
            .get_json(&format!(
                "{CMR_SERVICE}/A_CreditMemoRequest?$filter={}&$select=CreditMemoRequest,TotalNetAmount,TransactionCurrency,SoldToParty&$format=json",
                encode(&filter)
            ))
            .await?;
        Ok(body["d"]["results"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(Document::from_entity)
            .filter(|document| !document.credit_memo_request.is_empty())
            .collect())
    }

    /// One POST of the deep insert; a 403 `Required` refetches the token and
    /// sends once more (the first was refused before SAP applied anything).
    async fn post(&self, memo: &CreditMemo) -> Result<Document, ConnectorError> {
        let payload = memo.payload();
        let mut refetched = false;
        loop {
            let csrf = self.csrf().await?;
            let reply = http::send(
                self.client
                    .post(format!(
                        "{}{CMR_SERVICE}/A_CreditMemoRequest",
                        self.settings.base_url
                    ))
                    .basic_auth(
                        &self.settings.username,
                        Some(self.settings.password.expose()),
                    )
                    .header("accept", "application/json")
                    .header("x-csrf-token", &csrf.token)
                    .header("cookie", &csrf.cookie)
                    .json(&payload),
            )
            .await?;
            let required = reply
                .header("x-csrf-token")
                .is_some_and(|value| value.eq_ignore_ascii_case("required"));
            if reply.status == 403 && required && !refetched {
                refetched = true;
                *self.csrf.lock() = None;
                continue;
            }
            if !crate::outcome::is_success(reply.status) {
                return Err(classify(&reply));
            }
            let document = Document::from_entity(&reply.json()["d"]);
            if document.credit_memo_request.is_empty() {
                // Created, but the reply does not say which: look it up.
                return Err(ConnectorError::retry(
                    DEFAULT_RETRY,
                    "SAP's create reply named no document",
                ));
            }
            return Ok(document);
        }
    }

    /// Makes sure SAP holds exactly one credit memo request for
    /// `memo.reference` (C.2): look up first, adopt what is there, POST
    /// only when it is absent, never POST blindly after a doubt.
    ///
    /// `in_doubt_for` is the age of the caller's recorded doubt (an earlier
    /// POST whose outcome is unknown), `None` when there is none.
    pub async fn ensure(
        &self,
        memo: &CreditMemo,
        in_doubt_for: Option<Duration>,
    ) -> Result<Ensured, ConnectorError> {
        memo.validate()?;
        let found = self.find(&memo.reference).await?;
        match found.as_slice() {
            [document] if document.sold_to_party != memo.sold_to_party => {
                // The case's request exists for another customer (the
                // customer mapping changed since): finance decides; neither
                // adopted for the wrong customer nor created a second time.
                return Err(ConnectorError::invalid(
                    "SKULD/SOLD_TO_MISMATCH",
                    format!(
                        "credit memo request {} with reference {} is for sold-to party {:?}, the case maps to {:?}",
                        document.credit_memo_request,
                        memo.reference,
                        document.sold_to_party,
                        memo.sold_to_party
                    ),
                ));
            }
            [document] => return Ok(Ensured::Found(document.clone())),
            [] => {}
            _ => {
                // C.2: alert and stop; never cancel one automatically.
                return Err(ConnectorError::invalid(
                    "SKULD/DUPLICATE_REFERENCE",
                    format!(
                        "{} credit memo requests carry reference {}",
                        found.len(),
                        memo.reference
                    ),
                ));
            }
        }
        if in_doubt_for.is_some_and(|age| age < self.settings.settle) {
            return Ok(Ensured::Settling);
        }
        match self.post(memo).await {
            Ok(document) => Ok(Ensured::Created(document)),
            // Timeouts, lost replies and 5xx: SAP may have applied it.
            Err(ConnectorError::Retry { reason, .. }) => Ok(Ensured::InDoubt { reason }),
            Err(other) => Err(other),
        }
    }

    /// C.3 steps 2-3: the G2 credit memo billed from the request and its
    /// accounting status.
    pub async fn posting(&self, credit_memo_request: &str) -> Result<Posting, ConnectorError> {
        let filter = format!("SalesDocument eq {}", quoted(credit_memo_request));
        let items = self
            .get_json(&format!(
                "{BILLING_SERVICE}/A_BillingDocumentItem?$filter={}&$select=BillingDocument&$format=json",
                encode(&filter)
            ))
            .await?;
        let mut billing_documents: Vec<String> = items["d"]["results"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|item| text(item, "BillingDocument"))
            .filter(|number| !number.is_empty())
            .collect();
        billing_documents.sort();
        billing_documents.dedup();
        let mut status = Posting::NotBilled;
        for billing_document in billing_documents {
            let body = self
                .get_json(&format!(
                    "{BILLING_SERVICE}/A_BillingDocument({})?$select=BillingDocumentType,AccountingTransferStatus,BillingDocumentIsCancelled,AccountingDocument,CompanyCode,FiscalYear,TotalNetAmount,TransactionCurrency&$format=json",
                    encode(&quoted(&billing_document))
                ))
                .await?;
            let document = &body["d"];
            let cancelled = document["BillingDocumentIsCancelled"]
                .as_bool()
                .unwrap_or(false);
            let transfer = text(document, "AccountingTransferStatus");
            let accounting_document = text(document, "AccountingDocument");
            let this = if cancelled || transfer == "E" {
                Posting::Cancelled { billing_document }
            } else if transfer == "C" && !accounting_document.is_empty() {
                Posting::Posted {
                    billing_document,
                    company_code: text(document, "CompanyCode"),
                    fiscal_year: text(document, "FiscalYear"),
                    accounting_document,
                    amount: text(document, "TotalNetAmount"),
                    currency: text(document, "TransactionCurrency"),
                }
            } else {
                Posting::Held {
                    billing_document,
                    status: transfer,
                }
            };
            // A posted, live credit memo wins over a cancelled earlier one.
            status = match (&status, &this) {
                (Posting::Posted { .. }, _) => status,
                _ => this,
            };
        }
        Ok(status)
    }
}

/// Amounts as SAP prints them (`"35.10"`) and skuld computes them compared
/// by value, not by text (`"35.1"` is the same amount).
pub fn same_amount(left: &str, right: &str) -> bool {
    fn cents(text: &str) -> Option<i128> {
        let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
        if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let whole: i128 = whole.parse().ok()?;
        let fraction: i128 = format!("{fraction:0<3}").parse().ok()?;
        Some(whole * 1000 + if whole < 0 { -fraction } else { fraction })
    }
    matches!((cents(left), cents(right)), (Some(a), Some(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_quoted_and_encoded() {
        assert_eq!(quoted("O'NEIL"), "'O''NEIL'");
        assert_eq!(
            encode("PurchaseOrderByCustomer eq 'A B'"),
            "PurchaseOrderByCustomer%20eq%20'A%20B'"
        );
    }

    #[test]
    fn amounts_compare_by_value() {
        assert!(same_amount("35.10", "35.1"));
        assert!(same_amount("35", "35.000"));
        assert!(!same_amount("35.10", "35.11"));
        assert!(!same_amount("x", "x"));
    }

    #[test]
    fn gateway_errors_keep_code_text_and_details() {
        let body = json!({"error": {"code": "V1/460", "message": {"lang": "en", "value": "Enter an order reason"},
            "innererror": {"transactionid": "T1", "errordetails": [{"code": "V1/460", "message": "Enter an order reason"}, {"code": "V1/1", "message": "second"}]}}});
        let reply = Reply {
            status: 400,
            headers: reqwest::header::HeaderMap::new(),
            body: serde_json::to_vec(&body).unwrap(),
        };
        assert_eq!(
            classify(&reply),
            ConnectorError::invalid("V1/460", "Enter an order reason; second")
        );
        let unavailable = Reply {
            status: 503,
            headers: reqwest::header::HeaderMap::new(),
            body: Vec::new(),
        };
        assert!(matches!(
            classify(&unavailable),
            ConnectorError::Retry { .. }
        ));
        let auth = Reply {
            status: 401,
            ..unavailable
        };
        assert!(matches!(classify(&auth), ConnectorError::Config(_)));
    }
}
