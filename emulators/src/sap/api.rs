//! The OData V2 surface (ERP.md B.1-B.5): one handler for both services,
//! because OData keys sit inside a path segment (`A_CreditMemoRequest('1')`)
//! where a router's path parameters do not reach.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::{
    amount_text, parse_decimal, sap_error, CreditMemoRequest, Item, SapState, BILLING_SERVICE,
    CMR_SERVICE, SESSION_COOKIE, XSRF_COOKIE,
};
use crate::server::DropReply;

pub(super) fn routes(state: Arc<SapState>) -> Router {
    Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move { handle(&state, method, uri, headers, body).await }
        },
    )
}

/// A.2: the writable header fields and their EDM max lengths (0: a date).
const HEADER_FIELDS: &[(&str, usize)] = &[
    ("CreditMemoRequest", 10),
    ("CreditMemoRequestType", 4),
    ("SalesOrganization", 4),
    ("DistributionChannel", 2),
    ("OrganizationDivision", 2),
    ("SalesGroup", 3),
    ("SalesOffice", 4),
    ("SalesDistrict", 6),
    ("SoldToParty", 10),
    ("PurchaseOrderByCustomer", 35),
    ("CustomerPurchaseOrderType", 4),
    ("CustomerPurchaseOrderDate", 0),
    ("CreditMemoRequestDate", 0),
    ("SDDocumentReason", 3),
    ("PricingDate", 0),
    ("BillingDocumentDate", 0),
    ("ServicesRenderedDate", 0),
    ("TransactionCurrency", 5),
    ("HeaderBillingBlockReason", 2),
    ("CustomerPaymentTerms", 4),
    ("PaymentMethod", 1),
    ("ReferenceSDDocument", 10),
];

/// A.2: read-only header fields; sent ones are ignored, as Gateway does.
const HEADER_READ_ONLY: &[&str] = &[
    "TotalNetAmount",
    "ReferenceSDDocumentCategory",
    "CreditMemoReqApprovalReason",
    "SalesDocApprovalStatus",
    "OverallSDProcessStatus",
    "OverallOrdReltdBillgStatus",
    "TotalCreditCheckStatus",
    "OverallSDDocumentRejectionSts",
    "CreationDate",
    "CreatedByUser",
    "LastChangeDate",
    "LastChangeDateTime",
    "__metadata",
];

/// A.3: writable item fields (`RequestedQuantity` is a decimal: usize::MAX).
const ITEM_FIELDS: &[(&str, usize)] = &[
    ("CreditMemoRequestItem", 6),
    ("CreditMemoRequestItemCategory", 4),
    ("CreditMemoRequestItemText", 40),
    ("Material", 40),
    ("MaterialByCustomer", 35),
    ("PurchaseOrderByCustomer", 35),
    ("RequestedQuantity", usize::MAX),
    ("RequestedQuantityUnit", 3),
    ("RequestedQuantitySAPUnit", 3),
    ("RequestedQuantityISOUnit", 3),
    ("Plant", 4),
    ("ProfitCenter", 10),
    ("MaterialGroup", 9),
    ("ItemBillingBlockReason", 2),
    ("SalesDocumentRjcnReason", 2),
    ("ReferenceSDDocument", 10),
    ("ReferenceSDDocumentItem", 6),
];

const ITEM_READ_ONLY: &[&str] = &["NetAmount", "TransactionCurrency", "__metadata"];

/// A.4: writable item pricing fields.
const PRICING_FIELDS: &[(&str, usize)] = &[
    ("ConditionType", 4),
    ("ConditionRateValue", usize::MAX),
    ("ConditionCurrency", 5),
    ("ConditionQuantity", usize::MAX),
    ("ConditionQuantityUnit", 3),
];

/// Navigation properties a deep insert may carry; only `to_Item` (and the
/// item's `to_PricingElement`) are kept, the rest accepted and dropped.
const HEADER_NAVIGATION: &[&str] = &["to_Partner", "to_PricingElement", "to_Text"];
const ITEM_NAVIGATION: &[&str] = &["to_Partner", "to_Text"];

fn is_modifying(method: &Method) -> bool {
    matches!(
        method.as_str(),
        "POST" | "PUT" | "PATCH" | "MERGE" | "DELETE"
    )
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .and_then(|query| serde_urlencoded::from_str(query).ok())
        .unwrap_or_default()
}

fn query<'q>(pairs: &'q [(String, String)], name: &str) -> Option<&'q str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

async fn handle(
    state: &SapState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let path = uri.path();
    let (service, rest) = if let Some(rest) = path.strip_prefix(CMR_SERVICE) {
        (CMR_SERVICE, rest)
    } else if let Some(rest) = path.strip_prefix(BILLING_SERVICE) {
        (BILLING_SERVICE, rest)
    } else {
        return sap_error(
            StatusCode::NOT_FOUND,
            "/IWFND/MED/170",
            &format!("No service found for namespace '', name '{path}', version '0001'"),
            &[],
        );
    };
    if !authorized(state, &headers) {
        let mut response = (StatusCode::UNAUTHORIZED, "Logon failed").into_response();
        response.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=\"SAP NetWeaver Application Server [EMU/100]\""),
        );
        return response;
    }
    let fetch = header(&headers, "x-csrf-token").eq_ignore_ascii_case("fetch");
    if is_modifying(&method) && !csrf_valid(state, &headers) {
        // B.3: 403 with `X-CSRF-Token: Required`, and no token in the reply.
        let mut response = (StatusCode::FORBIDDEN, "CSRF token validation failed").into_response();
        response
            .headers_mut()
            .insert("x-csrf-token", HeaderValue::from_static("Required"));
        return response;
    }
    let pairs = query_pairs(&uri);
    let json_wanted = header(&headers, "accept").contains("application/json")
        || query(&pairs, "$format") == Some("json");
    state.settle();
    let rest = rest.trim_start_matches('/');
    let mut response = if method == Method::HEAD {
        StatusCode::OK.into_response()
    } else if !json_wanted {
        // ERP.md item 3 lets the emulator choose 406 over an Atom stub.
        sap_error(
            StatusCode::NOT_ACCEPTABLE,
            "/IWFND/CM_MGW/004",
            "The emulator answers JSON only: send Accept: application/json or $format=json",
            &[],
        )
    } else if service == CMR_SERVICE {
        credit_memo_requests(state, &method, rest, &pairs, &body).await
    } else {
        billing_documents(state, &method, rest, &pairs)
    };
    if fetch && !is_modifying(&method) {
        issue_token(state, &headers, &mut response);
    }
    response
        .headers_mut()
        .insert("dataserviceversion", HeaderValue::from_static("2.0"));
    response
}

fn authorized(state: &SapState, headers: &HeaderMap) -> bool {
    let expected = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        state.config.username, state.config.password
    ));
    header(headers, "authorization").strip_prefix("Basic ") == Some(expected.as_str())
}

fn csrf_valid(state: &SapState, headers: &HeaderMap) -> bool {
    let token = header(headers, "x-csrf-token");
    let Some(session) = cookie(headers, SESSION_COOKIE) else {
        return false;
    };
    !token.is_empty() && state.sessions.lock().get(&session).map(String::as_str) == Some(token)
}

/// B.3 step 1: the token in `x-csrf-token` and the session cookies it is
/// bound to. A caller that already holds a live session keeps it.
fn issue_token(state: &SapState, headers: &HeaderMap, response: &mut Response<Body>) {
    let mut sessions = state.sessions.lock();
    let existing = cookie(headers, SESSION_COOKIE)
        .and_then(|session| sessions.get(&session).map(|token| (session, token.clone())));
    let (session, token) = existing.unwrap_or_else(|| {
        let session = uuid::Uuid::new_v4().simple().to_string();
        let token = base64::engine::general_purpose::STANDARD
            .encode(uuid::Uuid::new_v4().as_bytes())
            .replace('=', "");
        sessions.insert(session.clone(), token.clone());
        (session, token)
    });
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&token) {
        headers.insert("x-csrf-token", value);
    }
    for cookie in [
        format!("{SESSION_COOKIE}={session}; path=/; HttpOnly"),
        format!("{XSRF_COOKIE}={token}; path=/sap/opu/odata; HttpOnly"),
    ] {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append("set-cookie", value);
        }
    }
}

/// `Name('key')` -> (`Name`, `key`).
fn keyed(segment: &str) -> Option<(&str, &str)> {
    let (name, key) = segment.split_once("('")?;
    let key = key.strip_suffix("')")?;
    Some((name, key))
}

async fn credit_memo_requests(
    state: &SapState,
    method: &Method,
    rest: &str,
    pairs: &[(String, String)],
    body: &[u8],
) -> Response<Body> {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", []) => service_document(&["A_CreditMemoRequest", "A_CreditMemoRequestItem"]),
        ("POST", ["A_CreditMemoRequest"]) => create(state, body).await,
        ("GET", ["A_CreditMemoRequest"]) => {
            let filters = match parse_filter(query(pairs, "$filter").unwrap_or("")) {
                Ok(filters) => filters,
                Err(response) => return response,
            };
            let expand = query(pairs, "$expand") == Some("to_Item");
            let select = select_list(pairs);
            let top = query(pairs, "$top").and_then(|top| top.parse::<usize>().ok());
            let skip = query(pairs, "$skip")
                .and_then(|skip| skip.parse::<usize>().ok())
                .unwrap_or(0);
            let documents = state.documents.lock();
            let mut results = Vec::new();
            for request in documents.requests.values() {
                let entity = request_json(request, documents.billing.get_or_none(request), expand);
                let matches = filters.iter().all(|(field, value)| {
                    entity.get(field.as_str()).and_then(Value::as_str) == Some(value.as_str())
                });
                if matches {
                    results.push(selected(entity, &select));
                }
            }
            let count = results.len();
            let results: Vec<Value> = results
                .into_iter()
                .skip(skip)
                .take(top.unwrap_or(usize::MAX))
                .collect();
            let mut d = json!({"results": results});
            if query(pairs, "$inlinecount") == Some("allpages") {
                d["__count"] = json!(count.to_string());
            }
            axum::Json(json!({ "d": d })).into_response()
        }
        ("GET", [segment]) | ("GET", [segment, "to_Item"]) => {
            let Some(("A_CreditMemoRequest", key)) = keyed(segment) else {
                return not_found(segment);
            };
            let documents = state.documents.lock();
            let Some(request) = documents.requests.get(key) else {
                return not_found(segment);
            };
            let billing = documents.billing.get_or_none(request);
            if segments.len() == 2 {
                return axum::Json(json!({"d": {"results": items_json(request)}})).into_response();
            }
            let expand = query(pairs, "$expand") == Some("to_Item");
            let entity = selected(request_json(request, billing, expand), &select_list(pairs));
            axum::Json(json!({ "d": entity })).into_response()
        }
        ("GET", _) => not_found(rest),
        _ => sap_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "/IWBEP/CM_MGW_RT/022",
            &format!("The emulator does not implement {method} on '{rest}'"),
            &[],
        ),
    }
}

trait BillingLookup {
    fn get_or_none(&self, request: &CreditMemoRequest) -> Option<&super::BillingDocument>;
}

impl BillingLookup for std::collections::BTreeMap<String, super::BillingDocument> {
    fn get_or_none(&self, request: &CreditMemoRequest) -> Option<&super::BillingDocument> {
        request
            .billing_document
            .as_ref()
            .and_then(|number| self.get(number))
    }
}

fn billing_documents(
    state: &SapState,
    method: &Method,
    rest: &str,
    pairs: &[(String, String)],
) -> Response<Body> {
    if method != Method::GET {
        return sap_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "/IWBEP/CM_MGW_RT/022",
            "Billing documents are read-only",
            &[],
        );
    }
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let documents = state.documents.lock();
    let select = select_list(pairs);
    match segments.as_slice() {
        [] => service_document(&["A_BillingDocument", "A_BillingDocumentItem"]),
        ["A_BillingDocumentItem"] | ["A_BillingDocument"] => {
            let filters = match parse_filter(query(pairs, "$filter").unwrap_or("")) {
                Ok(filters) => filters,
                Err(response) => return response,
            };
            let items = segments[0] == "A_BillingDocumentItem";
            let results: Vec<Value> = documents
                .billing
                .values()
                .map(|document| {
                    if items {
                        billing_item_json(document)
                    } else {
                        billing_json(document)
                    }
                })
                .filter(|entity| {
                    filters.iter().all(|(field, value)| {
                        entity.get(field.as_str()).and_then(Value::as_str) == Some(value.as_str())
                    })
                })
                .map(|entity| selected(entity, &select))
                .collect();
            axum::Json(json!({"d": {"results": results}})).into_response()
        }
        [segment] => match keyed(segment) {
            Some(("A_BillingDocument", key)) => match documents.billing.get(key) {
                Some(document) => {
                    axum::Json(json!({"d": selected(billing_json(document), &select)}))
                        .into_response()
                }
                None => not_found(segment),
            },
            _ => not_found(segment),
        },
        _ => not_found(rest),
    }
}

fn service_document(sets: &[&str]) -> Response<Body> {
    axum::Json(json!({"d": {"EntitySets": sets}})).into_response()
}

fn not_found(segment: &str) -> Response<Body> {
    sap_error(
        StatusCode::NOT_FOUND,
        "/IWBEP/CM_MGW_RT/020",
        &format!("Resource not found for segment '{segment}'"),
        &[],
    )
}

fn bad_request(code: &str, message: &str, propertyref: &str) -> Response<Body> {
    sap_error(
        StatusCode::BAD_REQUEST,
        code,
        message,
        &[(code, message, propertyref)],
    )
}

/// `A eq 'x' and B eq 'y'`: the subset of `$filter` ERP.md's look-ups use.
fn parse_filter(filter: &str) -> Result<Vec<(String, String)>, Response<Body>> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Ok(Vec::new());
    }
    let mut clauses = Vec::new();
    for clause in filter.split(" and ") {
        let parsed = clause.trim().split_once(" eq ").and_then(|(field, value)| {
            let value = value.trim().strip_prefix('\'')?.strip_suffix('\'')?;
            Some((field.trim().to_owned(), value.replace("''", "'")))
        });
        match parsed {
            Some(clause) => clauses.push(clause),
            None => {
                return Err(bad_request(
                    "/IWBEP/CM_MGW_RT/001",
                    &format!("Invalid filter expression: '{clause}'"),
                    "",
                ))
            }
        }
    }
    Ok(clauses)
}

fn select_list(pairs: &[(String, String)]) -> Vec<String> {
    query(pairs, "$select")
        .map(|select| {
            select
                .split(',')
                .map(|field| field.trim().to_owned())
                .filter(|field| !field.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn selected(entity: Value, select: &[String]) -> Value {
    if select.is_empty() {
        return entity;
    }
    let Value::Object(fields) = entity else {
        return entity;
    };
    Value::Object(
        fields
            .into_iter()
            .filter(|(name, _)| name == "__metadata" || select.iter().any(|s| s == name))
            .collect(),
    )
}

/// B.4: `/Date(ms)/` at midnight UTC.
fn date(unix_ms: u64) -> String {
    format!("/Date({})/", unix_ms / 86_400_000 * 86_400_000)
}

fn request_uri(number: &str) -> String {
    format!("{CMR_SERVICE}/A_CreditMemoRequest('{number}')")
}

fn request_json(
    request: &CreditMemoRequest,
    billing: Option<&super::BillingDocument>,
    expand: bool,
) -> Value {
    let uri = request_uri(&request.number);
    let mut entity = Map::new();
    entity.insert(
        "__metadata".to_owned(),
        json!({"id": uri, "uri": uri, "type": "API_CREDIT_MEMO_REQUEST_SRV.A_CreditMemoRequestType"}),
    );
    for (name, _) in HEADER_FIELDS {
        let value = request.header.get(*name).cloned().unwrap_or(json!(""));
        entity.insert((*name).to_owned(), value);
    }
    entity.insert("CreditMemoRequest".to_owned(), json!(request.number));
    let processed = if billing.is_some() { "C" } else { "A" };
    entity.insert(
        "TotalNetAmount".to_owned(),
        json!(amount_text(request.total_net_milli, &request.currency)),
    );
    entity.insert("OverallSDProcessStatus".to_owned(), json!(processed));
    entity.insert("OverallOrdReltdBillgStatus".to_owned(), json!(processed));
    entity.insert("SalesDocApprovalStatus".to_owned(), json!(""));
    entity.insert("OverallSDDocumentRejectionSts".to_owned(), json!("A"));
    entity.insert(
        "CreationDate".to_owned(),
        json!(date(request.created_unix_ms)),
    );
    entity.insert(
        "LastChangeDateTime".to_owned(),
        json!(format!("/Date({}+0000)/", request.created_unix_ms)),
    );
    let to_item = if expand {
        json!({"results": items_json(request)})
    } else {
        json!({"__deferred": {"uri": format!("{uri}/to_Item")}})
    };
    entity.insert("to_Item".to_owned(), to_item);
    Value::Object(entity)
}

fn items_json(request: &CreditMemoRequest) -> Vec<Value> {
    request
        .items
        .iter()
        .map(|item| {
            let uri = format!(
                "{CMR_SERVICE}/A_CreditMemoRequestItem(CreditMemoRequest='{}',CreditMemoRequestItem='{}')",
                request.number, item.number
            );
            let mut entity = item.fields.clone();
            entity.insert(
                "__metadata".to_owned(),
                json!({"id": uri, "uri": uri, "type": "API_CREDIT_MEMO_REQUEST_SRV.A_CreditMemoRequestItemType"}),
            );
            entity.insert("CreditMemoRequest".to_owned(), json!(request.number));
            entity.insert("CreditMemoRequestItem".to_owned(), json!(item.number));
            entity.insert(
                "NetAmount".to_owned(),
                json!(amount_text(item.net_milli, &request.currency)),
            );
            entity.insert("TransactionCurrency".to_owned(), json!(request.currency));
            let pricing: Vec<Value> = item
                .pricing
                .iter()
                .map(|element| Value::Object(element.clone()))
                .collect();
            entity.insert(
                "to_PricingElement".to_owned(),
                json!({ "results": pricing }),
            );
            Value::Object(entity)
        })
        .collect()
}

fn billing_json(document: &super::BillingDocument) -> Value {
    let uri = format!(
        "{BILLING_SERVICE}/A_BillingDocument('{}')",
        document.billing_document
    );
    json!({
        "__metadata": {"id": uri, "uri": uri, "type": "API_BILLING_DOCUMENT_SRV.A_BillingDocumentType"},
        "BillingDocument": document.billing_document,
        "BillingDocumentType": "G2",
        "SDDocumentCategory": "O",
        "BillingDocumentCategory": "L",
        "TotalNetAmount": amount_text(document.total_net_milli, &document.currency),
        "TransactionCurrency": document.currency,
        "SoldToParty": document.sold_to_party,
        "PayerParty": document.sold_to_party,
        "PurchaseOrderByCustomer": document.purchase_order_by_customer,
        "CompanyCode": "1710",
        "FiscalYear": "2026",
        "AccountingDocument": document.accounting_document,
        "AccountingTransferStatus": document.accounting_transfer_status,
        "AccountingPostingStatus": if document.accounting_transfer_status == "C" { "C" } else { "A" },
        "BillingDocumentIsCancelled": document.is_cancelled,
        "CancelledBillingDocument": "",
        "InvoiceClearingStatus": "A",
        "OverallBillingStatus": "C",
    })
}

fn billing_item_json(document: &super::BillingDocument) -> Value {
    let uri = format!(
        "{BILLING_SERVICE}/A_BillingDocumentItem(BillingDocument='{}',BillingDocumentItem='10')",
        document.billing_document
    );
    json!({
        "__metadata": {"id": uri, "uri": uri, "type": "API_BILLING_DOCUMENT_SRV.A_BillingDocumentItemType"},
        "BillingDocument": document.billing_document,
        "BillingDocumentItem": "10",
        "SalesDocument": document.credit_memo_request,
        "SalesDocumentItem": "10",
        "SalesSDDocumentCategory": "K",
        "ReferenceSDDocument": document.credit_memo_request,
        "ReferenceSDDocumentCategory": "K",
    })
}

/// `"to_Item": [...]` or `"to_Item": {"results": [...]}` (B.4: accept both).
fn navigation(value: &Value) -> Option<&Vec<Value>> {
    match value {
        Value::Array(items) => Some(items),
        Value::Object(wrapper) => wrapper.get("results").and_then(Value::as_array),
        _ => None,
    }
}

/// Checks one entity's properties against its writable fields; returns the
/// writable ones to keep.
fn check_fields(
    entity: &Map<String, Value>,
    type_name: &str,
    writable: &[(&str, usize)],
    read_only: &[&str],
    navigation: &[&str],
) -> Result<Map<String, Value>, Response<Body>> {
    let mut kept = Map::new();
    for (name, value) in entity {
        if read_only.contains(&name.as_str())
            || navigation.contains(&name.as_str())
            || name.starts_with("to_")
        {
            continue;
        }
        let Some((_, max)) = writable.iter().find(|(field, _)| field == name) else {
            return Err(bad_request(
                "/IWBEP/CM_MGW_RT/021",
                &format!("Property '{name}' is invalid"),
                &format!("{type_name}/{name}"),
            ));
        };
        let Some(text) = value.as_str() else {
            return Err(bad_request(
                "/IWBEP/CM_MGW_RT/021",
                &format!("Property '{name}' has an invalid value; a string is expected"),
                &format!("{type_name}/{name}"),
            ));
        };
        if *max == usize::MAX {
            if parse_decimal(text).is_none() {
                return Err(bad_request(
                    "/IWBEP/CM_MGW_RT/021",
                    &format!("Invalid decimal value '{text}' for property '{name}'"),
                    &format!("{type_name}/{name}"),
                ));
            }
        } else if *max == 0 {
            if !(text.starts_with("/Date(") && text.ends_with(")/")) {
                return Err(bad_request(
                    "/IWBEP/CM_MGW_RT/021",
                    &format!("Invalid date value '{text}' for property '{name}'"),
                    &format!("{type_name}/{name}"),
                ));
            }
        } else if text.chars().count() > *max {
            return Err(bad_request(
                "/IWBEP/CM_MGW_RT/021",
                &format!("Value of property '{name}' exceeds the maximum length {max}"),
                &format!("{type_name}/{name}"),
            ));
        }
        kept.insert(name.clone(), value.clone());
    }
    Ok(kept)
}

fn present(fields: &Map<String, Value>, name: &str) -> bool {
    fields
        .get(name)
        .and_then(Value::as_str)
        .is_some_and(|value| !value.is_empty())
}

/// A.5: deep insert of a header with its items and their pricing.
async fn create(state: &SapState, body: &[u8]) -> Response<Body> {
    let plan = state.create_plan();
    if let Some(status) = plan.fail_with {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return sap_error(
            status,
            "/IWFND/CM_BEC/026",
            "The system is temporarily unavailable; try again later",
            &[],
        );
    }
    let mut response = match validate_and_apply(state, body, plan.reject.as_ref()) {
        Ok(response) | Err(response) => response,
    };
    if !plan.late_reply.is_zero() {
        // Applied already: the caller that gives up meanwhile is in doubt.
        tokio::time::sleep(plan.late_reply).await;
    }
    if plan.drop_reply {
        response.extensions_mut().insert(DropReply);
    }
    response
}

fn validate_and_apply(
    state: &SapState,
    body: &[u8],
    reject: Option<&(String, String)>,
) -> Result<Response<Body>, Response<Body>> {
    let parsed: Value = serde_json::from_slice(body).map_err(|error| {
        bad_request(
            "/IWBEP/CM_MGW_RT/006",
            &format!("Malformed JSON in the request body: {error}"),
            "",
        )
    })?;
    let Some(entity) = parsed.as_object() else {
        return Err(bad_request(
            "/IWBEP/CM_MGW_RT/006",
            "The request body must be one entity object (no \"d\" wrapper)",
            "",
        ));
    };
    let header_type = "A_CreditMemoRequestType";
    let header = check_fields(
        entity,
        header_type,
        HEADER_FIELDS,
        HEADER_READ_ONLY,
        HEADER_NAVIGATION,
    )?;
    for (name, message, code) in [
        (
            "CreditMemoRequestType",
            "Enter a sales document type",
            "V1/004",
        ),
        (
            "SalesOrganization",
            "Enter the sales organization",
            "V1/005",
        ),
        (
            "DistributionChannel",
            "Enter the distribution channel",
            "V1/005",
        ),
        ("OrganizationDivision", "Enter the division", "V1/005"),
        ("SoldToParty", "Enter a sold-to party", "V1/310"),
        (
            "SDDocumentReason",
            // A.2, SAP's own field documentation.
            "If you are creating a credit or debit memo request, you must enter an order reason.",
            "V1/460",
        ),
        ("TransactionCurrency", "Enter a document currency", "V1/080"),
    ] {
        if !present(&header, name) {
            return Err(bad_request(code, message, &format!("{header_type}/{name}")));
        }
    }
    let Some(items) = entity.get("to_Item").and_then(navigation) else {
        // A.5: "You cannot create entities without including any related entities."
        return Err(bad_request(
            "/IWBEP/CM_MGW_RT/052",
            "Deep insert required: a credit memo request needs its items (to_Item)",
            "",
        ));
    };
    if items.is_empty() {
        return Err(bad_request(
            "V1/206",
            "No items were entered for the credit memo request",
            "",
        ));
    }
    let currency = header
        .get("TransactionCurrency")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let item_type = "A_CreditMemoRequestItemType";
    let mut kept_items = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Some(item) = item.as_object() else {
            return Err(bad_request(
                "/IWBEP/CM_MGW_RT/006",
                "to_Item holds an entry that is not an object",
                "",
            ));
        };
        let fields = check_fields(
            item,
            item_type,
            ITEM_FIELDS,
            ITEM_READ_ONLY,
            ITEM_NAVIGATION,
        )?;
        if !present(&fields, "Material") {
            return Err(bad_request(
                "V1/391",
                "Enter a material",
                &format!("{item_type}/Material"),
            ));
        }
        let quantity = fields
            .get("RequestedQuantity")
            .and_then(Value::as_str)
            .and_then(parse_decimal)
            .unwrap_or(1000);
        let mut pricing = Vec::new();
        let mut rate_milli: i128 = 0;
        for element in item
            .get("to_PricingElement")
            .and_then(navigation)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let Some(element) = element.as_object() else {
                continue;
            };
            let kept = check_fields(
                element,
                "A_CreditMemoReqItemPrcgElmntType",
                PRICING_FIELDS,
                &["__metadata"],
                &[],
            )?;
            rate_milli += kept
                .get("ConditionRateValue")
                .and_then(Value::as_str)
                .and_then(parse_decimal)
                .unwrap_or(0);
            pricing.push(kept);
        }
        let number = fields
            .get("CreditMemoRequestItem")
            .and_then(Value::as_str)
            .filter(|number| !number.is_empty())
            .map(|number| number.trim_start_matches('0').to_owned())
            .unwrap_or_else(|| ((index + 1) * 10).to_string());
        kept_items.push(Item {
            number,
            fields,
            pricing,
            net_milli: quantity * rate_milli / 1000,
        });
    }
    if let Some((code, message)) = reject {
        // A business check (the BAdIs of A.5) refusing the document.
        return Err(bad_request(
            code,
            message,
            &format!("{header_type}/SoldToParty"),
        ));
    }
    let total: i128 = kept_items.iter().map(|item| item.net_milli).sum();
    let mut documents = state.documents.lock();
    let number = state.next_request_number(&mut documents);
    let mut header = header;
    header.remove("CreditMemoRequest");
    let request = CreditMemoRequest {
        number: number.clone(),
        header,
        items: kept_items,
        total_net_milli: total,
        currency,
        created_unix_ms: crate::clock::unix_millis(),
        created: std::time::Instant::now(),
        billing_document: None,
    };
    let entity = request_json(&request, None, true);
    documents.requests.insert(number.clone(), request);
    let mut response = (StatusCode::CREATED, axum::Json(json!({ "d": entity }))).into_response();
    if let Ok(location) = HeaderValue::from_str(&request_uri(&number)) {
        response.headers_mut().insert("location", location);
    }
    Ok(response)
}
