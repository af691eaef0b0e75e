//! Shopify webhooks into a real node, sent by the Shopify emulator to the
//! node's HTTP port (`/webhooks/shopify/{tenant}/{channel}`): a wrong or
//! missing signature is refused with nothing stored; retries and a second
//! subscription's copy of an event are applied once; an older level update
//! arriving after a newer one, or a day late, is superseded, but not an
//! order's create arriving after its newer update, nor anything by an
//! ignored topic's delivery; a storefront order is a committed order in
//! skuld and the shop is not pushed back to its old figure; a restocking
//! refund raises on-hand once; a return request opens a return case; an
//! unknown SKU or location is an exception with its owner; accepted
//! deliveries survive a crash; in a cluster each is applied once by its
//! resource's owner. Also measures the intake rate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skuld_emulators::shopify::webhooks::{sign, WebhookFaults};
use skuld_emulators::shopify::OrderLine;
use skuld_emulators::{Emulators, EmulatorsConfig};
use skuld_proto::v1 as pb;
use skuld_proto::v1::channel_service_client::ChannelServiceClient;
use skuld_proto::v1::order_service_client::OrderServiceClient;
use skuld_tests::metrics::Scrape;
use skuld_tests::requests::{get, key, receive};
use skuld_tests::{NodeOptions, TestDir, TestNode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TEE: u64 = 1001;
/// Stocked on the shop, mapped to no SKU of the channel.
const GHOST: u64 = 1002;
const DC1: u64 = 1;
const OWNER: &str = "merch-ops";
const PATH: &str = "/webhooks/shopify/acme/web";

struct Setup {
    _dir: TestDir,
    node: TestNode,
    emulators: Emulators,
}

impl Setup {
    fn secret(&self) -> String {
        self.emulators.shopify().config().api_secret.clone()
    }

    async fn scrape(&self) -> Scrape {
        Scrape(self.node.http_get("/metrics").await.unwrap().1)
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape().await.or_zero(name, labels)
    }

    async fn position(&self) -> pb::Buckets {
        self.node
            .inventory()
            .await
            .unwrap()
            .get_position(get(&key("acme", "TEE", "DC1")))
            .await
            .unwrap()
            .into_inner()
            .position
            .unwrap()
            .buckets
            .unwrap()
    }

    async fn order(&self, shopify_id: u64) -> Option<pb::Order> {
        let mut orders = OrderServiceClient::new(self.node.channel().await.unwrap());
        orders
            .get_order(pb::GetOrderRequest {
                key: Some(pb::OrderKey {
                    tenant: "acme".into(),
                    order_id: format!("shopify:web:{shopify_id}"),
                }),
            })
            .await
            .ok()
            .and_then(|reply| reply.into_inner().order)
    }

    async fn exceptions(&self) -> Vec<pb::ChannelWebhookException> {
        ChannelServiceClient::new(self.node.channel().await.unwrap())
            .list_channel_webhook_exceptions(pb::ListChannelWebhookExceptionsRequest {
                tenant: "acme".into(),
                channel: "web".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .exceptions
    }

    fn faults(&self, faults: WebhookFaults) {
        self.emulators.shopify().webhook_faults().set_faults(faults);
    }

    /// A delivery signed with the channel's secret, as Shopify would send it.
    async fn deliver(&self, topic: &str, event_id: &str, webhook_id: &str, body: &str) -> Answer {
        let signature = sign(&self.secret(), body.as_bytes());
        post(
            &self.node,
            &[
                ("X-Shopify-Hmac-Sha256", &signature),
                ("X-Shopify-Topic", topic),
                ("X-Shopify-Event-Id", event_id),
                ("X-Shopify-Webhook-Id", webhook_id),
                ("X-Shopify-Shop-Domain", "skuld-emulator.myshopify.com"),
            ],
            body.as_bytes(),
        )
        .await
    }
}

/// A node with the channel `web` of `acme` on the emulated shop (TEE at DC1,
/// 10 units in skuld and on the shop; GHOST on the shop only), webhooks
/// pointed at the node.
async fn setup() -> Setup {
    setup_with(|options| options).await
}

fn node_options(dir: &TestDir) -> NodeOptions {
    NodeOptions::default()
        .arg("--channel-credentials-dir", dir.path().display())
        .arg("--channel-poll-interval-ms", 50)
}

async fn setup_with(options: impl FnOnce(NodeOptions) -> NodeOptions) -> Setup {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), options(node_options(&dir)))
        .await
        .unwrap();
    let emulators = shop_with_channel(&node, dir.path()).await;
    let shop = emulators.shopify();
    shop.set_webhook_url(Some(format!("http://{}{PATH}", node.http_addr())));
    Setup {
        _dir: dir,
        node,
        emulators,
    }
}

/// The emulated shop (TEE and GHOST at DC1, 10 each), 10 TEE at DC1 in
/// skuld, and the channel `web` of `acme` defined through `node`, its
/// credentials in `credentials_dir/acme/`.
async fn shop_with_channel(node: &TestNode, credentials_dir: &std::path::Path) -> Emulators {
    let emulators = Emulators::start(EmulatorsConfig::default()).await.unwrap();
    let shop = emulators.shopify();
    shop.add_item(TEE, "TEE");
    shop.add_item(GHOST, "GHOST");
    shop.add_location(DC1, "DC1");
    for item in [TEE, GHOST] {
        shop.seed_level(
            item,
            DC1,
            skuld_emulators::shopify::Levels {
                available: 10,
                ..Default::default()
            },
        );
    }
    node.inventory()
        .await
        .unwrap()
        .adjust(receive(&key("acme", "TEE", "DC1"), "seed", 10))
        .await
        .unwrap();
    let own = credentials_dir.join("acme");
    std::fs::create_dir_all(&own).unwrap();
    let credentials = own.join("shopify.json");
    std::fs::write(
        &credentials,
        json!({
            "access_token": shop.access_token(),
            "webhook_secret": shop.config().api_secret,
        })
        .to_string(),
    )
    .unwrap();
    let account = HashMap::from([
        ("base_url".to_owned(), shop.base_url().to_owned()),
        ("inventory_item_id.TEE".to_owned(), TEE.to_string()),
        ("location_id.DC1".to_owned(), DC1.to_string()),
        ("exceptions_owner".to_owned(), OWNER.to_owned()),
    ]);
    ChannelServiceClient::new(node.channel().await.unwrap())
        .create_channel(pb::CreateChannelRequest {
            channel: Some(pb::Channel {
                tenant: "acme".into(),
                id: "web".into(),
                kind: pb::ChannelKind::Shopify.into(),
                network: vec!["DC1".into()],
                priority: 1,
                min_push_interval_ms: 100,
                account,
                credentials_ref: format!("file:{}", credentials.display()),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    emulators
}

struct Answer {
    status: u16,
    body: String,
}

/// `POST PATH` over HTTP/1.1, as Shopify's sender does.
async fn post(node: &TestNode, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let addr = node.http_addr();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    Answer {
        status,
        body: body.to_owned(),
    }
}

/// Waits until `check` holds, or panics with `what` after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the shop's `sent` webhooks are answered and decided: the
/// inbox read empty by a look (every 100 ms) after the last answer.
async fn decided(setup: &Setup, sent: usize) {
    let shop = setup.emulators.shopify();
    eventually(
        Duration::from_secs(5),
        "the deliveries answered",
        || async {
            let deliveries = shop.webhook_deliveries();
            deliveries.len() == sent && deliveries.iter().all(|d| d.status == Some(200))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    eventually(Duration::from_secs(5), "the inbox drained", || async {
        setup
            .metric("skuld_inbound_webhooks_inbox_depth", &[])
            .await
            == 0.0
    })
    .await;
}

fn rfc3339(unix_ms: u64) -> String {
    skuld_node::timestamp::format_unix_ms(i64::try_from(unix_ms).unwrap())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn level(item: u64, location: u64, available: i64, updated_at_ms: u64) -> Value {
    json!({
        "inventory_item_id": item,
        "location_id": location,
        "available": available,
        "updated_at": rfc3339(updated_at_ms),
        "admin_graphql_api_id": format!("gid://shopify/InventoryLevel/{item}?inventory_item_id={location}"),
    })
}

fn tee(quantity: i64) -> OrderLine {
    OrderLine {
        inventory_item_id: TEE,
        location_id: DC1,
        quantity,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_signature_is_refused_and_nothing_is_stored() {
    let setup = setup().await;
    let shop = setup.emulators.shopify();
    setup.faults(WebhookFaults {
        wrong_signature: true,
        ..Default::default()
    });
    let order_id = shop.storefront_order(&[tee(2)]).unwrap();
    eventually(
        Duration::from_secs(5),
        "the forged deliveries answered",
        || async { shop.webhook_deliveries().len() == 2 },
    )
    .await;
    for delivery in shop.webhook_deliveries() {
        assert_eq!(delivery.status, Some(401), "{delivery:?}");
    }
    assert_eq!(
        setup
            .metric(
                "skuld_inbound_webhooks_refused_signature_total",
                &[("reason", "mismatch")]
            )
            .await,
        2.0
    );
    let body = r#"{"id":1}"#;
    let unsigned = post(
        &setup.node,
        &[
            ("X-Shopify-Topic", "orders/create"),
            ("X-Shopify-Webhook-Id", "w-unsigned"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);
    // A body over the limit is refused from its Content-Length, unread
    // (the head alone is sent: the node answers before any body).
    let mut stream = tokio::net::TcpStream::connect(setup.node.http_addr())
        .await
        .unwrap();
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\nX-Shopify-Hmac-Sha256: AAAA\r\nX-Shopify-Topic: orders/create\r\nX-Shopify-Webhook-Id: w-large\r\n\r\n",
        2 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Nothing of the forged order was stored: no order, the stock as it
    // was, and its very ids, signed right, are new to the node.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(setup.order(order_id).await.is_none());
    assert_eq!(setup.position().await.committed, 0);
    let forged = shop
        .webhook_deliveries()
        .into_iter()
        .find(|delivery| delivery.topic == "orders/create")
        .unwrap();
    let again = setup
        .deliver(
            "orders/create",
            &forged.event_id,
            &forged.webhook_id,
            &forged.body,
        )
        .await;
    assert_eq!((again.status, again.body.trim()), (200, "accepted"));
    eventually(Duration::from_secs(10), "the order committed", || async {
        setup
            .order(order_id)
            .await
            .is_some_and(|order| order.status == pb::OrderStatus::Committed as i32)
    })
    .await;
    assert_eq!(
        setup
            .metric("skuld_inbound_webhooks_duplicates_total", &[])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storefront_order_delivered_three_times_is_one_committed_order() {
    let setup = setup().await;
    let shop = setup.emulators.shopify();
    setup.faults(WebhookFaults {
        duplicates: 2,
        ..Default::default()
    });
    let order_id = shop.storefront_order(&[tee(3)]).unwrap();
    eventually(Duration::from_secs(10), "the order committed", || async {
        setup
            .order(order_id)
            .await
            .is_some_and(|order| order.status == pb::OrderStatus::Committed as i32)
    })
    .await;
    eventually(Duration::from_secs(5), "every copy answered", || async {
        shop.webhook_deliveries().len() == 6
    })
    .await;
    assert!(shop
        .webhook_deliveries()
        .iter()
        .all(|delivery| delivery.status == Some(200)));
    // The same event through a second subscription: its own webhook id.
    let delivered = shop
        .webhook_deliveries()
        .into_iter()
        .find(|delivery| delivery.topic == "orders/create")
        .unwrap();
    let other_subscription = setup
        .deliver(
            "orders/create",
            &delivered.event_id,
            "another-subscription",
            &delivered.body,
        )
        .await;
    assert_eq!(
        (other_subscription.status, other_subscription.body.trim()),
        (200, "duplicate")
    );
    let buckets = setup.position().await;
    assert_eq!(
        (
            buckets.on_hand,
            buckets.reserved,
            buckets.committed,
            buckets.available
        ),
        (10, 0, 3, 7),
        "{buckets:?}"
    );
    let scrape = setup.scrape().await;
    assert_eq!(
        scrape.or_zero(
            "skuld_inbound_webhooks_duplicates_total",
            &[("by", "webhook_id")]
        ),
        4.0
    );
    assert_eq!(
        scrape.or_zero(
            "skuld_inbound_webhooks_duplicates_total",
            &[("by", "event_id")]
        ),
        1.0
    );
    assert_eq!(
        scrape.or_zero(
            "skuld_inbound_webhooks_applied_total",
            &[("topic", "orders/create")]
        ),
        1.0
    );
    // Shopify took the 3 off its own figure; skuld's commit took them off
    // what the channel may sell: the push worker converges on 7, never
    // putting back the 10 it last pushed.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let shown = shop.level(TEE, DC1).unwrap();
        assert_eq!((shown.available, shown.committed), (7, 3), "{shown:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_updates_apply_in_updated_at_order_whatever_their_arrival() {
    let setup = setup().await;
    let shop = setup.emulators.shopify();
    let now = now_ms();
    let applied = || async {
        setup
            .metric(
                "skuld_inbound_webhooks_applied_total",
                &[("topic", "inventory_levels/update")],
            )
            .await
    };
    let superseded = || async {
        setup
            .metric(
                "skuld_inbound_webhooks_superseded_total",
                &[("topic", "inventory_levels/update")],
            )
            .await
    };
    // The newer update first, the older one after it (reordered).
    shop.send_webhook("inventory_levels/update", level(TEE, DC1, 6, now));
    eventually(
        Duration::from_secs(5),
        "the newer update applied",
        || async { applied().await == 1.0 },
    )
    .await;
    shop.send_webhook("inventory_levels/update", level(TEE, DC1, 8, now - 5_000));
    eventually(
        Duration::from_secs(5),
        "the older update superseded",
        || async { superseded().await == 1.0 },
    )
    .await;
    assert_eq!(applied().await, 1.0);
    // A day-late delivery (triggered a day ago, arriving now, after a
    // delay): superseded by what the level applied since.
    setup.faults(WebhookFaults {
        delay_ms: 300,
        backdate_ms: 24 * 3600 * 1000,
        ..Default::default()
    });
    shop.send_webhook(
        "inventory_levels/update",
        level(TEE, DC1, 9, now - 24 * 3600 * 1000),
    );
    eventually(
        Duration::from_secs(5),
        "the day-late update superseded",
        || async { superseded().await == 2.0 },
    )
    .await;
    // A day-late order is still a sale: applied, committed.
    let late_order = json!({
        "id": 777,
        "created_at": rfc3339(now - 24 * 3600 * 1000),
        "updated_at": rfc3339(now - 24 * 3600 * 1000),
        "line_items": [{"id": 1, "variant_id": TEE, "sku": "TEE", "quantity": 1, "location_id": DC1}],
    });
    shop.send_webhook("orders/create", late_order);
    eventually(
        Duration::from_secs(10),
        "the day-late order committed",
        || async {
            setup
                .order(777)
                .await
                .is_some_and(|order| order.status == pb::OrderStatus::Committed as i32)
        },
    )
    .await;
    // A newer update after all that applies.
    setup.faults(WebhookFaults::default());
    shop.send_webhook("inventory_levels/update", level(TEE, DC1, 5, now + 1_000));
    eventually(
        Duration::from_secs(5),
        "the newest update applied",
        || async { applied().await == 2.0 },
    )
    .await;
    assert_eq!(superseded().await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_arriving_after_a_newer_update_of_its_order_is_still_committed() {
    let setup = setup().await;
    let shop = setup.emulators.shopify();
    let now = now_ms();
    // A topic skuld ignores moves no mark: a level update older than an
    // ignored delivery about the same level still applies. (First: the
    // order below makes skuld push the level, and the shop report it.)
    shop.send_webhook("inventory_levels/connect", level(TEE, DC1, 0, now + 60_000));
    decided(&setup, 1).await;
    shop.send_webhook("inventory_levels/update", level(TEE, DC1, 10, now));
    decided(&setup, 2).await;
    let scrape = setup.scrape().await;
    assert_eq!(
        (
            scrape.or_zero(
                "skuld_inbound_webhooks_applied_total",
                &[("topic", "inventory_levels/update")]
            ),
            scrape.or_zero(
                "skuld_inbound_webhooks_superseded_total",
                &[("topic", "inventory_levels/update")]
            )
        ),
        (1.0, 0.0)
    );
    // The order's orders/updated (a later updated_at) lands and is decided
    // first, then its orders/create (a Shopify retry, or after a 503): the
    // sale is not superseded.
    let order = |updated_at_ms: u64| {
        json!({
            "id": 888,
            "created_at": rfc3339(now),
            "updated_at": rfc3339(updated_at_ms),
            "line_items": [{"id": 1, "variant_id": TEE, "sku": "TEE", "quantity": 2, "location_id": DC1}],
        })
    };
    shop.send_webhook("orders/updated", order(now + 60_000));
    decided(&setup, 3).await;
    shop.send_webhook("orders/create", order(now));
    eventually(Duration::from_secs(10), "the order committed", || async {
        setup
            .order(888)
            .await
            .is_some_and(|order| order.status == pb::OrderStatus::Committed as i32)
    })
    .await;
    let scrape = setup.scrape().await;
    assert_eq!(
        (
            scrape.or_zero(
                "skuld_inbound_webhooks_applied_total",
                &[("topic", "orders/create")]
            ),
            scrape.or_zero(
                "skuld_inbound_webhooks_superseded_total",
                &[("topic", "orders/create")]
            )
        ),
        (1.0, 0.0)
    );
    assert_eq!(setup.position().await.committed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restocking_refund_raises_on_hand_once_and_a_return_request_opens_a_case() {
    let setup = setup().await;
    let shop = setup.emulators.shopify();
    setup.faults(WebhookFaults {
        duplicates: 1,
        ..Default::default()
    });
    let refund = json!({
        "id": 4242,
        "order_id": 31,
        "created_at": rfc3339(now_ms()),
        "restock": true,
        "refund_line_items": [
            {"id": 1, "line_item_id": 310, "location_id": DC1, "quantity": 2, "restock_type": "return",
             "line_item": {"id": 310, "variant_id": TEE, "sku": "TEE", "quantity": 2}},
            {"id": 2, "line_item_id": 311, "location_id": DC1, "quantity": 1, "restock_type": "no_restock",
             "line_item": {"id": 311, "variant_id": TEE, "sku": "TEE", "quantity": 1}},
        ],
    });
    shop.send_webhook("refunds/create", refund.clone());
    eventually(Duration::from_secs(5), "the restock", || async {
        setup.position().await.on_hand == 12
    })
    .await;
    // The same refund as another event (Shopify fired it again): the
    // restock's key is the refund line's, so on-hand stays.
    setup.faults(WebhookFaults::default());
    shop.send_webhook("refunds/create", refund);
    eventually(
        Duration::from_secs(5),
        "the second event applied",
        || async {
            setup
                .metric(
                    "skuld_inbound_webhooks_applied_total",
                    &[("topic", "refunds/create")],
                )
                .await
                == 2.0
        },
    )
    .await;
    assert_eq!(setup.position().await.on_hand, 12);

    shop.send_webhook(
        "returns/request",
        json!({
            "id": 9001,
            "admin_graphql_api_id": "gid://shopify/Return/9001",
            "status": "requested",
            "order": {"id": 31, "admin_graphql_api_id": "gid://shopify/Order/31"},
            "return_line_items": [
                {"id": 5, "quantity": 1, "return_reason": "size_too_small",
                 "line_item": {"id": 310, "variant_id": TEE, "sku": "TEE", "quantity": 2}},
            ],
        }),
    );
    let mut returns = setup.node.returns().await.unwrap();
    eventually(Duration::from_secs(5), "the return case", || {
        let mut returns = returns.clone();
        async move {
            returns
                .get_return(pb::GetReturnRequest {
                    key: Some(pb::ReturnKey {
                        tenant: "acme".into(),
                        return_id: "shopify:web:9001".into(),
                    }),
                    ..Default::default()
                })
                .await
                .is_ok()
        }
    })
    .await;
    let case = returns
        .get_return(pb::GetReturnRequest {
            key: Some(pb::ReturnKey {
                tenant: "acme".into(),
                return_id: "shopify:web:9001".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let case = case.case.unwrap();
    assert_eq!(case.lines.len(), 1, "{case:?}");
    assert_eq!(
        (case.lines[0].sku.as_str(), case.lines[0].requested),
        ("TEE", 1)
    );
    assert!(setup.exceptions().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_skus_and_locations_are_exceptions_with_their_owner() {
    let setup = setup().await;
    let shop = setup.emulators.shopify();
    let order_id = shop
        .storefront_order(&[
            tee(1),
            OrderLine {
                inventory_item_id: GHOST,
                location_id: DC1,
                quantity: 2,
            },
        ])
        .unwrap();
    // The known line is a sale all the same.
    eventually(
        Duration::from_secs(10),
        "the known line committed",
        || async {
            setup
                .order(order_id)
                .await
                .is_some_and(|order| order.status == pb::OrderStatus::Committed as i32)
        },
    )
    .await;
    shop.send_webhook("inventory_levels/update", level(TEE, 99, 4, now_ms()));
    eventually(Duration::from_secs(5), "three exceptions", || async {
        setup.exceptions().await.len() == 3
    })
    .await;
    let exceptions = setup.exceptions().await;
    let mut found: Vec<(String, String, String)> = exceptions
        .iter()
        .map(|e| (e.code.clone(), e.topic.clone(), e.remote_ref.clone()))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (
                "UNKNOWN_LOCATION".to_owned(),
                "inventory_levels/update".to_owned(),
                "99".to_owned()
            ),
            (
                "UNKNOWN_SKU".to_owned(),
                "inventory_levels/update".to_owned(),
                GHOST.to_string()
            ),
            (
                "UNKNOWN_SKU".to_owned(),
                "orders/create".to_owned(),
                format!("GHOST ({GHOST})")
            ),
        ],
        "{exceptions:?}"
    );
    assert!(exceptions.iter().all(|e| e.owner == OWNER));
    // And through the CLI.
    let output = std::process::Command::new(skuld_tests::skuld_binary().unwrap())
        .args(["--endpoint", &format!("http://{}", setup.node.grpc_addr())])
        .args(["channels", "webhook-exceptions", "--tenant", "acme", "web"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let listed = String::from_utf8(output.stdout).unwrap();
    assert!(
        listed.contains("UNKNOWN_SKU") && listed.contains(OWNER),
        "{listed}"
    );
    assert!(
        setup
            .metric("skuld_inbound_webhooks_exceptions_total", &[])
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_taken_in_survive_a_crash_before_they_are_applied() {
    // The node takes deliveries in but does not apply them for a minute.
    let mut setup =
        setup_with(|options| options.env("SKULD_FAILPOINT_INBOUND_HOLD_MS", 60_000)).await;
    let shop = setup.emulators.shopify();
    let order_id = shop.storefront_order(&[tee(4)]).unwrap();
    eventually(
        Duration::from_secs(5),
        "both deliveries answered",
        || async { shop.webhook_deliveries().len() == 2 },
    )
    .await;
    assert!(shop
        .webhook_deliveries()
        .iter()
        .all(|delivery| delivery.status == Some(200)));
    assert!(setup.order(order_id).await.is_none());
    setup.node.kill9().unwrap();
    let dir = &setup._dir;
    let options = node_options(dir);
    setup.node.restart_with(options).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the order committed after the restart",
        || async {
            setup
                .order(order_id)
                .await
                .is_some_and(|order| order.status == pb::OrderStatus::Committed as i32)
        },
    )
    .await;
    assert_eq!(setup.position().await.committed, 4);
}

/// Cluster mode: storefront orders delivered (twice each) to the nodes in
/// turn are each applied once, by the owner of the order's shard, and
/// every node reads the same committed orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_each_delivery_is_applied_once_whichever_node_took_it() {
    use skuld_tests::cluster::{ClusterOptions, TestCluster};
    let credentials = TestDir::new().unwrap();
    let cluster = TestCluster::start_with(
        3,
        ClusterOptions {
            node: node_options(&credentials),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let emulators = shop_with_channel(cluster.node(0), credentials.path()).await;
    let shop = emulators.shopify();
    shop.webhook_faults().set_faults(WebhookFaults {
        duplicates: 1,
        ..Default::default()
    });
    let mut order_ids = Vec::new();
    for n in 0..6 {
        let via = cluster.node(n % 3);
        shop.set_webhook_url(Some(format!("http://{}{PATH}", via.http_addr())));
        order_ids.push(shop.storefront_order(&[tee(1)]).unwrap());
    }
    for (n, order_id) in order_ids.iter().enumerate() {
        let reader = cluster.node((n + 1) % 3);
        let orders = OrderServiceClient::new(reader.channel().await.unwrap());
        let key = pb::OrderKey {
            tenant: "acme".into(),
            order_id: format!("shopify:web:{order_id}"),
        };
        eventually(Duration::from_secs(20), "the order committed", || {
            let mut orders = orders.clone();
            let key = key.clone();
            async move {
                orders
                    .get_order(pb::GetOrderRequest { key: Some(key) })
                    .await
                    .is_ok_and(|reply| {
                        reply.into_inner().order.map(|order| order.status)
                            == Some(pb::OrderStatus::Committed as i32)
                    })
            }
        })
        .await;
    }
    let mut applied = 0.0;
    for index in 0..3 {
        applied += Scrape(cluster.node(index).http_get("/metrics").await.unwrap().1).or_zero(
            "skuld_inbound_webhooks_applied_total",
            &[("topic", "orders/create")],
        );
    }
    assert_eq!(applied, 6.0);
    let buckets = cluster
        .node(2)
        .inventory()
        .await
        .unwrap()
        .get_position(get(&key("acme", "TEE", "DC1")))
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap()
        .buckets
        .unwrap();
    assert_eq!((buckets.committed, buckets.reserved), (6, 0), "{buckets:?}");
}

/// Deliveries per second the endpoint takes in (verified, stored, 200),
/// 16 senders at once. Prints the figure; asserts only that all were taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_rate() {
    use futures::StreamExt as _;
    let setup = setup().await;
    let count: u32 = 1_000;
    let start_ms = now_ms();
    let started = Instant::now();
    let answers: Vec<u16> = futures::stream::iter(0..count)
        .map(|n| {
            let setup = &setup;
            async move {
                let body = level(TEE, DC1, 5, start_ms + u64::from(n)).to_string();
                setup
                    .deliver(
                        "inventory_levels/update",
                        &format!("rate-e{n}"),
                        &format!("rate-w{n}"),
                        &body,
                    )
                    .await
                    .status
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let elapsed = started.elapsed();
    assert!(answers.iter().all(|status| *status == 200));
    println!(
        "webhook intake: {count} deliveries in {:.2} s = {:.0} deliveries/s",
        elapsed.as_secs_f64(),
        f64::from(count) / elapsed.as_secs_f64()
    );
    eventually(Duration::from_secs(30), "the inbox drained", || async {
        setup
            .metric("skuld_inbound_webhooks_inbox_depth", &[])
            .await
            == 0.0
            && setup
                .metric(
                    "skuld_inbound_webhooks_applied_total",
                    &[("topic", "inventory_levels/update")],
                )
                .await
                + setup
                    .metric(
                        "skuld_inbound_webhooks_superseded_total",
                        &[("topic", "inventory_levels/update")],
                    )
                    .await
                == f64::from(count)
    })
    .await;
}
