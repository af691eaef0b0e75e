#![allow(clippy::unwrap_used)]
//! The SAP credit memo connector against the SAP emulator on loopback
//! (ERP.md C.2, C.3, items 10-12).

use std::time::Duration;

use skuld_connectors::sap::{CreditMemo, CreditMemoLine, Ensured, Posting, Sap, SapSettings};
use skuld_connectors::{ConnectorError, Secret};
use skuld_emulators::sap::{CreateFaults, Posting as EmulatedPosting, SapConfig};
use skuld_emulators::{Emulators, EmulatorsConfig};

async fn start() -> Emulators {
    Emulators::start(EmulatorsConfig {
        sap: SapConfig {
            posting: EmulatedPosting::Manual,
            ..SapConfig::default()
        },
        ..EmulatorsConfig::default()
    })
    .await
    .unwrap()
}

fn connector(emulators: &Emulators, timeout: Duration, settle: Duration) -> Sap {
    let config = emulators.sap().config();
    Sap::new(SapSettings {
        base_url: emulators.sap().base_url().to_owned(),
        username: config.username.clone(),
        password: Secret::new(config.password.clone()),
        timeout,
        settle,
    })
    .unwrap()
}

fn memo(reference: &str) -> CreditMemo {
    CreditMemo {
        reference: reference.to_owned(),
        document_type: "CR".to_owned(),
        sales_organization: "1710".to_owned(),
        distribution_channel: "10".to_owned(),
        division: "00".to_owned(),
        sold_to_party: "17100001".to_owned(),
        order_reason: "102".to_owned(),
        currency: "USD".to_owned(),
        condition_type: "ZMAN".to_owned(),
        lines: vec![CreditMemoLine {
            material: "TG11".to_owned(),
            quantity: 2,
            unit: "PC".to_owned(),
            unit_amount: "17.55".to_owned(),
        }],
    }
}

fn posts(emulators: &Emulators) -> usize {
    emulators
        .sap()
        .recorder()
        .requests()
        .iter()
        .filter(|request| request.method == "POST")
        .count()
}

#[tokio::test]
async fn create_then_adopt_then_learn_it_was_posted() {
    let emulators = start().await;
    let sap = connector(&emulators, Duration::from_secs(5), Duration::ZERO);
    let created = sap.ensure(&memo("SKULD-RC-1-1"), None).await.unwrap();
    let Ensured::Created(document) = created else {
        panic!("{created:?}")
    };
    assert_eq!(document.total_net_amount, "35.10");
    // A second ensure (a restart, another owner) adopts it.
    assert_eq!(
        sap.ensure(&memo("SKULD-RC-1-1"), None).await.unwrap(),
        Ensured::Found(document.clone())
    );
    assert_eq!(
        emulators
            .sap()
            .requests_with_reference("SKULD-RC-1-1")
            .len(),
        1
    );

    let number = &document.credit_memo_request;
    assert_eq!(sap.posting(number).await.unwrap(), Posting::NotBilled);
    emulators.sap().bill(number).unwrap();
    assert!(matches!(
        sap.posting(number).await.unwrap(),
        Posting::Held { status, .. } if status == "A"
    ));
    emulators.sap().post(number).unwrap();
    let posted = sap.posting(number).await.unwrap();
    let Posting::Posted {
        accounting_document,
        amount,
        currency,
        ..
    } = posted
    else {
        panic!("{posted:?}")
    };
    assert!(!accounting_document.is_empty());
    assert_eq!((amount.as_str(), currency.as_str()), ("35.10", "USD"));
    emulators.sap().cancel(number);
    assert!(matches!(
        sap.posting(number).await.unwrap(),
        Posting::Cancelled { .. }
    ));
    emulators.shutdown().await;
}

/// The dedup guarantee: a create whose reply was lost is found by its
/// reference, not created a second time.
#[tokio::test]
async fn a_lost_reply_is_reconciled_by_reference_not_posted_twice() {
    let emulators = start().await;
    let sap = connector(&emulators, Duration::from_secs(2), Duration::ZERO);
    emulators.sap().set_create_faults(&CreateFaults {
        drop_reply_next: Some(1),
        ..CreateFaults::default()
    });
    let first = sap.ensure(&memo("SKULD-RC-2-1"), None).await.unwrap();
    assert!(matches!(first, Ensured::InDoubt { .. }), "{first:?}");
    // Even with the settle time passed, the look-up comes first.
    let second = sap
        .ensure(&memo("SKULD-RC-2-1"), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(matches!(second, Ensured::Found(_)), "{second:?}");
    assert_eq!(
        emulators
            .sap()
            .requests_with_reference("SKULD-RC-2-1")
            .len(),
        1
    );
    assert_eq!(posts(&emulators), 1);
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_late_reply_is_in_doubt_and_found_afterwards() {
    let emulators = start().await;
    let sap = connector(&emulators, Duration::from_millis(300), Duration::ZERO);
    emulators.sap().set_create_faults(&CreateFaults {
        late_reply_ms: Some(900),
        ..CreateFaults::default()
    });
    let first = sap.ensure(&memo("SKULD-RC-3-1"), None).await.unwrap();
    assert!(matches!(first, Ensured::InDoubt { .. }), "{first:?}");
    emulators.sap().clear_create_faults();
    let second = sap
        .ensure(&memo("SKULD-RC-3-1"), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(matches!(second, Ensured::Found(_)), "{second:?}");
    assert_eq!(
        emulators
            .sap()
            .requests_with_reference("SKULD-RC-3-1")
            .len(),
        1
    );
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_5xx_waits_out_the_settle_time_before_posting_again() {
    let emulators = start().await;
    let sap = connector(&emulators, Duration::from_secs(2), Duration::from_secs(30));
    emulators.sap().set_create_faults(&CreateFaults {
        fail_next: Some(1),
        fail_status: Some(503),
        ..CreateFaults::default()
    });
    let first = sap.ensure(&memo("SKULD-RC-4-1"), None).await.unwrap();
    assert!(matches!(first, Ensured::InDoubt { .. }), "{first:?}");
    assert_eq!(
        sap.ensure(&memo("SKULD-RC-4-1"), Some(Duration::from_secs(1)))
            .await
            .unwrap(),
        Ensured::Settling
    );
    assert_eq!(posts(&emulators), 1);
    let third = sap
        .ensure(&memo("SKULD-RC-4-1"), Some(Duration::from_secs(31)))
        .await
        .unwrap();
    assert!(matches!(third, Ensured::Created(_)), "{third:?}");
    assert_eq!(
        emulators
            .sap()
            .requests_with_reference("SKULD-RC-4-1")
            .len(),
        1
    );
    emulators.shutdown().await;
}

#[tokio::test]
async fn rejections_credentials_and_expired_tokens() {
    let emulators = start().await;
    let sap = connector(&emulators, Duration::from_secs(2), Duration::ZERO);
    emulators.sap().set_create_faults(&CreateFaults {
        reject_next: Some(1),
        ..CreateFaults::default()
    });
    let refused = sap.ensure(&memo("SKULD-RC-5-1"), None).await.unwrap_err();
    assert!(
        matches!(&refused, ConnectorError::Invalid { code, .. } if code == "V1/313"),
        "{refused:?}"
    );
    assert!(emulators
        .sap()
        .requests_with_reference("SKULD-RC-5-1")
        .is_empty());

    // An expired token: 403 Required, one refetch, one more POST.
    assert!(matches!(
        sap.ensure(&memo("SKULD-RC-5-2"), None).await.unwrap(),
        Ensured::Created(_)
    ));
    emulators.sap().expire_tokens();
    assert!(matches!(
        sap.ensure(&memo("SKULD-RC-5-3"), None).await.unwrap(),
        Ensured::Created(_)
    ));

    let mut too_long = memo("SKULD-RC-5-4");
    too_long.order_reason = "TOOLONG".to_owned();
    assert!(matches!(
        sap.ensure(&too_long, None).await,
        Err(ConnectorError::Invalid { .. })
    ));

    let config = emulators.sap().config();
    let wrong = Sap::new(SapSettings {
        base_url: emulators.sap().base_url().to_owned(),
        username: config.username.clone(),
        password: Secret::new("wrong"),
        timeout: Duration::from_secs(2),
        settle: Duration::ZERO,
    })
    .unwrap();
    assert!(matches!(
        wrong.ensure(&memo("SKULD-RC-5-5"), None).await,
        Err(ConnectorError::Config(_))
    ));
    emulators.shutdown().await;
}

/// The look-up is by reference alone: once the `[erp] customers` mapping
/// sends the case to another sold-to party, the request created for the
/// old one is still found, and the mismatch is a refusal for finance, not
/// a second credit memo.
#[tokio::test]
async fn a_changed_sold_to_party_is_refused_not_created_again() {
    let emulators = start().await;
    let sap = connector(&emulators, Duration::from_secs(2), Duration::ZERO);
    let created = sap.ensure(&memo("SKULD-RC-6-1"), None).await.unwrap();
    assert!(matches!(created, Ensured::Created(_)), "{created:?}");

    let mut remapped = memo("SKULD-RC-6-1");
    remapped.sold_to_party = "17100002".to_owned();
    let refused = sap.ensure(&remapped, None).await.unwrap_err();
    assert!(
        matches!(&refused, ConnectorError::Invalid { code, message }
            if code == "SKULD/SOLD_TO_MISMATCH" && message.contains("17100001") && message.contains("17100002")),
        "{refused:?}"
    );
    assert_eq!(
        emulators
            .sap()
            .requests_with_reference("SKULD-RC-6-1")
            .len(),
        1
    );
    assert_eq!(posts(&emulators), 1, "no second create for the new sold-to");
    // The unchanged mapping still adopts it.
    assert!(matches!(
        sap.ensure(&memo("SKULD-RC-6-1"), None).await.unwrap(),
        Ensured::Found(document) if document.sold_to_party == "17100001"
    ));
    emulators.shutdown().await;
}
