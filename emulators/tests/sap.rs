#![allow(clippy::unwrap_used)]
//! The SAP S/4HANA emulator over real loopback HTTP (ERP.md A-C).

use std::time::Duration;

use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use skuld_emulators::sap::{CreateFaults, Posting, SapConfig, BILLING_SERVICE, CMR_SERVICE};
use skuld_emulators::{Emulators, EmulatorsConfig};

async fn start(posting: Posting) -> Emulators {
    Emulators::start(EmulatorsConfig {
        sap: SapConfig {
            posting,
            ..SapConfig::default()
        },
        ..EmulatorsConfig::default()
    })
    .await
    .unwrap()
}

fn authed(emulators: &Emulators, builder: RequestBuilder) -> RequestBuilder {
    let config = emulators.sap().config();
    builder
        .basic_auth(&config.username, Some(&config.password))
        .header("Accept", "application/json")
}

fn url(emulators: &Emulators, path: &str) -> String {
    format!("{}{path}", emulators.sap().base_url())
}

/// B.3 step 1: the token and the cookies it is bound to.
async fn fetch_token(emulators: &Emulators, client: &Client) -> (String, String) {
    let response = authed(
        emulators,
        client
            .head(url(emulators, &format!("{CMR_SERVICE}/")))
            .header("x-csrf-token", "Fetch"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let token = response.headers()["x-csrf-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| {
            value
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    (token, cookies.join("; "))
}

fn memo(reference: &str) -> Value {
    json!({
        "CreditMemoRequestType": "CR",
        "SalesOrganization": "1710",
        "DistributionChannel": "10",
        "OrganizationDivision": "00",
        "SoldToParty": "17100001",
        "PurchaseOrderByCustomer": reference,
        "CustomerPurchaseOrderDate": "/Date(1773446400000)/",
        "SDDocumentReason": "102",
        "TransactionCurrency": "USD",
        "to_Item": [{
            "Material": "TG11",
            "RequestedQuantity": "2",
            "RequestedQuantityUnit": "PC",
            "PurchaseOrderByCustomer": reference,
            "to_PricingElement": [{"ConditionType": "ZMAN", "ConditionRateValue": "17.55", "ConditionCurrency": "USD"}]
        }]
    })
}

async fn post_memo(
    emulators: &Emulators,
    client: &Client,
    csrf: &(String, String),
    body: &Value,
) -> reqwest::Response {
    authed(
        emulators,
        client
            .post(url(
                emulators,
                &format!("{CMR_SERVICE}/A_CreditMemoRequest"),
            ))
            .header("x-csrf-token", &csrf.0)
            .header("cookie", &csrf.1)
            .json(body),
    )
    .send()
    .await
    .unwrap()
}

async fn get_json(emulators: &Emulators, client: &Client, path_and_query: &str) -> Value {
    let response = authed(emulators, client.get(url(emulators, path_and_query)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path_and_query}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_deep_insert_needs_a_csrf_token_and_is_priced_from_its_items() {
    let emulators = start(Posting::Manual).await;
    let client = Client::new();

    // No credentials: 401. Credentials but no token: 403 Required.
    let anonymous = client
        .get(url(
            &emulators,
            &format!("{CMR_SERVICE}/A_CreditMemoRequest"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let no_token = authed(
        &emulators,
        client
            .post(url(
                &emulators,
                &format!("{CMR_SERVICE}/A_CreditMemoRequest"),
            ))
            .json(&memo("SKULD-R1-1")),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    assert_eq!(no_token.headers()["x-csrf-token"], "Required");
    assert_eq!(
        no_token.text().await.unwrap(),
        "CSRF token validation failed"
    );
    // A token without its session cookie is no good either.
    let csrf = fetch_token(&emulators, &client).await;
    let no_cookie = authed(
        &emulators,
        client
            .post(url(
                &emulators,
                &format!("{CMR_SERVICE}/A_CreditMemoRequest"),
            ))
            .header("x-csrf-token", &csrf.0)
            .json(&memo("SKULD-R1-1")),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(no_cookie.status(), StatusCode::FORBIDDEN);
    assert!(emulators.sap().credit_memo_requests().is_empty());

    let created = post_memo(&emulators, &client, &csrf, &memo("SKULD-R1-1")).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(created.headers()["location"]
        .to_str()
        .unwrap()
        .ends_with("A_CreditMemoRequest('60000000')"));
    let body: Value = created.json().await.unwrap();
    let d = &body["d"];
    assert_eq!(d["CreditMemoRequest"], "60000000");
    assert_eq!(d["TotalNetAmount"], "35.10");
    assert_eq!(
        d["__metadata"]["type"],
        "API_CREDIT_MEMO_REQUEST_SRV.A_CreditMemoRequestType"
    );
    assert_eq!(d["to_Item"]["results"][0]["CreditMemoRequestItem"], "10");
    assert_eq!(d["to_Item"]["results"][0]["NetAmount"], "35.10");

    // The {"results": [...]} spelling of a navigation works too, and SAP has
    // no idempotency: the same payload again is a second document.
    let mut wrapped = memo("SKULD-R1-1");
    wrapped["to_Item"] = json!({"results": wrapped["to_Item"].clone()});
    let again = post_memo(&emulators, &client, &csrf, &wrapped).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(
        emulators.sap().requests_with_reference("SKULD-R1-1").len(),
        2
    );

    // Look-up by the external reference (B.4), by key, with $select.
    let found = get_json(
        &emulators,
        &client,
        &format!(
            "{CMR_SERVICE}/A_CreditMemoRequest?$filter=PurchaseOrderByCustomer%20eq%20'SKULD-R1-1'%20and%20SoldToParty%20eq%20'17100001'&$select=CreditMemoRequest,TotalNetAmount&$inlinecount=allpages"
        ),
    )
    .await;
    assert_eq!(found["d"]["__count"], "2");
    assert_eq!(found["d"]["results"][1]["CreditMemoRequest"], "60000001");
    assert!(found["d"]["results"][0].get("SoldToParty").is_none());
    let none = get_json(
        &emulators,
        &client,
        &format!(
            "{CMR_SERVICE}/A_CreditMemoRequest?$filter=PurchaseOrderByCustomer%20eq%20'OTHER'"
        ),
    )
    .await;
    assert_eq!(none["d"]["results"], json!([]));
    let by_key = get_json(
        &emulators,
        &client,
        &format!("{CMR_SERVICE}/A_CreditMemoRequest('60000000')"),
    )
    .await;
    assert!(by_key["d"]["to_Item"]["__deferred"]["uri"].is_string());
    let missing = authed(
        &emulators,
        client.get(url(
            &emulators,
            &format!("{CMR_SERVICE}/A_CreditMemoRequest('1')"),
        )),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["code"], "/IWBEP/CM_MGW_RT/020");
    emulators.shutdown().await;
}

#[tokio::test]
async fn validation_and_business_errors_use_the_gateway_error_body() {
    let emulators = start(Posting::Manual).await;
    let client = Client::new();
    let csrf = fetch_token(&emulators, &client).await;

    let mut no_reason = memo("SKULD-R2-1");
    no_reason
        .as_object_mut()
        .unwrap()
        .remove("SDDocumentReason");
    let refused = post_memo(&emulators, &client, &csrf, &no_reason).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["message"]["lang"], "en");
    assert!(body["error"]["message"]["value"]
        .as_str()
        .unwrap()
        .contains("order reason"));
    assert_eq!(
        body["error"]["innererror"]["errordetails"][0]["propertyref"],
        "A_CreditMemoRequestType/SDDocumentReason"
    );
    assert!(body["error"]["innererror"]["transactionid"].is_string());

    let mut unknown = memo("SKULD-R2-1");
    unknown["NotAField"] = json!("x");
    assert_eq!(
        post_memo(&emulators, &client, &csrf, &unknown)
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    let mut too_long = memo("SKULD-R2-1");
    too_long["SoldToParty"] = json!("12345678901");
    assert_eq!(
        post_memo(&emulators, &client, &csrf, &too_long)
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );

    emulators.sap().set_create_faults(&CreateFaults {
        reject_next: Some(1),
        ..CreateFaults::default()
    });
    let rejected = post_memo(&emulators, &client, &csrf, &memo("SKULD-R2-1")).await;
    assert_eq!(rejected.status(), StatusCode::BAD_REQUEST);
    let body: Value = rejected.json().await.unwrap();
    assert_eq!(body["error"]["code"], "V1/313");
    assert!(emulators.sap().credit_memo_requests().is_empty());
    assert_eq!(
        post_memo(&emulators, &client, &csrf, &memo("SKULD-R2-1"))
            .await
            .status(),
        StatusCode::CREATED
    );

    // Expired tokens: 403 Required until a new fetch.
    emulators.sap().expire_tokens();
    assert_eq!(
        post_memo(&emulators, &client, &csrf, &memo("SKULD-R2-2"))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let fresh = fetch_token(&emulators, &client).await;
    assert_eq!(
        post_memo(&emulators, &client, &fresh, &memo("SKULD-R2-2"))
            .await
            .status(),
        StatusCode::CREATED
    );
    // JSON only: no Accept and no $format is 406.
    let config = emulators.sap().config();
    let atom = client
        .get(url(
            &emulators,
            &format!("{CMR_SERVICE}/A_CreditMemoRequest"),
        ))
        .basic_auth(&config.username, Some(&config.password))
        .send()
        .await
        .unwrap();
    assert_eq!(atom.status(), StatusCode::NOT_ACCEPTABLE);
    emulators.shutdown().await;
}

#[tokio::test]
async fn posting_shows_in_the_billing_documents_accounting_status() {
    let emulators = start(Posting::Manual).await;
    let client = Client::new();
    let csrf = fetch_token(&emulators, &client).await;
    assert_eq!(
        post_memo(&emulators, &client, &csrf, &memo("SKULD-R3-1"))
            .await
            .status(),
        StatusCode::CREATED
    );
    let items_path = format!(
        "{BILLING_SERVICE}/A_BillingDocumentItem?$filter=SalesDocument%20eq%20'60000000'&$select=BillingDocument"
    );
    let none = get_json(&emulators, &client, &items_path).await;
    assert_eq!(none["d"]["results"], json!([]));

    let billing = emulators.sap().bill("60000000").unwrap();
    let items = get_json(&emulators, &client, &items_path).await;
    assert_eq!(
        items["d"]["results"][0]["BillingDocument"],
        billing.as_str()
    );
    let document_path = format!("{BILLING_SERVICE}/A_BillingDocument('{billing}')");
    let held = get_json(&emulators, &client, &document_path).await;
    assert_eq!(held["d"]["AccountingTransferStatus"], "A");
    assert_eq!(held["d"]["BillingDocumentType"], "G2");
    assert_eq!(held["d"]["AccountingDocument"], "");

    emulators.sap().post("60000000");
    let posted = get_json(&emulators, &client, &document_path).await;
    assert_eq!(posted["d"]["AccountingTransferStatus"], "C");
    assert_eq!(posted["d"]["TotalNetAmount"], "35.10");
    assert_eq!(posted["d"]["BillingDocumentIsCancelled"], false);
    assert!(!posted["d"]["AccountingDocument"]
        .as_str()
        .unwrap()
        .is_empty());

    // A posting window: billed and posted by itself after the delay.
    emulators
        .sap()
        .set_posting(Posting::After { delay_ms: 150 });
    assert_eq!(
        post_memo(&emulators, &client, &csrf, &memo("SKULD-R3-2"))
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        emulators.sap().requests_with_reference("SKULD-R3-2")[0].billing_document,
        None
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = &emulators.sap().requests_with_reference("SKULD-R3-2")[0];
    assert_eq!(later.accounting_transfer_status.as_deref(), Some("C"));
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_lost_or_late_reply_still_creates_the_document() {
    let emulators = start(Posting::Manual).await;
    let client = Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let csrf = fetch_token(&emulators, &client).await;

    emulators.sap().set_create_faults(&CreateFaults {
        drop_reply_next: Some(1),
        ..CreateFaults::default()
    });
    let lost = authed(
        &emulators,
        client
            .post(url(
                &emulators,
                &format!("{CMR_SERVICE}/A_CreditMemoRequest"),
            ))
            .header("x-csrf-token", &csrf.0)
            .header("cookie", &csrf.1)
            .json(&memo("SKULD-R4-1")),
    )
    .send()
    .await;
    assert!(lost.is_err(), "the reply was to be lost");
    assert_eq!(
        emulators.sap().requests_with_reference("SKULD-R4-1").len(),
        1
    );
    assert_eq!(emulators.sap().recorder().counters().replies_dropped, 1);

    emulators.sap().set_create_faults(&CreateFaults {
        late_reply_ms: Some(600),
        ..CreateFaults::default()
    });
    let late = authed(
        &emulators,
        client
            .post(url(
                &emulators,
                &format!("{CMR_SERVICE}/A_CreditMemoRequest"),
            ))
            .header("x-csrf-token", &csrf.0)
            .header("cookie", &csrf.1)
            .json(&memo("SKULD-R4-2")),
    )
    .send()
    .await;
    assert!(late.is_err(), "the client was to time out");
    assert_eq!(
        emulators.sap().requests_with_reference("SKULD-R4-2").len(),
        1
    );

    emulators.sap().clear_create_faults();
    emulators.sap().set_create_faults(&CreateFaults {
        fail_next: Some(1),
        fail_status: Some(503),
        ..CreateFaults::default()
    });
    let failed = post_memo(&emulators, &client, &csrf, &memo("SKULD-R4-3")).await;
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(emulators
        .sap()
        .requests_with_reference("SKULD-R4-3")
        .is_empty());

    // The same switches through the control API.
    let control = Client::new();
    let set = control
        .post(url(&emulators, "/_control/sap/faults"))
        .json(&json!({"reject_next": 1, "reject_code": "V1/999", "reject_message": "no"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::NO_CONTENT);
    let rejected = post_memo(&emulators, &client, &csrf, &memo("SKULD-R4-4")).await;
    let body: Value = rejected.json().await.unwrap();
    assert_eq!(body["error"]["code"], "V1/999");
    let listed: Value = control
        .get(url(&emulators, "/_control/sap/credit_memo_requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let posted = control
        .post(url(&emulators, "/_control/sap/post"))
        .json(&json!({"credit_memo_request": "60000000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    emulators.shutdown().await;
}
