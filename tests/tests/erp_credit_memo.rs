//! The ERP worker against the SAP S/4HANA emulator on loopback and a real
//! node: a case held by the ERP_VALIDATION gate gets exactly one credit
//! memo request, and its refund is released once SAP shows the credit
//! posted; a validation refusal is an ERP_REFUSED exception and is not
//! retried; a create whose reply is lost or late is found by its reference
//! instead of created twice; a posting later than the overdue timeout
//! raises the overdue exception and clears it; a node killed in the middle
//! still ends with one request and one release; a person's ConfirmErp
//! first stops the worker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skuld_emulators::sap::{CreateFaults, CreditMemoSummary, Posting, SapConfig};
use skuld_emulators::{Emulators, EmulatorsConfig};
use skuld_proto::v1 as pb;
use skuld_proto::v1::returns_service_client::ReturnsServiceClient;
use skuld_tests::metrics::Scrape;
use skuld_tests::returns::{rkey, Case};
use skuld_tests::{NodeOptions, TestDir, TestNode};
use tonic::transport::Channel;

type Returns = ReturnsServiceClient<Channel>;

const TENANT: &str = "acme";
/// 3 of 4 shirts at 120.00 for 4, less a 10% restocking fee: 81.00.
const REFUND: &str = "81.00";

/// Emulated SAP with the given posting window.
async fn sap(posting: Posting) -> Emulators {
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

/// The node's config: tenant `acme` refunds through the ERP gate, and the
/// `[erp]` section points at the emulator with short intervals (the
/// settle time no shorter than the request timeout, as the config
/// requires; the late replies below come well after that timeout).
fn config(dir: &TestDir, emulators: &Emulators, overdue_timeout_ms: u64) -> PathBuf {
    let password = dir.path().join("sap-password");
    std::fs::write(
        &password,
        format!("{}\n", emulators.sap().config().password),
    )
    .unwrap();
    let toml = format!(
        "[runtime]\ntimer_scan_interval_ms = 100\n\
         [returns.policies.{TENANT}]\nrefund_gate = \"ERP_VALIDATION\"\nrestocking_fee_bps = 1000\n\
         [erp]\nkind = \"sap\"\nbase_url = \"{base}\"\nusername = \"{user}\"\n\
         password_ref = \"file:{password}\"\nsales_organization = \"1710\"\n\
         distribution_channel = \"10\"\ndivision = \"00\"\nsold_to_party = \"17100001\"\n\
         order_reason = \"102\"\ncurrency = \"USD\"\ncondition_type = \"PMP0\"\n\
         poll_interval_ms = 100\nrequest_timeout_ms = 500\nsettle_ms = 500\n\
         retry_base_ms = 50\nretry_cap_ms = 400\noverdue_timeout_ms = {overdue_timeout_ms}\n\
         [erp.materials]\nSHIRT = \"TG11\"\n",
        base = emulators.sap().base_url(),
        user = emulators.sap().config().username,
        password = password.display(),
    );
    let path = dir.path().join("skuld.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

async fn node(dir: &TestDir, config: &Path) -> TestNode {
    TestNode::start(
        &dir.node_dir("n1"),
        NodeOptions::default().arg("--config", config.display()),
    )
    .await
    .unwrap()
}

/// Opens `return_id` pre-approved and processes it: its refund waits for
/// the ERP gate.
async fn processed(returns: &mut Returns, return_id: &str) -> Case {
    let mut case = Case::new(TENANT, return_id);
    returns.create_return(case.open(false)).await.unwrap();
    let reply = returns.process_return(case.process()).await.unwrap();
    let refund = &reply.into_inner().r#case.unwrap().refunds[0];
    assert_eq!(refund.state, "PENDING_GATE");
    case
}

async fn get(returns: &mut Returns, return_id: &str) -> pb::ReturnCase {
    returns
        .get_return(pb::GetReturnRequest {
            key: rkey(TENANT, return_id),
            include_history: true,
        })
        .await
        .unwrap()
        .into_inner()
        .r#case
        .unwrap()
}

/// Reads the case until `ready` holds, or fails with the last read.
async fn until(
    returns: &mut Returns,
    return_id: &str,
    what: &str,
    ready: impl Fn(&pb::ReturnCase) -> bool,
) -> pb::ReturnCase {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let case = get(returns, return_id).await;
        if ready(&case) {
            return case;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never happened: {case:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn released(case: &pb::ReturnCase) -> bool {
    !case.refunds.is_empty() && case.refunds.iter().all(|r| r.state == "RELEASED")
}

fn open_exception(case: &pb::ReturnCase, kind: pb::ExceptionKind) -> Option<&pb::CaseException> {
    case.exceptions
        .iter()
        .find(|e| e.kind == kind as i32 && e.resolved_at_unix_ms == 0)
}

/// The history entries that confirmed the ERP gate.
fn confirmations(case: &pb::ReturnCase) -> usize {
    case.history
        .iter()
        .filter(|entry| entry.events.iter().any(|e| e == "return.erp.confirmed"))
        .count()
}

/// The credit memo requests SAP holds for a case (the reference is the
/// node's, the same for every attempt of the case).
fn requests_of(emulators: &Emulators, case: &pb::ReturnCase) -> Vec<CreditMemoSummary> {
    let key = case.key.clone().unwrap();
    let reference = skuld_node::erp::reference(&skuld_actors::ReturnKey {
        tenant: key.tenant,
        return_id: key.return_id,
    });
    emulators.sap().requests_with_reference(&reference)
}

/// Creates the emulator answered (every POST of a credit memo request
/// whose answer was sent, refusals and injected failures included; a reply
/// still pending when the client went away is not recorded).
fn creates(emulators: &Emulators) -> usize {
    emulators
        .sap()
        .recorder()
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/A_CreditMemoRequest"))
        .count()
}

async fn scrape(node: &TestNode) -> Scrape {
    let (status, text) = node.http_get("/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    Scrape(text)
}

/// The billing document the emulator posted for a request.
fn billing_document(emulators: &Emulators, request: &str) -> String {
    emulators
        .sap()
        .credit_memo_requests()
        .into_iter()
        .find(|r| r.credit_memo_request == request)
        .and_then(|r| r.billing_document)
        .unwrap()
}

#[tokio::test]
async fn a_posted_credit_memo_releases_the_refund_once() {
    let dir = TestDir::new().unwrap();
    let emulators = sap(Posting::After { delay_ms: 300 }).await;
    let node = node(&dir, &config(&dir, &emulators, 60_000)).await;
    let mut returns = node.returns().await.unwrap();
    processed(&mut returns, "R-HAPPY").await;

    let case = until(&mut returns, "R-HAPPY", "release", released).await;
    let requests = requests_of(&emulators, &case);
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(creates(&emulators), 1);
    let request = &requests[0];
    assert_eq!(request.total_net_amount, REFUND);
    assert_eq!(request.sold_to_party, "17100001");
    assert_eq!(request.accounting_transfer_status.as_deref(), Some("C"));
    assert_eq!(
        case.erp_credit_memo,
        billing_document(&emulators, &request.credit_memo_request)
    );
    assert_eq!(confirmations(&case), 1);
    assert!(case
        .history
        .iter()
        .any(|entry| entry.correlation_id == "erp:R-HAPPY"));

    // Nothing more happens: no second create, no second confirmation.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let case = get(&mut returns, "R-HAPPY").await;
    assert_eq!(confirmations(&case), 1);
    assert_eq!(creates(&emulators), 1);
    let metrics = scrape(&node).await;
    assert_eq!(
        metrics.value("skuld_erp_posted_total", &[]),
        Some(1.0),
        "{}",
        metrics.0
    );
}

#[tokio::test]
async fn a_validation_refusal_is_an_exception_and_not_retried() {
    let dir = TestDir::new().unwrap();
    let emulators = sap(Posting::After { delay_ms: 0 }).await;
    emulators.sap().set_create_faults(&CreateFaults {
        reject_next: Some(1),
        reject_code: Some("V1/310".into()),
        reject_message: Some("Sold-to party 17100001 is blocked for sales".into()),
        ..CreateFaults::default()
    });
    let node = node(&dir, &config(&dir, &emulators, 60_000)).await;
    let mut returns = node.returns().await.unwrap();
    processed(&mut returns, "R-REFUSED").await;

    let case = until(&mut returns, "R-REFUSED", "the refusal exception", |case| {
        open_exception(case, pb::ExceptionKind::ErpRefused).is_some()
    })
    .await;
    let exception = open_exception(&case, pb::ExceptionKind::ErpRefused).unwrap();
    assert!(exception.note.contains("V1/310"), "{}", exception.note);
    assert!(exception.note.contains("blocked"), "{}", exception.note);
    assert_eq!(exception.owner, "FINANCE");

    // Many poll intervals later: the refusal was not retried (the emulator
    // would accept a second create now), nothing posted, nothing released.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let case = get(&mut returns, "R-REFUSED").await;
    assert_eq!(creates(&emulators), 1);
    assert!(requests_of(&emulators, &case).is_empty());
    assert!(!released(&case));
    assert!(case.erp_credit_memo.is_empty());
    let metrics = scrape(&node).await;
    assert_eq!(
        metrics.value("skuld_erp_refusals_total", &[]),
        Some(1.0),
        "{}",
        metrics.0
    );
}

#[tokio::test]
async fn a_lost_or_late_create_reply_is_found_by_its_reference() {
    let dir = TestDir::new().unwrap();
    let emulators = sap(Posting::After { delay_ms: 0 }).await;
    let node = node(&dir, &config(&dir, &emulators, 60_000)).await;
    let mut returns = node.returns().await.unwrap();

    // The create is applied and its connection closed without a reply.
    emulators.sap().set_create_faults(&CreateFaults {
        drop_reply_next: Some(1),
        ..CreateFaults::default()
    });
    processed(&mut returns, "R-LOST").await;
    let case = until(
        &mut returns,
        "R-LOST",
        "release after a lost reply",
        released,
    )
    .await;
    assert_eq!(requests_of(&emulators, &case).len(), 1);
    assert_eq!(
        creates(&emulators),
        1,
        "the doubt was settled by a look-up, not a create"
    );
    assert_eq!(confirmations(&case), 1);

    // The create is applied and answered after the node's 500 ms timeout.
    emulators.sap().clear_create_faults();
    emulators.sap().set_create_faults(&CreateFaults {
        late_reply_ms: Some(1_500),
        ..CreateFaults::default()
    });
    processed(&mut returns, "R-LATE").await;
    let case = until(
        &mut returns,
        "R-LATE",
        "release after a late reply",
        released,
    )
    .await;
    assert_eq!(requests_of(&emulators, &case).len(), 1);
    assert_eq!(emulators.sap().credit_memo_requests().len(), 2);
    assert_eq!(confirmations(&case), 1);
}

#[tokio::test]
async fn a_late_posting_raises_the_overdue_exception_and_clears_it() {
    let dir = TestDir::new().unwrap();
    let emulators = sap(Posting::Manual).await;
    let node = node(&dir, &config(&dir, &emulators, 800)).await;
    let mut returns = node.returns().await.unwrap();
    processed(&mut returns, "R-SLOW").await;

    let case = until(&mut returns, "R-SLOW", "the overdue exception", |case| {
        open_exception(case, pb::ExceptionKind::ErpConfirmationOverdue).is_some()
    })
    .await;
    assert!(!released(&case));
    let requests = requests_of(&emulators, &case);
    assert_eq!(requests.len(), 1, "{requests:?}");

    // Finance posts it at last.
    emulators
        .sap()
        .post(&requests[0].credit_memo_request)
        .unwrap();
    let case = until(&mut returns, "R-SLOW", "release after posting", released).await;
    assert!(open_exception(&case, pb::ExceptionKind::ErpConfirmationOverdue).is_none());
    let overdue = case
        .exceptions
        .iter()
        .find(|e| e.kind == pb::ExceptionKind::ErpConfirmationOverdue as i32)
        .unwrap();
    assert_eq!(overdue.resolved_by, "erp");
    assert_eq!(creates(&emulators), 1);
    assert_eq!(confirmations(&case), 1);
}

#[tokio::test]
async fn a_node_killed_in_the_middle_still_posts_and_releases_once() {
    let dir = TestDir::new().unwrap();
    let emulators = sap(Posting::Manual).await;
    // The create is applied at once and answered only after 3 s: the node
    // is killed while it waits, so it never learns the number.
    emulators.sap().set_create_faults(&CreateFaults {
        late_reply_ms: Some(3_000),
        ..CreateFaults::default()
    });
    let config = config(&dir, &emulators, 60_000);
    let mut node = node(&dir, &config).await;
    let mut returns = node.returns().await.unwrap();
    let case = processed(&mut returns, "R-CRASH").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while emulators.sap().credit_memo_requests().is_empty() {
        assert!(Instant::now() < deadline, "no create arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.kill9().unwrap();
    emulators.sap().clear_create_faults();

    node.restart().await.unwrap();
    let mut returns = node.returns().await.unwrap();
    // The restarted node finds the request by its reference and polls it.
    let request = emulators.sap().credit_memo_requests()[0]
        .credit_memo_request
        .clone();
    tokio::time::sleep(Duration::from_millis(800)).await;
    emulators.sap().post(&request).unwrap();
    let after = until(
        &mut returns,
        &case.return_id,
        "release after restart",
        released,
    )
    .await;
    assert_eq!(requests_of(&emulators, &after).len(), 1);
    assert_eq!(
        emulators.sap().credit_memo_requests().len(),
        1,
        "no second credit memo request after the restart"
    );
    assert_eq!(confirmations(&after), 1);
    assert_eq!(
        after.erp_credit_memo,
        billing_document(&emulators, &request)
    );

    // And a second restart after the release changes nothing.
    node.restart().await.unwrap();
    let mut returns = node.returns().await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = get(&mut returns, &case.return_id).await;
    assert_eq!(confirmations(&again), 1);
    assert_eq!(emulators.sap().credit_memo_requests().len(), 1);
}

#[tokio::test]
async fn a_person_confirming_first_stops_the_worker() {
    let dir = TestDir::new().unwrap();
    let emulators = sap(Posting::After { delay_ms: 0 }).await;
    // SAP is down: every create fails with 503, unapplied.
    emulators.sap().set_create_faults(&CreateFaults {
        fail_next: Some(1_000),
        fail_status: Some(503),
        ..CreateFaults::default()
    });
    let node = node(&dir, &config(&dir, &emulators, 60_000)).await;
    let mut returns = node.returns().await.unwrap();
    let mut case = processed(&mut returns, "R-MANUAL").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while creates(&emulators) < 2 {
        assert!(Instant::now() < deadline, "the worker did not retry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Finance confirms by hand (the override); once a step in flight has
    // failed too, SAP comes back.
    returns
        .confirm_erp(pb::ConfirmErpRequest {
            header: case.header(),
            credit_memo: "CM-BY-HAND".into(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    emulators.sap().clear_create_faults();
    let tried = creates(&emulators);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let after = get(&mut returns, "R-MANUAL").await;
    assert!(released(&after));
    assert_eq!(after.erp_credit_memo, "CM-BY-HAND");
    assert_eq!(confirmations(&after), 1);
    assert!(requests_of(&emulators, &after).is_empty());
    assert_eq!(
        creates(&emulators),
        tried,
        "the worker kept creating after the override"
    );
    let metrics = scrape(&node).await;
    assert!(
        metrics
            .value("skuld_erp_retries_total", &[("stage", "create")])
            .unwrap_or(0.0)
            >= 2.0
    );
}
