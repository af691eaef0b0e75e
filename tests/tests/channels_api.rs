//! The ChannelService against a real node: definitions created, listed,
//! updated under a revision guard, deleted, and still there after a
//! restart; every bad input refused naming its field with nothing stored;
//! allocation shares checked across a tenant's channels; a channel's
//! available-to-sell computed from positions received through the
//! inventory API; and tenants kept apart with authentication on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use skuld_proto::v1 as pb;
use skuld_proto::v1::channel_control::{self as control_pb, Kind};
use skuld_proto::v1::channel_service_client::ChannelServiceClient;
use skuld_tests::requests::{key, receive, reserve};
use skuld_tests::tokens::{bearer, write_jwks, SigningKey, ISSUER};
use skuld_tests::{NodeOptions, TestDir, TestNode};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

async fn channels(node: &TestNode) -> ChannelServiceClient<Channel> {
    ChannelServiceClient::new(node.channel().await.unwrap())
}

fn definition(tenant: &str, id: &str, kind: pb::ChannelKind, network: &[&str]) -> pb::Channel {
    pb::Channel {
        tenant: tenant.into(),
        id: id.into(),
        kind: kind.into(),
        network: network
            .iter()
            .map(|location| (*location).to_owned())
            .collect(),
        priority: 1,
        account: HashMap::from([("shop".to_owned(), "acme.myshopify.com".to_owned())]),
        credentials_ref: "env:SHOPIFY_TOKEN".into(),
        ..Default::default()
    }
}

fn control(id: &str, priority: u32, sku: &str, location: &str, kind: Kind) -> pb::ChannelControl {
    pb::ChannelControl {
        id: id.into(),
        priority,
        scope: Some(pb::ControlScope {
            sku: sku.into(),
            location: location.into(),
        }),
        kind: Some(kind),
    }
}

fn share(basis_points: u32) -> Kind {
    Kind::AllocationShare(control_pb::AllocationShare { basis_points })
}

async fn create(
    client: &mut ChannelServiceClient<Channel>,
    channel: pb::Channel,
) -> Result<pb::Channel, Status> {
    client
        .create_channel(pb::CreateChannelRequest {
            channel: Some(channel),
        })
        .await
        .map(|reply| reply.into_inner().channel.unwrap())
}

async fn get(
    client: &mut ChannelServiceClient<Channel>,
    tenant: &str,
    id: &str,
) -> Result<pb::Channel, Status> {
    client
        .get_channel(pb::GetChannelRequest {
            tenant: tenant.into(),
            id: id.into(),
        })
        .await
        .map(|reply| reply.into_inner().channel.unwrap())
}

async fn list_all(client: &mut ChannelServiceClient<Channel>, tenant: &str) -> Vec<pb::Channel> {
    client
        .list_channels(pb::ListChannelsRequest {
            tenant: tenant.into(),
            page_size: 1_000,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .channels
}

/// The field a refusal names in its google.rpc.BadRequest.
fn refused_field(result: Result<impl std::fmt::Debug, Status>) -> String {
    field_of(&result.expect_err("accepted"))
}

fn field_of(status: &Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad_request = status
        .get_details_bad_request()
        .expect("an INVALID_ARGUMENT without BadRequest details");
    bad_request.field_violations[0].field.clone()
}

fn code(result: Result<impl std::fmt::Debug, Status>) -> Code {
    result.expect_err("accepted").code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_created_listed_updated_deleted_and_survive_a_restart() {
    let dir = TestDir::new().unwrap();
    let mut node = TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap();
    let mut client = channels(&node).await;

    let web = create(
        &mut client,
        definition(
            "acme",
            "web",
            pb::ChannelKind::Shopify,
            &["DC1", "DC2", "DC3"],
        ),
    )
    .await
    .unwrap();
    assert_eq!(web.revision, 1);
    // The kind's defaults fill what the request left out.
    assert_eq!(web.publication(), pb::ChannelPublication::PerLocation);
    assert_eq!(web.min_push_interval_ms, 1_000);
    assert_eq!(web.reassert_interval_ms, 6 * 60 * 60 * 1_000);
    assert!(web.created_at_ms > 0);
    assert_eq!(get(&mut client, "acme", "web").await.unwrap(), web);

    let again = create(
        &mut client,
        definition("acme", "web", pb::ChannelKind::Amazon, &["DC9"]),
    )
    .await;
    assert_eq!(code(again), Code::AlreadyExists);
    assert_eq!(get(&mut client, "acme", "web").await.unwrap(), web);

    let amazon = create(
        &mut client,
        definition("acme", "amazon", pb::ChannelKind::Amazon, &["DC1"]),
    )
    .await
    .unwrap();
    assert_eq!(amazon.publication(), pb::ChannelPublication::PerSku);
    // Another tenant's channel of the same id is another channel.
    create(
        &mut client,
        definition("globex", "web", pb::ChannelKind::Walmart, &["G1"]),
    )
    .await
    .unwrap();

    // Pages of one, in id order, then an empty last page.
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..5 {
        let page = client
            .list_channels(pb::ListChannelsRequest {
                tenant: "acme".into(),
                page_size: 1,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.channels.into_iter().map(|channel| channel.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(token.is_empty(), "the listing never ended");
    assert_eq!(seen, ["amazon", "web"]);

    // An update at the right revision, then a stale one.
    let narrower = pb::Channel {
        network: vec!["DC1".into(), "DC2".into()],
        ..web.clone()
    };
    let updated = client
        .update_channel(pb::UpdateChannelRequest {
            channel: Some(narrower.clone()),
            expected_revision: Some(1),
        })
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    assert_eq!(updated.revision, 2);
    assert_eq!(updated.network, ["DC1", "DC2"]);
    assert_eq!(updated.created_at_ms, web.created_at_ms);
    let stale = client
        .update_channel(pb::UpdateChannelRequest {
            channel: Some(pb::Channel {
                network: vec!["DC3".into()],
                ..web.clone()
            }),
            expected_revision: Some(1),
        })
        .await;
    let status = stale.expect_err("a stale revision was accepted");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("revision"), "{status:?}");
    assert_eq!(get(&mut client, "acme", "web").await.unwrap(), updated);
    // The same definition again changes nothing, not even the revision.
    let unchanged = client
        .update_channel(pb::UpdateChannelRequest {
            channel: Some(narrower),
            expected_revision: None,
        })
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    assert_eq!(unchanged, updated);
    // The kind cannot change; an unknown channel cannot be updated.
    let other_kind = client
        .update_channel(pb::UpdateChannelRequest {
            channel: Some(pb::Channel {
                kind: pb::ChannelKind::Walmart.into(),
                ..updated.clone()
            }),
            expected_revision: None,
        })
        .await;
    assert_eq!(code(other_kind), Code::FailedPrecondition);
    let unknown = client
        .update_channel(pb::UpdateChannelRequest {
            channel: Some(definition(
                "acme",
                "nope",
                pb::ChannelKind::Shopify,
                &["DC1"],
            )),
            expected_revision: None,
        })
        .await;
    assert_eq!(code(unknown), Code::NotFound);
    assert_eq!(code(get(&mut client, "acme", "nope").await), Code::NotFound);

    // Deleting: guarded like an update, then gone.
    let stale_delete = client
        .delete_channel(pb::DeleteChannelRequest {
            tenant: "acme".into(),
            id: "amazon".into(),
            expected_revision: Some(7),
        })
        .await;
    assert_eq!(code(stale_delete), Code::FailedPrecondition);
    client
        .delete_channel(pb::DeleteChannelRequest {
            tenant: "acme".into(),
            id: "amazon".into(),
            expected_revision: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(
        code(get(&mut client, "acme", "amazon").await),
        Code::NotFound
    );
    let twice = client
        .delete_channel(pb::DeleteChannelRequest {
            tenant: "acme".into(),
            id: "amazon".into(),
            expected_revision: None,
        })
        .await;
    assert_eq!(code(twice), Code::NotFound);

    // Durable: a node killed and started again has the same definitions.
    node.restart().await.unwrap();
    let mut client = channels(&node).await;
    assert_eq!(list_all(&mut client, "acme").await, [updated]);
    assert_eq!(list_all(&mut client, "globex").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_refused_naming_its_field_and_nothing_is_stored() {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap();
    let mut client = channels(&node).await;
    let good = || definition("acme", "web", pb::ChannelKind::Shopify, &["DC1", "DC2"]);
    let with_controls = |controls: Vec<pb::ChannelControl>| pb::Channel { controls, ..good() };
    let exclusion = || Kind::Exclusion(control_pb::Exclusion {});
    let units = |units: i64| Kind::QuantityBuffer(control_pb::QuantityBuffer { units });
    let many_locations: Vec<String> = (0..1_001).map(|n| format!("L{n}")).collect();
    let many_settings: HashMap<String, String> = (0..33)
        .map(|n| (format!("setting{n}"), "x".to_owned()))
        .collect();
    let pasted_secret = "shpat_0123456789abcdef0123456789abcdef";
    let cases: Vec<(&str, pb::Channel)> = vec![
        (
            "tenant",
            pb::Channel {
                tenant: String::new(),
                ..good()
            },
        ),
        (
            "tenant",
            pb::Channel {
                tenant: "*".into(),
                ..good()
            },
        ),
        (
            "id",
            pb::Channel {
                id: String::new(),
                ..good()
            },
        ),
        (
            "id",
            pb::Channel {
                id: "web/eu".into(),
                ..good()
            },
        ),
        (
            "id",
            pb::Channel {
                id: "x".repeat(129),
                ..good()
            },
        ),
        ("kind", pb::Channel { kind: 0, ..good() }),
        ("kind", pb::Channel { kind: 99, ..good() }),
        (
            "publication",
            pb::Channel {
                publication: 9,
                ..good()
            },
        ),
        (
            "publication",
            pb::Channel {
                kind: pb::ChannelKind::Webhook.into(),
                publication: pb::ChannelPublication::PerSku.into(),
                ..good()
            },
        ),
        (
            "network",
            pb::Channel {
                network: vec![],
                ..good()
            },
        ),
        (
            "network",
            pb::Channel {
                network: vec!["DC1".into(), "DC1".into()],
                ..good()
            },
        ),
        (
            "network",
            pb::Channel {
                network: vec!["".into()],
                ..good()
            },
        ),
        (
            "network",
            pb::Channel {
                network: many_locations,
                ..good()
            },
        ),
        (
            "min_push_interval_ms",
            pb::Channel {
                min_push_interval_ms: 50,
                ..good()
            },
        ),
        (
            "reassert_interval_ms",
            pb::Channel {
                min_push_interval_ms: 5_000,
                reassert_interval_ms: 1_000,
                ..good()
            },
        ),
        (
            "account",
            pb::Channel {
                account: many_settings,
                ..good()
            },
        ),
        (
            "account",
            pb::Channel {
                account: HashMap::from([("shop".to_owned(), "a\u{7}b".to_owned())]),
                ..good()
            },
        ),
        (
            "credentials_ref",
            pb::Channel {
                credentials_ref: pasted_secret.into(),
                ..good()
            },
        ),
        (
            "credentials_ref",
            pb::Channel {
                credentials_ref: "file:relative/path".into(),
                ..good()
            },
        ),
        (
            "controls.kind",
            with_controls(vec![pb::ChannelControl {
                kind: None,
                ..control("c", 1, "", "", exclusion())
            }]),
        ),
        (
            "controls.id",
            with_controls(vec![control("", 1, "", "", exclusion())]),
        ),
        (
            "controls.id",
            with_controls(vec![
                control("c", 1, "", "", exclusion()),
                control("c", 2, "", "", exclusion()),
            ]),
        ),
        (
            "controls.priority",
            with_controls(vec![control("c", 0, "", "", exclusion())]),
        ),
        (
            "controls.value",
            with_controls(vec![control("c", 1, "", "", units(-1))]),
        ),
        (
            "controls.value",
            with_controls(vec![control(
                "c",
                1,
                "",
                "",
                Kind::PercentBuffer(control_pb::PercentBuffer {
                    basis_points: 10_001,
                }),
            )]),
        ),
        (
            "controls.value",
            with_controls(vec![control("c", 1, "", "", share(0))]),
        ),
        (
            "controls.scope.sku",
            with_controls(vec![control("c", 1, " SKU", "", exclusion())]),
        ),
        (
            "controls.scope.location",
            with_controls(vec![control("c", 1, "", "DC9", exclusion())]),
        ),
    ];
    for (field, channel) in &cases {
        let result = create(&mut client, channel.clone()).await;
        let status = result.clone().expect_err(field);
        assert!(
            !status.message().contains(pasted_secret),
            "a refusal echoed the credentials: {status:?}"
        );
        assert_eq!(&refused_field(result), field, "{channel:?}");
    }
    assert!(
        !node.log().contains(pasted_secret),
        "the node logged the credentials"
    );
    assert_eq!(
        code(create(&mut client, pb::Channel::default()).await),
        Code::InvalidArgument
    );
    let no_channel = client
        .create_channel(pb::CreateChannelRequest { channel: None })
        .await;
    assert_eq!(refused_field(no_channel), "channel");
    assert!(list_all(&mut client, "acme").await.is_empty());

    // The other RPCs, on a channel that exists.
    let stored = create(&mut client, good()).await.unwrap();
    assert_eq!(refused_field(get(&mut client, "acme", "").await), "id");
    assert_eq!(refused_field(get(&mut client, "", "web").await), "tenant");
    let list = |page_size: u32, page_token: &str| pb::ListChannelsRequest {
        tenant: "acme".into(),
        page_size,
        page_token: page_token.into(),
    };
    assert_eq!(
        refused_field(client.list_channels(list(1_001, "")).await),
        "page_size"
    );
    assert_eq!(
        refused_field(client.list_channels(list(10, "globex/web")).await),
        "page_token"
    );
    let set = |controls: Vec<pb::ChannelControl>| pb::SetControlsRequest {
        tenant: "acme".into(),
        channel_id: "web".into(),
        controls,
        stacking: None,
        expected_revision: None,
    };
    assert_eq!(
        refused_field(
            client
                .set_controls(pb::SetControlsRequest {
                    channel_id: "a/b".into(),
                    ..set(vec![])
                })
                .await
        ),
        "channel_id"
    );
    assert_eq!(
        refused_field(
            client
                .set_controls(set(vec![control("c", 1, "", "", units(2_000_000_000))]))
                .await
        ),
        "controls.value"
    );
    assert_eq!(
        refused_field(
            client
                .set_controls(set(vec![control("c", 1, "SKU-1", "DC7", exclusion())]))
                .await
        ),
        "controls.scope.location"
    );
    let availability = |skus: Vec<String>| pb::GetChannelAvailabilityRequest {
        tenant: "acme".into(),
        channel_id: "web".into(),
        skus,
        per_location: true,
    };
    assert_eq!(
        refused_field(client.get_channel_availability(availability(vec![])).await),
        "skus"
    );
    assert_eq!(
        refused_field(
            client
                .get_channel_availability(availability(vec!["".into()]))
                .await
        ),
        "skus"
    );
    let too_many: Vec<String> = (0..101).map(|n| format!("SKU-{n}")).collect();
    assert_eq!(
        refused_field(
            client
                .get_channel_availability(availability(too_many))
                .await
        ),
        "skus"
    );
    // A wide network takes fewer SKUs per call: 200 locations x 100 SKUs
    // would be 20,000 positions.
    let wide: Vec<String> = (0..200).map(|n| format!("L{n}")).collect();
    let wide_refs: Vec<&str> = wide.iter().map(String::as_str).collect();
    create(
        &mut client,
        definition("acme", "wide", pb::ChannelKind::Shopify, &wide_refs),
    )
    .await
    .unwrap();
    let hundred: Vec<String> = (0..100).map(|n| format!("SKU-{n}")).collect();
    assert_eq!(
        refused_field(
            client
                .get_channel_availability(pb::GetChannelAvailabilityRequest {
                    channel_id: "wide".into(),
                    ..availability(hundred)
                })
                .await
        ),
        "skus"
    );
    assert_eq!(get(&mut client, "acme", "web").await.unwrap(), stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_shares_of_one_pool_never_exceed_the_whole() {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap();
    let mut client = channels(&node).await;
    let network = ["DC1", "DC2"];
    let web = create(
        &mut client,
        pb::Channel {
            controls: vec![control("web-share", 1, "", "", share(6_000))],
            ..definition("acme", "web", pb::ChannelKind::Shopify, &network)
        },
    )
    .await
    .unwrap();
    let outlet = create(
        &mut client,
        pb::Channel {
            priority: 2,
            ..definition("acme", "outlet", pb::ChannelKind::Shopify, &network)
        },
    )
    .await
    .unwrap();
    let set = |basis_points: u32, expected_revision: Option<u64>| pb::SetControlsRequest {
        tenant: "acme".into(),
        channel_id: "outlet".into(),
        controls: vec![control("outlet-share", 1, "", "", share(basis_points))],
        stacking: None,
        expected_revision,
    };
    // 60 % + 50 % of one pool: refused, the outlet unchanged.
    let over = client.set_controls(set(5_000, None)).await;
    let status = over.expect_err("110 % of a pool was accepted");
    assert!(status.message().contains("110.00 %"), "{status:?}");
    assert_eq!(field_of(&status), "controls");
    assert_eq!(get(&mut client, "acme", "outlet").await.unwrap(), outlet);
    // A third channel in the same pool cannot take a share either.
    let third = create(
        &mut client,
        pb::Channel {
            controls: vec![control("s", 1, "", "", share(4_001))],
            ..definition("acme", "third", pb::ChannelKind::Shopify, &["DC2", "DC1"])
        },
    )
    .await;
    assert_eq!(refused_field(third), "controls");
    assert_eq!(
        code(get(&mut client, "acme", "third").await),
        Code::NotFound
    );
    // 60 % + 40 % is the whole pool; the revision guard applies.
    let stale = client.set_controls(set(4_000, Some(5))).await;
    assert_eq!(code(stale), Code::FailedPrecondition);
    let fitted = client
        .set_controls(set(4_000, Some(1)))
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    assert_eq!(fitted.revision, 2);
    assert_eq!(fitted.controls.len(), 1);
    // Another network is another pool; another tenant's channels too.
    create(
        &mut client,
        pb::Channel {
            controls: vec![control("s", 1, "", "", share(9_000))],
            ..definition("acme", "stores", pb::ChannelKind::Shopify, &["DC1"])
        },
    )
    .await
    .unwrap();
    create(
        &mut client,
        pb::Channel {
            controls: vec![control("s", 1, "", "", share(9_000))],
            ..definition("globex", "web", pb::ChannelKind::Shopify, &network)
        },
    )
    .await
    .unwrap();
    // Clearing the web's share frees the pool for the outlet.
    let cleared = client
        .set_controls(pb::SetControlsRequest {
            tenant: "acme".into(),
            channel_id: "web".into(),
            controls: vec![],
            stacking: Some(true),
            expected_revision: Some(web.revision),
        })
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    assert!(cleared.controls.is_empty());
    assert!(cleared.stacking);
    client.set_controls(set(10_000, Some(2))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_is_computed_from_the_networks_positions_and_the_controls() {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap();
    let mut inventory = node.inventory().await.unwrap();
    let mut client = channels(&node).await;
    // SKU-1: DC1 10 available; DC2 7 received, 2 reserved: 5; DC3 3; DC4
    // never written.
    for (location, quantity) in [("DC1", 10), ("DC2", 7), ("DC3", 3)] {
        let position = key("acme", "SKU-1", location);
        inventory
            .adjust(receive(&position, &format!("rcv-{location}"), quantity))
            .await
            .unwrap();
    }
    inventory
        .reserve(reserve(&key("acme", "SKU-1", "DC2"), "cart-1", 2, 900))
        .await
        .unwrap();
    // Another tenant's stock at the same locations is not this tenant's.
    inventory
        .adjust(receive(&key("globex", "SKU-1", "DC1"), "rcv-g", 500))
        .await
        .unwrap();

    // Per location: 2 held back at DC1, none sold from DC3, half (rounded
    // up) held back everywhere else; no stacking, so DC1 gets only its
    // buffer (priority 1 before 2).
    let web = create(
        &mut client,
        pb::Channel {
            controls: vec![
                control(
                    "dc1-buffer",
                    1,
                    "",
                    "DC1",
                    Kind::QuantityBuffer(control_pb::QuantityBuffer { units: 2 }),
                ),
                control(
                    "no-dc3",
                    1,
                    "",
                    "DC3",
                    Kind::Exclusion(control_pb::Exclusion {}),
                ),
                control(
                    "half",
                    2,
                    "",
                    "",
                    Kind::PercentBuffer(control_pb::PercentBuffer {
                        basis_points: 5_000,
                    }),
                ),
            ],
            ..definition(
                "acme",
                "web",
                pb::ChannelKind::Shopify,
                &["DC1", "DC2", "DC3", "DC4"],
            )
        },
    )
    .await
    .unwrap();
    // Per SKU: 1 held back at DC2's line, then the sum capped at 12.
    let amazon = create(
        &mut client,
        pb::Channel {
            controls: vec![
                control(
                    "cap",
                    1,
                    "SKU-1",
                    "",
                    Kind::RingFenceCap(control_pb::RingFenceCap { units: 12 }),
                ),
                control(
                    "dc2-buffer",
                    1,
                    "",
                    "DC2",
                    Kind::QuantityBuffer(control_pb::QuantityBuffer { units: 1 }),
                ),
            ],
            ..definition(
                "acme",
                "amazon",
                pb::ChannelKind::Amazon,
                &["DC1", "DC2", "DC3"],
            )
        },
    )
    .await
    .unwrap();

    let ask =
        |channel: &str, skus: &[&str], per_location: bool| pb::GetChannelAvailabilityRequest {
            tenant: "acme".into(),
            channel_id: channel.into(),
            skus: skus.iter().map(|sku| (*sku).to_owned()).collect(),
            per_location,
        };
    let reply = client
        .get_channel_availability(ask("web", &["SKU-1", "SKU-2", "SKU-1"], true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.skus.len(), 2, "{reply:?}");
    let sku1 = &reply.skus[0];
    assert_eq!(sku1.sku, "SKU-1");
    assert_eq!(sku1.network_available, 18);
    assert_eq!(sku1.revision, web.revision);
    let lines: Vec<(&str, i64, i64, u64)> = sku1
        .locations
        .iter()
        .map(|line| {
            (
                line.location.as_str(),
                line.network_available,
                line.available_to_sell,
                line.position_version,
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("DC1", 10, 8, 1),
            ("DC2", 5, 2, 2),
            ("DC3", 3, 0, 1),
            ("DC4", 0, 0, 0)
        ]
    );
    assert_eq!(sku1.available_to_sell, 10);
    let sku2 = &reply.skus[1];
    assert_eq!(
        (
            sku2.sku.as_str(),
            sku2.available_to_sell,
            sku2.network_available
        ),
        ("SKU-2", 0, 0)
    );
    assert_eq!(sku2.locations.len(), 4);

    let per_sku = client
        .get_channel_availability(ask("amazon", &["SKU-1"], false))
        .await
        .unwrap()
        .into_inner();
    let sku1 = &per_sku.skus[0];
    assert_eq!((sku1.available_to_sell, sku1.network_available), (12, 18));
    assert!(sku1.locations.is_empty(), "lines without per_location");
    assert_eq!(sku1.revision, amazon.revision);
    let lines = client
        .get_channel_availability(ask("amazon", &["SKU-1"], true))
        .await
        .unwrap()
        .into_inner();
    let values: Vec<i64> = lines.skus[0]
        .locations
        .iter()
        .map(|line| line.available_to_sell)
        .collect();
    assert_eq!(values, [10, 4, 3]);

    // The figures follow the positions: 9 more reserved at DC1 leave 1,
    // below the buffer.
    inventory
        .reserve(reserve(&key("acme", "SKU-1", "DC1"), "cart-2", 9, 900))
        .await
        .unwrap();
    let after = client
        .get_channel_availability(ask("web", &["SKU-1"], true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.skus[0].locations[0].available_to_sell, 0);
    assert_eq!(after.skus[0].available_to_sell, 2);
    // And the controls: SetControls clears the web's; the next answer names
    // the new revision.
    let cleared = client
        .set_controls(pb::SetControlsRequest {
            tenant: "acme".into(),
            channel_id: "web".into(),
            controls: vec![],
            stacking: None,
            expected_revision: Some(web.revision),
        })
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    let after = client
        .get_channel_availability(ask("web", &["SKU-1"], false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.skus[0].available_to_sell, 1 + 5 + 3);
    assert_eq!(after.skus[0].revision, cleared.revision);
    assert!(cleared.revision > web.revision);

    let missing = client
        .get_channel_availability(ask("nope", &["SKU-1"], false))
        .await;
    assert_eq!(code(missing), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_kept_apart_with_authentication_on() {
    let dir = TestDir::new().unwrap();
    let jwks = dir.path().join("jwks.json");
    let signer = SigningKey::new("k1").unwrap();
    write_jwks(&jwks, &[&signer]).unwrap();
    let node = TestNode::start(
        &dir.node_dir("node"),
        NodeOptions::default()
            .arg("--jwks-file", jwks.display())
            .arg("--jwt-issuers", ISSUER),
    )
    .await
    .unwrap();
    let acme_admin = signer.token("acme-admin", &["acme"], &["admin"]).unwrap();
    let acme_reader = signer.token("acme-pos", &["acme"], &["reader"]).unwrap();
    let globex_admin = signer
        .token("globex-admin", &["globex"], &["admin"])
        .unwrap();
    let mut client = channels(&node).await;

    let web = definition("acme", "web", pb::ChannelKind::Shopify, &["DC1"]);
    let created = client
        .create_channel(
            bearer(
                pb::CreateChannelRequest {
                    channel: Some(web.clone()),
                },
                &acme_admin,
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    let get_as = |token: &str, id: &str| {
        bearer(
            pb::GetChannelRequest {
                tenant: "acme".into(),
                id: id.into(),
            },
            token,
        )
        .unwrap()
    };
    assert_eq!(
        client
            .get_channel(get_as(&acme_admin, "web"))
            .await
            .unwrap()
            .into_inner()
            .channel
            .unwrap(),
        created
    );
    // Only the tenant's own caller learns that an id does not exist.
    assert_eq!(
        code(client.get_channel(get_as(&acme_admin, "nope")).await),
        Code::NotFound
    );

    // Another tenant's admin: the same refusal for a channel that exists
    // and one that does not, on every RPC.
    let existing = client
        .get_channel(get_as(&globex_admin, "web"))
        .await
        .expect_err("another tenant read acme's channel");
    let missing = client
        .get_channel(get_as(&globex_admin, "nope"))
        .await
        .expect_err("another tenant probed acme's ids");
    assert_eq!(existing.code(), Code::PermissionDenied);
    assert_eq!(
        (existing.code(), existing.message()),
        (missing.code(), missing.message())
    );
    let as_globex = |message| bearer(message, &globex_admin).unwrap();
    assert_eq!(
        code(
            client
                .list_channels(as_globex(pb::ListChannelsRequest {
                    tenant: "acme".into(),
                    ..Default::default()
                }))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            client
                .create_channel(
                    bearer(
                        pb::CreateChannelRequest {
                            channel: Some(pb::Channel {
                                id: "intruder".into(),
                                ..web.clone()
                            }),
                        },
                        &globex_admin
                    )
                    .unwrap()
                )
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            client
                .update_channel(
                    bearer(
                        pb::UpdateChannelRequest {
                            channel: Some(pb::Channel {
                                network: vec!["DC9".into()],
                                ..web.clone()
                            }),
                            expected_revision: None,
                        },
                        &globex_admin
                    )
                    .unwrap()
                )
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            client
                .set_controls(
                    bearer(
                        pb::SetControlsRequest {
                            tenant: "acme".into(),
                            channel_id: "web".into(),
                            ..Default::default()
                        },
                        &globex_admin
                    )
                    .unwrap()
                )
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            client
                .delete_channel(
                    bearer(
                        pb::DeleteChannelRequest {
                            tenant: "acme".into(),
                            id: "web".into(),
                            expected_revision: None,
                        },
                        &globex_admin
                    )
                    .unwrap()
                )
                .await
        ),
        Code::PermissionDenied
    );
    let availability = || pb::GetChannelAvailabilityRequest {
        tenant: "acme".into(),
        channel_id: "web".into(),
        skus: vec!["SKU-1".into()],
        per_location: false,
    };
    assert_eq!(
        code(
            client
                .get_channel_availability(bearer(availability(), &globex_admin).unwrap())
                .await
        ),
        Code::PermissionDenied
    );
    // Their own tenant shows none of acme's.
    let globex = client
        .list_channels(
            bearer(
                pb::ListChannelsRequest {
                    tenant: "globex".into(),
                    ..Default::default()
                },
                &globex_admin,
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(globex.channels.is_empty());

    // A reader of the tenant reads availability, and manages nothing.
    let sellable = client
        .get_channel_availability(bearer(availability(), &acme_reader).unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sellable.skus[0].available_to_sell, 0);
    assert_eq!(
        code(client.get_channel(get_as(&acme_reader, "web")).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            client
                .create_channel(
                    bearer(
                        pb::CreateChannelRequest {
                            channel: Some(pb::Channel {
                                id: "reader-made".into(),
                                ..web.clone()
                            }),
                        },
                        &acme_reader
                    )
                    .unwrap()
                )
                .await
        ),
        Code::PermissionDenied
    );
    // No token at all.
    assert_eq!(
        code(
            client
                .get_channel(pb::GetChannelRequest {
                    tenant: "acme".into(),
                    id: "web".into(),
                })
                .await
        ),
        Code::Unauthenticated
    );
    // Nothing the refused calls sent was stored.
    let listed = client
        .list_channels(
            bearer(
                pb::ListChannelsRequest {
                    tenant: "acme".into(),
                    ..Default::default()
                },
                &acme_admin,
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.channels, [created]);
}

/// `skuld ARGS...` against `node`: its stdout, or a panic with its stderr.
fn skuld(node: &TestNode, args: &[&str]) -> String {
    let output = std::process::Command::new(skuld_tests::skuld_binary().unwrap())
        .args(["--endpoint", &format!("http://{}", node.grpc_addr())])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "skuld {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_channels_and_shows_their_availability() {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap();
    let mut inventory = node.inventory().await.unwrap();
    for (location, quantity) in [("DC1", 10), ("DC2", 4)] {
        inventory
            .adjust(receive(
                &key("acme", "SKU-1", location),
                &format!("rcv-{location}"),
                quantity,
            ))
            .await
            .unwrap();
    }
    let created = skuld(
        &node,
        &[
            "channels",
            "create",
            "web",
            "--tenant",
            "acme",
            "--kind",
            "shopify",
            "--network",
            "DC1,DC2",
            "--account",
            "shop=acme.myshopify.com",
            "--credentials-ref",
            "env:ACME_SHOPIFY_TOKEN",
        ],
    );
    assert!(created.contains("acme/web"), "{created}");
    assert!(created.contains("revision        1"), "{created}");

    let controls = skuld(
        &node,
        &[
            "channels",
            "controls",
            "web",
            "--tenant",
            "acme",
            "--control",
            "id=dc1-hold,quantity_buffer=3,location=DC1",
            "--control",
            "id=cap,ring_fence_cap=2,sku=SKU-1,location=DC2",
        ],
    );
    assert!(controls.contains("quantity_buffer 3"), "{controls}");
    assert!(controls.contains("sku SKU-1 at DC2"), "{controls}");
    let listed = skuld(&node, &["channels", "list", "--tenant", "acme"]);
    assert!(
        listed.lines().any(|line| line.starts_with("web ")),
        "{listed}"
    );

    // 10 - 3 at DC1, 4 capped at 2 at DC2.
    let availability = skuld(
        &node,
        &[
            "channels",
            "availability",
            "web",
            "SKU-1",
            "--tenant",
            "acme",
            "--per-location",
        ],
    );
    let rows: Vec<Vec<&str>> = availability
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert!(rows.contains(&vec!["SKU-1", "9", "14"]), "{availability}");
    assert!(rows.contains(&vec!["DC1", "7", "10"]), "{availability}");
    assert!(rows.contains(&vec!["DC2", "2", "4"]), "{availability}");

    // The controls --json show prints are what --file takes.
    let shown: serde_json::Value = serde_json::from_str(&skuld(
        &node,
        &["--json", "channels", "show", "web", "--tenant", "acme"],
    ))
    .unwrap();
    let file = dir.path().join("controls.json");
    let mut controls = shown["channel"]["controls"].as_array().unwrap().clone();
    controls.truncate(1);
    std::fs::write(&file, serde_json::to_string(&controls).unwrap()).unwrap();
    let file = file.display().to_string();
    skuld(
        &node,
        &[
            "channels", "controls", "web", "--tenant", "acme", "--file", &file,
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&skuld(
        &node,
        &[
            "--json",
            "channels",
            "availability",
            "web",
            "SKU-1",
            "--tenant",
            "acme",
        ],
    ))
    .unwrap();
    assert_eq!(json["skus"][0]["availableToSell"], "11", "{json}");

    let updated = skuld(
        &node,
        &[
            "channels",
            "update",
            "web",
            "--tenant",
            "acme",
            "--network",
            "DC1",
            "--remove-account",
            "shop",
        ],
    );
    assert!(updated.contains("network         DC1\n"), "{updated}");
    assert!(updated.contains("revision        4"), "{updated}");
    skuld(&node, &["channels", "delete", "web", "--tenant", "acme"]);
    let output = std::process::Command::new(skuld_tests::skuld_binary().unwrap())
        .args(["--endpoint", &format!("http://{}", node.grpc_addr())])
        .args(["channels", "show", "web", "--tenant", "acme"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("NOT_FOUND"),
        "{output:?}"
    );
}

/// Cluster mode: a definition written through one node is read by every
/// other (records are shard-independent, in PostgreSQL), and availability
/// asked of one node reads each position from its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_every_node_reads_the_definitions_and_positions_come_from_their_owners() {
    use skuld_tests::cluster::{node_id, shard_of, TestCluster};
    use skuld_tests::metrics::Scrape;

    let cluster = TestCluster::start(3).await.unwrap();
    let locations: Vec<String> = (0..8).map(|n| format!("DC{n}")).collect();
    let network: Vec<&str> = locations.iter().map(String::as_str).collect();
    let mut writer = ChannelServiceClient::new(cluster.node(0).channel().await.unwrap());
    let created = create(
        &mut writer,
        definition("acme", "web", pb::ChannelKind::Shopify, &network),
    )
    .await
    .unwrap();
    for index in 1..3 {
        let mut reader = ChannelServiceClient::new(cluster.node(index).channel().await.unwrap());
        assert_eq!(get(&mut reader, "acme", "web").await.unwrap(), created);
    }
    // Stock n+1 at DCn, received through node 0 (forwarded to each owner).
    let mut inventory = cluster.inventory(0).await.unwrap();
    for (n, location) in locations.iter().enumerate() {
        inventory
            .adjust(receive(
                &key("acme", "SKU-1", location),
                &format!("rcv-{location}"),
                n as i64 + 1,
            ))
            .await
            .unwrap();
    }
    // Controls set through node 1; availability asked of node 2, which
    // does not own every one of the positions.
    let mut controls = ChannelServiceClient::new(cluster.node(1).channel().await.unwrap());
    let set = controls
        .set_controls(pb::SetControlsRequest {
            tenant: "acme".into(),
            channel_id: "web".into(),
            controls: vec![control(
                "no-dc0",
                1,
                "",
                "DC0",
                Kind::Exclusion(control_pb::Exclusion {}),
            )],
            stacking: None,
            expected_revision: Some(created.revision),
        })
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    let owners = cluster.shard_owners(2).await.unwrap();
    let elsewhere = locations
        .iter()
        .filter(|location| owners[shard_of(&key("acme", "SKU-1", location)) as usize] != node_id(2))
        .count();
    assert!(
        elsewhere > 0,
        "node 2 owns every position: nothing is routed"
    );
    let forwarded = |metrics: String| Scrape(metrics).or_zero("skuld_forwarded_total", &[]);
    let (_, before) = cluster.node(2).http_get("/metrics").await.unwrap();
    let mut asker = ChannelServiceClient::new(cluster.node(2).channel().await.unwrap());
    let reply = asker
        .get_channel_availability(pb::GetChannelAvailabilityRequest {
            tenant: "acme".into(),
            channel_id: "web".into(),
            skus: vec!["SKU-1".into()],
            per_location: true,
        })
        .await
        .unwrap()
        .into_inner();
    let (_, after) = cluster.node(2).http_get("/metrics").await.unwrap();
    let sku = &reply.skus[0];
    assert_eq!(sku.revision, set.revision);
    assert_eq!(sku.network_available, (1..=8).sum::<i64>());
    assert_eq!(sku.available_to_sell, (2..=8).sum::<i64>());
    let values: Vec<i64> = sku
        .locations
        .iter()
        .map(|line| line.available_to_sell)
        .collect();
    assert_eq!(values, [0, 2, 3, 4, 5, 6, 7, 8]);
    assert!(
        forwarded(after) >= forwarded(before) + elsewhere as f64,
        "the reads of positions owned elsewhere were not forwarded"
    );
}
