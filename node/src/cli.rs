//! The people-facing command-line client: one subcommand per `InventoryService`
//! RPC (and, under `skuld returns`, per `ReturnsService` RPC), printing either a
//! plain-text summary or the proto3-JSON reply.

mod admin;
mod args;
mod call;
mod channel_pushes;
mod channels;
mod credentials;
mod events;
mod format;
mod import;
mod orders;
mod returns;
mod routing;
mod webhooks;

pub use args::*;
pub use call::CommandFailed;
use call::*;
pub use credentials::{CredentialArgs, Token};
use format::*;

use std::time::Duration;

use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_proto::v1::{
    AdjustRequest, AdjustmentReason, Bucket, CancelCommitmentRequest, CommitReservationRequest,
    ExtendReservationRequest, FulfillRequest, GetAvailabilityRequest, GetPositionRequest,
    MoveRequest, OwnerType, ReleaseReservationRequest, ReservationOwner, ReserveRequest,
    SetOnHandRequest,
};
use tonic::metadata::AsciiMetadataValue;
use uuid::Uuid;

/// Runs one client subcommand against the node at `options.endpoint`.
///
/// On failure the reason has already been printed to stderr as one line and
/// the returned error is a [`CommandFailed`].
pub async fn run(options: ClientOptions, command: ClientCommand) -> anyhow::Result<()> {
    let correlation_id = options
        .correlation_id
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let correlation_id = AsciiMetadataValue::try_from(correlation_id.as_str())
        .map_err(|_| fail(format!("invalid correlation id {correlation_id:?}")))?;
    let timeout = Duration::from_millis(options.timeout_ms);
    let authorization = credentials::authorization(&options.credentials)?;
    let tls = credentials::tls(&options.endpoint, &options.credentials)?;
    let channel = connect(&options.endpoint, tls.clone(), timeout).await?;
    let channel = match (options.routing, routing::keyed(&command)) {
        (RoutingMode::Owner, Some(key)) => {
            routing::owner_channel(&options.endpoint, tls, authorization.clone(), &key, timeout)
                .await
                .unwrap_or(channel)
        }
        _ => channel,
    };
    let mut client = InventoryServiceClient::new(channel.clone());
    let ctx = CallContext {
        correlation_id,
        authorization,
        timeout,
        json: options.json,
    };

    match command {
        ClientCommand::Adjust(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = AdjustRequest {
                header: Some(header),
                bucket: Bucket::from(args.bucket).into(),
                delta: args.delta,
                reason: AdjustmentReason::from(args.reason).into(),
                change_from: args.change_from,
                reference_document_uri: args.reference.unwrap_or_default(),
            };
            let reply = ctx.call(request, Some(&key), |r| client.adjust(r)).await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::SetOnHand(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = SetOnHandRequest {
                header: Some(header),
                on_hand: args.on_hand,
                reason: AdjustmentReason::from(args.reason).into(),
                counted_at_unix_ms: args.counted_at_ms,
                change_from: args.change_from,
                reference_document_uri: args.reference.unwrap_or_default(),
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.set_on_hand(r))
                .await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::Move(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = MoveRequest {
                header: Some(header),
                from_bucket: Bucket::from(args.from).into(),
                to_bucket: Bucket::from(args.to).into(),
                quantity: args.quantity,
                reason: AdjustmentReason::from(args.reason).into(),
                from_change_from: args.from_change_from,
                to_change_from: args.to_change_from,
                reference_document_uri: args.reference.unwrap_or_default(),
            };
            let reply = ctx.call(request, Some(&key), |r| client.r#move(r)).await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::Reserve(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let owner_id = args
                .owner_id
                .or_else(|| args.reservation_id.clone())
                .unwrap_or_else(|| key.value.clone());
            let request = ReserveRequest {
                header: Some(header),
                reservation_id: args.reservation_id.unwrap_or_default(),
                quantity: args.quantity,
                owner: Some(ReservationOwner {
                    r#type: OwnerType::from(args.owner_type).into(),
                    id: owner_id,
                    line_id: args.line_id.unwrap_or_default(),
                }),
                channel: args.channel.unwrap_or_default(),
                ttl_seconds: args.ttl,
                allow_partial: args.allow_partial,
            };
            let reply = ctx.call(request, Some(&key), |r| client.reserve(r)).await?;
            ctx.show_mutation(&reply, &args.position, &key, true)
        }
        ClientCommand::Extend(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = ExtendReservationRequest {
                header: Some(header),
                reservation_id: args.reservation_id,
                ttl_seconds: args.ttl,
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.extend_reservation(r))
                .await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::Release(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = ReleaseReservationRequest {
                header: Some(header),
                reservation_id: args.reservation_id,
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.release_reservation(r))
                .await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::Commit(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = CommitReservationRequest {
                header: Some(header),
                reservation_id: args.reservation_id,
                quantity: args.quantity,
                order_ref: args.order_ref,
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.commit_reservation(r))
                .await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::Fulfill(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = FulfillRequest {
                header: Some(header),
                order_ref: args.order_ref,
                quantity: args.quantity,
            };
            let reply = ctx.call(request, Some(&key), |r| client.fulfill(r)).await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::CancelCommitment(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = CancelCommitmentRequest {
                header: Some(header),
                order_ref: args.order_ref,
                quantity: args.quantity,
                restock: args.restock,
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.cancel_commitment(r))
                .await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::Position(args) => {
            let request = GetPositionRequest {
                key: Some(args.key()),
                ..GetPositionRequest::default()
            };
            let reply = ctx.call(request, None, |r| client.get_position(r)).await?;
            if ctx.json {
                return print_json(&reply);
            }
            let text = match &reply.position {
                Some(position) => format_position(position, &args.key(), skuld_cluster::now_ms()),
                None => format!("{}: no such position\n", format_key(&args.key())),
            };
            emit(&text)
        }
        ClientCommand::Availability(args) => {
            let request = GetAvailabilityRequest {
                tenant: args.tenant,
                sku: args.sku,
                locations: args.locations,
            };
            let reply = ctx
                .call(request, None, |r| client.get_availability(r))
                .await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(&format_availability(&reply))
        }
        ClientCommand::Returns(command) => returns::run(&ctx, channel, command).await,
        ClientCommand::Orders(command) => orders::run(&ctx, channel, command).await,
        ClientCommand::Events(command) => events::run(&ctx, channel, command).await,
        ClientCommand::Webhooks(command) => webhooks::run(&ctx, channel, command).await,
        ClientCommand::Channels(command) => channels::run(&ctx, channel, command).await,
        ClientCommand::Import(command) => import::run(&ctx, channel, command).await,
        ClientCommand::Status => admin::status(&ctx, channel).await,
        ClientCommand::Members => admin::members(&ctx, channel).await,
        ClientCommand::Shards(args) => admin::shards(&ctx, channel, args).await,
        ClientCommand::Drain(args) => admin::drain(&ctx, channel, args).await,
        ClientCommand::Undrain(args) => admin::undrain(&ctx, channel, args).await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use skuld_proto::v1::{
        Buckets, Commitment, GetAvailabilityResponse, LocationAvailability, MutationResponse,
        Position, PositionKey, Reservation, ReservationState,
    };
    use tonic::Status;

    /// The client part of the `skuld` command line, as main.rs wires it.
    #[derive(Parser, Debug)]
    #[command(name = "skuld")]
    struct TestCli {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(args: &[&str]) -> TestCli {
        TestCli::try_parse_from(args).unwrap()
    }

    #[test]
    fn command_definition_is_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn parses_channel_commands() {
        let cli = parse(&[
            "skuld",
            "channels",
            "availability",
            "web",
            "SKU-1",
            "SKU-2",
            "--per-location",
        ]);
        let ClientCommand::Channels(channels::ChannelsCommand::Availability(args)) = cli.command
        else {
            panic!("expected channels availability, got {:?}", cli.command);
        };
        assert_eq!((args.channel.as_str(), args.skus.len()), ("web", 2));
        assert!(args.per_location);
        assert_eq!(args.tenant.tenant, "default");
        let cli = parse(&[
            "skuld",
            "channels",
            "create",
            "web",
            "--tenant",
            "acme",
            "--kind",
            "adobe-commerce",
            "--network",
            "DC1,DC2",
            "--account",
            "store=default",
            "--control",
            "id=a,exclusion",
        ]);
        let ClientCommand::Channels(channels::ChannelsCommand::Create(args)) = cli.command else {
            panic!("expected channels create, got {:?}", cli.command);
        };
        assert_eq!(args.kind, channels::KindArg::AdobeCommerce);
        assert_eq!(
            args.definition.network,
            Some(vec!["DC1".into(), "DC2".into()])
        );
        assert_eq!(
            args.definition.account,
            [("store".into(), "default".into())]
        );
        assert_eq!(args.controls.len(), 1);
        // Controls come from flags, a file or --clear: one of them.
        let none = TestCli::try_parse_from(["skuld", "channels", "controls", "web"]);
        assert!(none.is_err());
        let cleared = parse(&["skuld", "channels", "controls", "web", "--clear"]);
        assert!(matches!(
            cleared.command,
            ClientCommand::Channels(channels::ChannelsCommand::Controls(_))
        ));
    }

    #[test]
    fn parses_the_push_worker_subcommands() {
        let cli = parse(&[
            "skuld", "channels", "replay", "web", "--tenant", "acme", "--id", "a", "--id", "b",
        ]);
        let ClientCommand::Channels(channels::ChannelsCommand::Replay(args)) = cli.command else {
            panic!("expected channels replay, got {:?}", cli.command);
        };
        assert_eq!(args.channel.channel, "web");
        assert_eq!(args.channel.tenant.tenant, "acme");
        assert_eq!(args.ids, ["a", "b"]);
        let cli = parse(&["skuld", "channels", "drift", "web", "--page-size", "5"]);
        let ClientCommand::Channels(channels::ChannelsCommand::Drift(args)) = cli.command else {
            panic!("expected channels drift, got {:?}", cli.command);
        };
        assert_eq!((args.page_size, args.page_token.as_str()), (5, ""));
        for sub in ["dead-letters", "reconcile"] {
            let cli = parse(&["skuld", "channels", sub, "web"]);
            assert!(matches!(cli.command, ClientCommand::Channels(_)), "{sub}");
        }
        assert!(TestCli::try_parse_from(["skuld", "channels", "reconcile"]).is_err());
    }

    #[test]
    fn parses_reserve_with_defaults() {
        let cli = parse(&[
            "skuld",
            "reserve",
            "--sku",
            "A",
            "--location",
            "L",
            "--quantity",
            "2",
        ]);
        assert_eq!(cli.options.timeout_ms, 10_000);
        assert!(!cli.options.json);
        let ClientCommand::Reserve(args) = cli.command else {
            panic!("expected reserve, got {:?}", cli.command);
        };
        assert_eq!(args.position.sku, "A");
        assert_eq!(args.position.location, "L");
        assert_eq!(args.quantity, 2);
        assert_eq!(args.owner_type, OwnerTypeArg::Cart);
        assert_eq!(args.ttl, 0);
        assert!(!args.allow_partial);
        assert!(args.mutation.idempotency_key.is_none());
        assert!(args.mutation.expected_version.is_none());
    }

    #[test]
    fn parses_negative_delta_and_enums() {
        let cli = parse(&[
            "skuld",
            "adjust",
            "--sku",
            "A",
            "--location",
            "L",
            "--delta",
            "-3",
            "--bucket",
            "quality-control",
            "--reason",
            "cycle-count",
            "--change-from",
            "-1",
            "--expected-version",
            "7",
            "--idempotency-key",
            "k1",
        ]);
        let ClientCommand::Adjust(args) = cli.command else {
            panic!("expected adjust, got {:?}", cli.command);
        };
        assert_eq!(args.delta, -3);
        assert_eq!(Bucket::from(args.bucket), Bucket::QualityControl);
        assert_eq!(
            AdjustmentReason::from(args.reason),
            AdjustmentReason::CycleCount
        );
        assert_eq!(args.change_from, Some(-1));
        assert_eq!(args.mutation.expected_version, Some(7));
        assert_eq!(args.mutation.idempotency_key.as_deref(), Some("k1"));
    }

    #[test]
    fn reason_defaults_to_other() {
        let cli = parse(&[
            "skuld",
            "adjust",
            "--sku",
            "A",
            "--location",
            "L",
            "--delta",
            "5",
        ]);
        let ClientCommand::Adjust(args) = cli.command else {
            panic!("expected adjust");
        };
        assert_eq!(args.reason, ReasonArg::Other);
        assert_eq!(args.bucket, BucketArg::Available);
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&[
            "skuld",
            "position",
            "--sku",
            "A",
            "--location",
            "L",
            "--json",
            "--endpoint",
            "http://node:7070",
            "--timeout-ms",
            "250",
            "--correlation-id",
            "c-1",
        ]);
        assert!(cli.options.json);
        assert_eq!(cli.options.endpoint, "http://node:7070");
        assert_eq!(cli.options.timeout_ms, 250);
        assert_eq!(cli.options.correlation_id.as_deref(), Some("c-1"));
        assert!(matches!(cli.command, ClientCommand::Position(_)));
    }

    #[test]
    fn parses_move_buckets_and_availability_locations() {
        let cli = parse(&[
            "skuld",
            "move",
            "--sku",
            "A",
            "--location",
            "L",
            "--from",
            "incoming",
            "--to",
            "available",
            "--quantity",
            "4",
        ]);
        let ClientCommand::Move(args) = cli.command else {
            panic!("expected move");
        };
        assert_eq!(Bucket::from(args.from), Bucket::Incoming);
        assert_eq!(Bucket::from(args.to), Bucket::Available);

        let cli = parse(&[
            "skuld",
            "availability",
            "--sku",
            "A",
            "--locations",
            "DC1,DC2",
        ]);
        let ClientCommand::Availability(args) = cli.command else {
            panic!("expected availability");
        };
        assert_eq!(args.locations, ["DC1", "DC2"]);
    }

    #[test]
    fn parses_cancel_commitment_and_owner_type() {
        let cli = parse(&[
            "skuld",
            "cancel-commitment",
            "--sku",
            "A",
            "--location",
            "L",
            "--order-ref",
            "o-1",
            "--quantity",
            "1",
            "--restock",
        ]);
        let ClientCommand::CancelCommitment(args) = cli.command else {
            panic!("expected cancel-commitment");
        };
        assert!(args.restock);
        assert_eq!(args.order_ref, "o-1");

        let cli = parse(&[
            "skuld",
            "reserve",
            "--sku",
            "A",
            "--location",
            "L",
            "--quantity",
            "1",
            "--owner-type",
            "return-exchange",
        ]);
        let ClientCommand::Reserve(args) = cli.command else {
            panic!("expected reserve");
        };
        assert_eq!(OwnerType::from(args.owner_type), OwnerType::ReturnExchange);
    }

    #[test]
    fn rejects_missing_sku_and_unknown_bucket() {
        assert!(TestCli::try_parse_from(["skuld", "position", "--location", "L"]).is_err());
        assert!(TestCli::try_parse_from([
            "skuld",
            "adjust",
            "--sku",
            "A",
            "--location",
            "L",
            "--delta",
            "1",
            "--bucket",
            "shelf",
        ])
        .is_err());
    }

    #[test]
    fn generated_idempotency_key_is_a_uuid() {
        let position = PositionArgs {
            tenant: "t".into(),
            sku: "A".into(),
            location: "L".into(),
        };
        let args = MutationArgs {
            idempotency_key: None,
            expected_version: Some(3),
        };
        let (header, key) = args.header(&position);
        assert!(key.generated);
        assert!(Uuid::parse_str(&key.value).is_ok());
        assert_eq!(header.idempotency_key, key.value);
        assert_eq!(header.expected_version, Some(3));
        assert_eq!(header.key.unwrap().tenant, "t");
    }

    #[test]
    fn formats_timestamps_as_rfc3339_utc() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_ms(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_unix_ms(951_782_400_999), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix_ms(-1_000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn formats_durations_and_relative_times() {
        assert_eq!(format_duration_ms(0), "0s");
        assert_eq!(format_duration_ms(59_999), "59s");
        assert_eq!(format_duration_ms(14 * 60_000 + 5_000), "14m 5s");
        assert_eq!(format_duration_ms(3 * 3_600_000 + 60_000), "3h 1m");
        assert_eq!(format_duration_ms(2 * 86_400_000 + 3_600_000), "2d 1h");
        assert_eq!(format_relative(10_000, 1_000), "in 9s");
        assert_eq!(format_relative(1_000, 4_000), "3s ago");
        assert_eq!(format_timestamp(0, 5), "-");
    }

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let table = format_table(
            &[("NAME", Align::Left), ("QTY", Align::Right)],
            &[
                vec!["available".into(), "5".into()],
                vec!["on_hand".into(), "-12".into()],
            ],
        );
        assert_eq!(
            table,
            "NAME       QTY\n\
             available    5\n\
             on_hand    -12\n"
        );
    }

    #[test]
    fn formats_mutation_reply() {
        let reply = MutationResponse {
            key: Some(PositionKey {
                tenant: "default".into(),
                sku: "SKU-1".into(),
                location: "DC1".into(),
            }),
            version: 7,
            buckets: Some(Buckets {
                on_hand: 10,
                available: 6,
                reserved: 2,
                committed: 2,
                ..Buckets::default()
            }),
            reservation: Some(Reservation {
                reservation_id: "r-1".into(),
                owner: Some(ReservationOwner {
                    r#type: OwnerType::Cart.into(),
                    id: "cart-9".into(),
                    line_id: String::new(),
                }),
                channel: "web".into(),
                quantity: 2,
                requested_quantity: 2,
                committed_quantity: 0,
                state: ReservationState::Active.into(),
                created_at_unix_ms: 1_700_000_000_000,
                expires_at_unix_ms: 1_700_000_900_000,
            }),
            granted_quantity: 2,
            replayed: true,
        };
        let key = IdempotencyKey {
            value: "k-1".into(),
            generated: false,
        };
        let text = format_mutation(
            &reply,
            &PositionKey::default(),
            &key,
            true,
            1_700_000_000_000,
        );
        let expected = "\
position         default/SKU-1@DC1
version          7
granted          2
replayed         true (stored reply of an earlier request)
idempotency key  k-1

BUCKET           QUANTITY
on_hand                10
available               6
reserved                2
committed               2
damaged                 0
quality_control         0
safety_stock            0
incoming                0

reservation  r-1
state        ACTIVE
quantity     2 (requested 2, committed 0)
owner        CART cart-9
channel      web
expires at   2023-11-14T22:28:20Z (in 15m 0s)
";
        assert_eq!(text, expected);
    }

    #[test]
    fn mutation_reply_shows_generated_key_and_falls_back_to_requested_key() {
        let requested = PositionKey {
            tenant: "t".into(),
            sku: "A".into(),
            location: "L".into(),
        };
        let key = IdempotencyKey {
            value: "gen".into(),
            generated: true,
        };
        let text = format_mutation(&MutationResponse::default(), &requested, &key, false, 0);
        assert!(text.starts_with("position         t/A@L\n"), "{text}");
        assert!(text.contains("idempotency key  gen (generated; pass --idempotency-key to retry)"));
        assert!(!text.contains("granted"));
        assert!(!text.contains("replayed"));
        assert!(!text.contains("reservation"));
    }

    #[test]
    fn formats_position_with_reservations_and_commitments() {
        let position = Position {
            key: None,
            version: 3,
            buckets: Some(Buckets {
                on_hand: 5,
                available: 2,
                reserved: 1,
                committed: 2,
                ..Buckets::default()
            }),
            allow_backorder: false,
            reservations: vec![Reservation {
                reservation_id: "r-1".into(),
                owner: Some(ReservationOwner {
                    r#type: OwnerType::Order.into(),
                    id: "o-1".into(),
                    line_id: "2".into(),
                }),
                quantity: 1,
                requested_quantity: 1,
                state: ReservationState::Active.into(),
                expires_at_unix_ms: 61_000,
                ..Reservation::default()
            }],
            commitments: vec![Commitment {
                order_ref: "o-1".into(),
                quantity: 2,
            }],
            last_counted_at_unix_ms: 0,
            active_reservations: 1,
            next_reservations_page_token: String::new(),
        };
        let requested = PositionKey {
            tenant: "t".into(),
            sku: "A".into(),
            location: "L".into(),
        };
        let text = format_position(&position, &requested, 1_000);
        assert!(
            text.starts_with("position    t/A@L\nversion     3\n"),
            "{text}"
        );
        assert!(text.contains("last count  never\n"), "{text}");
        assert!(
            text.contains(
                "reservations: 1\n\
             RESERVATION  STATE   QTY  COMMITTED  OWNER             CHANNEL  EXPIRES AT\n\
             r-1          ACTIVE    1          0  ORDER o-1 line 2  -        \
             1970-01-01T00:01:01Z (in 1m 0s)\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("commitments: 1\nORDER  QTY\no-1      2\n"),
            "{text}"
        );
    }

    #[test]
    fn only_an_active_reservation_shows_when_it_expires() {
        let reservation = |state: ReservationState| Reservation {
            reservation_id: "r-1".into(),
            quantity: 1,
            state: state.into(),
            expires_at_unix_ms: 61_000,
            ..Reservation::default()
        };
        let expires_line = |text: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix("expires at"))
                .map(|rest| rest.trim().to_owned())
        };
        let active = format_reservation(&reservation(ReservationState::Active), 1_000);
        assert_eq!(
            expires_line(&active).as_deref(),
            Some("1970-01-01T00:01:01Z (in 1m 0s)"),
            "{active}"
        );
        for ended in [
            ReservationState::Committed,
            ReservationState::Released,
            ReservationState::Expired,
        ] {
            let text = format_reservation(&reservation(ended), 1_000);
            assert_eq!(expires_line(&text).as_deref(), Some("-"), "{text}");
        }
    }

    #[test]
    fn formats_availability_with_total() {
        let reply = GetAvailabilityResponse {
            locations: vec![
                LocationAvailability {
                    location: "DC1".into(),
                    available: 5,
                    on_hand: 9,
                    version: 12,
                },
                LocationAvailability {
                    location: "STORE-7".into(),
                    available: -1,
                    on_hand: 0,
                    version: 3,
                },
            ],
            total_available: 5,
        };
        assert_eq!(
            format_availability(&reply),
            "LOCATION  AVAILABLE  ON_HAND  VERSION\n\
             DC1               5        9       12\n\
             STORE-7          -1        0        3\n\
             TOTAL             5\n"
        );
    }

    #[test]
    fn formats_status_with_retry_hint_and_key() {
        let mut status = Status::resource_exhausted("shard queue full");
        status
            .metadata_mut()
            .insert(RETRY_AFTER_HEADER, AsciiMetadataValue::from_static("250"));
        let key = IdempotencyKey {
            value: "k-9".into(),
            generated: true,
        };
        assert_eq!(
            format_status(&status, Some(&key)),
            "RESOURCE_EXHAUSTED: shard queue full; retry after 250 ms; \
             to retry safely pass --idempotency-key k-9"
        );
        let refused = Status::failed_precondition("insufficient available: 1 < 2");
        assert_eq!(
            format_status(&refused, Some(&key)),
            "FAILED_PRECONDITION: insufficient available: 1 < 2"
        );
        assert_eq!(
            format_status(&Status::not_found(""), None),
            format!("NOT_FOUND: {}", tonic::Code::NotFound.description())
        );
    }

    #[test]
    fn labels_unknown_enum_values() {
        assert_eq!(state_label(ReservationState::Expired.into()), "EXPIRED");
        assert_eq!(state_label(42), "UNKNOWN(42)");
        assert_eq!(owner_label(None), "-");
    }
}
