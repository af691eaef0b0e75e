//! `skuld channels ...`: channel definitions, their controls, and what a
//! channel may sell.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use skuld_proto::v1 as pb;
use skuld_proto::v1::channel_control::{self as control_pb, Kind};
use skuld_proto::v1::channel_service_client::ChannelServiceClient;
use tonic::transport::Channel;

use super::channel_pushes;
use super::{
    emit, fail, format_fields, format_table, format_unix_ms, print_json, Align, CallContext,
};

#[derive(Subcommand, Debug)]
pub enum ChannelsCommand {
    /// Define a channel: its kind, network and account settings.
    Create(CreateArgs),
    /// A tenant's channels.
    List(ListArgs),
    /// One channel: definition, controls, revision.
    Show(ChannelArgs),
    /// Change a channel's definition (read, changed, written back at the
    /// revision read, so a concurrent change is refused, not overwritten).
    Update(UpdateArgs),
    /// Remove a channel.
    Delete(DeleteArgs),
    /// Replace a channel's controls, from --control flags or a file.
    Controls(ControlsArgs),
    /// What a channel may sell of some SKUs now.
    Availability(AvailabilityArgs),
    /// Pushes the channel refused as invalid (the latest per target).
    DeadLetters(channel_pushes::PageArgs),
    /// Push the current value of dead-lettered targets again.
    Replay(channel_pushes::ReplayArgs),
    /// What read-backs found the channel showing other than skuld believed.
    Drift(channel_pushes::PageArgs),
    /// Read every pushed value of the channel back now.
    Reconcile(ChannelArgs),
    /// Push SKUs now (a channel's first sync, or a catalog).
    Sync(channel_pushes::SyncArgs),
    /// Webhook deliveries that could not be applied (unknown SKU or
    /// location, ...), each with its owner.
    WebhookExceptions(channel_pushes::PageArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindArg {
    Shopify,
    Amazon,
    Walmart,
    AdobeCommerce,
    Webhook,
}

impl From<KindArg> for pb::ChannelKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Shopify => pb::ChannelKind::Shopify,
            KindArg::Amazon => pb::ChannelKind::Amazon,
            KindArg::Walmart => pb::ChannelKind::Walmart,
            KindArg::AdobeCommerce => pb::ChannelKind::AdobeCommerce,
            KindArg::Webhook => pb::ChannelKind::Webhook,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationArg {
    PerLocation,
    PerSku,
}

impl From<PublicationArg> for pb::ChannelPublication {
    fn from(publication: PublicationArg) -> Self {
        match publication {
            PublicationArg::PerLocation => pb::ChannelPublication::PerLocation,
            PublicationArg::PerSku => pb::ChannelPublication::PerSku,
        }
    }
}

#[derive(Args, Debug)]
pub struct TenantArg {
    #[arg(long, env = "SKULD_TENANT", default_value = "default")]
    pub tenant: String,
}

#[derive(Args, Debug)]
pub struct ChannelArgs {
    #[command(flatten)]
    pub tenant: TenantArg,
    /// The channel's id.
    pub channel: String,
}

/// What `create` and `update` set, beside the kind.
#[derive(Args, Debug)]
pub struct DefinitionArgs {
    /// Locations the channel sells from, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub network: Option<Vec<String>>,
    /// One value per location or per SKU (the kind's default when absent).
    #[arg(long, value_enum)]
    pub publication: Option<PublicationArg>,
    /// Among channels sharing a pool, the lowest gets rounding remainders.
    #[arg(long)]
    pub priority: Option<u32>,
    /// Every matching control applies (true) or only the first (false).
    #[arg(long)]
    pub stacking: Option<bool>,
    #[arg(long)]
    pub min_push_interval_ms: Option<u64>,
    #[arg(long)]
    pub reassert_interval_ms: Option<u64>,
    /// A non-secret account setting, NAME=VALUE (repeatable).
    #[arg(long = "account", value_parser = parse_setting)]
    pub account: Vec<(String, String)>,
    /// Where the credentials are: file:/absolute/path or env:NAME.
    #[arg(long)]
    pub credentials_ref: Option<String>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub channel: ChannelArgs,
    #[arg(long, value_enum)]
    pub kind: KindArg,
    #[command(flatten)]
    pub definition: DefinitionArgs,
    /// Controls to start with, as `controls` takes them (repeatable).
    #[arg(long = "control", value_parser = parse_control)]
    pub controls: Vec<pb::ChannelControl>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub tenant: TenantArg,
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    #[arg(long, default_value = "")]
    pub page_token: String,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub channel: ChannelArgs,
    #[command(flatten)]
    pub definition: DefinitionArgs,
    /// Remove an account setting (repeatable).
    #[arg(long = "remove-account")]
    pub remove_account: Vec<String>,
    /// Apply only at this revision (default: the revision just read).
    #[arg(long)]
    pub expected_revision: Option<u64>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub channel: ChannelArgs,
    #[arg(long)]
    pub expected_revision: Option<u64>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").args(["controls", "file", "clear"]).required(true)))]
pub struct ControlsArgs {
    #[command(flatten)]
    pub channel: ChannelArgs,
    /// One control (repeatable): `id=ID,KIND[=VALUE][,sku=SKU][,location=LOC][,priority=N]`,
    /// KIND one of quantity_buffer=UNITS, percent_buffer=BASIS_POINTS, exclusion,
    /// ring_fence_cap=UNITS, minimum=UNITS, allocation_share=BASIS_POINTS;
    /// the priority defaults to the control's place in the list (1 first).
    #[arg(long = "control", value_parser = parse_control)]
    pub controls: Vec<pb::ChannelControl>,
    /// A JSON array of controls as `--json channels show` prints them.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Remove every control.
    #[arg(long)]
    pub clear: bool,
    /// Also set whether controls stack.
    #[arg(long)]
    pub stacking: Option<bool>,
    #[arg(long)]
    pub expected_revision: Option<u64>,
}

#[derive(Args, Debug)]
pub struct AvailabilityArgs {
    #[command(flatten)]
    pub tenant: TenantArg,
    /// The channel's id.
    pub channel: String,
    /// SKUs to answer (1 to 100).
    #[arg(required = true)]
    pub skus: Vec<String>,
    /// Also show each location's line.
    #[arg(long)]
    pub per_location: bool,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| "expected NAME=VALUE".to_owned())
}

/// One `--control` spec; its priority is 0 when the spec names none (the
/// place in the list fills it in, see [`with_default_priorities`]).
pub fn parse_control(spec: &str) -> Result<pb::ChannelControl, String> {
    let mut control = pb::ChannelControl {
        scope: Some(pb::ControlScope::default()),
        ..Default::default()
    };
    for part in spec.split(',') {
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (part.trim(), None),
        };
        let number = |what: &str| -> Result<i64, String> {
            value
                .ok_or_else(|| format!("{name} needs ={what}"))?
                .parse::<i64>()
                .map_err(|_| format!("{name}: {what} is a whole number"))
        };
        let basis_points = || -> Result<u32, String> {
            u32::try_from(number("BASIS_POINTS")?)
                .map_err(|_| format!("{name}: basis points from 0 to 10000"))
        };
        let kind = match name {
            "id" => {
                control.id = value.unwrap_or_default().to_owned();
                None
            }
            "priority" => {
                control.priority = u32::try_from(number("N")?)
                    .map_err(|_| "priority: from 1 to 1000000".to_owned())?;
                None
            }
            "sku" | "location" => {
                let scope = control.scope.get_or_insert_with(Default::default);
                let value = value.unwrap_or_default().to_owned();
                if name == "sku" {
                    scope.sku = value;
                } else {
                    scope.location = value;
                }
                None
            }
            "quantity_buffer" => Some(Kind::QuantityBuffer(control_pb::QuantityBuffer {
                units: number("UNITS")?,
            })),
            "percent_buffer" => Some(Kind::PercentBuffer(control_pb::PercentBuffer {
                basis_points: basis_points()?,
            })),
            "exclusion" => Some(Kind::Exclusion(control_pb::Exclusion {})),
            "ring_fence_cap" => Some(Kind::RingFenceCap(control_pb::RingFenceCap {
                units: number("UNITS")?,
            })),
            "minimum" => Some(Kind::Minimum(control_pb::Minimum {
                units: number("UNITS")?,
            })),
            "allocation_share" => Some(Kind::AllocationShare(control_pb::AllocationShare {
                basis_points: basis_points()?,
            })),
            other => return Err(format!("unknown part {other:?}")),
        };
        if let Some(kind) = kind {
            if control.kind.is_some() {
                return Err("one kind per control".to_owned());
            }
            control.kind = Some(kind);
        }
    }
    if control.id.is_empty() {
        return Err("needs id=ID".to_owned());
    }
    if control.kind.is_none() {
        return Err("needs a kind: quantity_buffer=, percent_buffer=, exclusion, ring_fence_cap=, minimum= or allocation_share=".to_owned());
    }
    Ok(control)
}

/// Controls given without a priority apply in the order given.
fn with_default_priorities(mut controls: Vec<pb::ChannelControl>) -> Vec<pb::ChannelControl> {
    for (place, control) in controls.iter_mut().enumerate() {
        if control.priority == 0 {
            control.priority = u32::try_from(place + 1).unwrap_or(u32::MAX);
        }
    }
    controls
}

/// Sets on `channel` what `definition` names.
fn apply(channel: &mut pb::Channel, definition: DefinitionArgs) {
    if let Some(network) = definition.network {
        channel.network = network;
    }
    if let Some(publication) = definition.publication {
        channel.publication = pb::ChannelPublication::from(publication).into();
    }
    if let Some(priority) = definition.priority {
        channel.priority = priority;
    }
    if let Some(stacking) = definition.stacking {
        channel.stacking = stacking;
    }
    if let Some(interval) = definition.min_push_interval_ms {
        channel.min_push_interval_ms = interval;
    }
    if let Some(interval) = definition.reassert_interval_ms {
        channel.reassert_interval_ms = interval;
    }
    channel.account.extend(definition.account);
    if let Some(reference) = definition.credentials_ref {
        channel.credentials_ref = reference;
    }
}

fn kind_label(raw: i32) -> String {
    match pb::ChannelKind::try_from(raw) {
        Ok(pb::ChannelKind::Shopify) => "shopify".into(),
        Ok(pb::ChannelKind::Amazon) => "amazon".into(),
        Ok(pb::ChannelKind::Walmart) => "walmart".into(),
        Ok(pb::ChannelKind::AdobeCommerce) => "adobe_commerce".into(),
        Ok(pb::ChannelKind::Webhook) => "webhook".into(),
        _ => format!("kind {raw}"),
    }
}

fn publication_label(raw: i32) -> String {
    match pb::ChannelPublication::try_from(raw) {
        Ok(pb::ChannelPublication::PerLocation) => "per location".into(),
        Ok(pb::ChannelPublication::PerSku) => "per SKU".into(),
        _ => format!("publication {raw}"),
    }
}

/// `quantity_buffer 5`, `exclusion`, ...
fn control_effect(control: &pb::ChannelControl) -> String {
    match &control.kind {
        Some(Kind::QuantityBuffer(buffer)) => format!("quantity_buffer {}", buffer.units),
        Some(Kind::PercentBuffer(buffer)) => format!(
            "percent_buffer {}.{:02} %",
            buffer.basis_points / 100,
            buffer.basis_points % 100
        ),
        Some(Kind::Exclusion(_)) => "exclusion".into(),
        Some(Kind::RingFenceCap(cap)) => format!("ring_fence_cap {}", cap.units),
        Some(Kind::Minimum(minimum)) => format!("minimum {}", minimum.units),
        Some(Kind::AllocationShare(share)) => format!(
            "allocation_share {}.{:02} %",
            share.basis_points / 100,
            share.basis_points % 100
        ),
        None => "?".into(),
    }
}

fn control_scope(control: &pb::ChannelControl) -> String {
    let scope = control.scope.clone().unwrap_or_default();
    match (scope.sku.is_empty(), scope.location.is_empty()) {
        (true, true) => "all".into(),
        (false, true) => format!("sku {}", scope.sku),
        (true, false) => format!("location {}", scope.location),
        (false, false) => format!("sku {} at {}", scope.sku, scope.location),
    }
}

fn format_controls(controls: &[pb::ChannelControl]) -> String {
    let rows: Vec<Vec<String>> = controls
        .iter()
        .map(|control| {
            vec![
                control.priority.to_string(),
                control.id.clone(),
                control_effect(control),
                control_scope(control),
            ]
        })
        .collect();
    format_table(
        &[
            ("priority", Align::Right),
            ("control", Align::Left),
            ("effect", Align::Left),
            ("scope", Align::Left),
        ],
        &rows,
    )
}

pub(super) fn format_channel(channel: &pb::Channel) -> String {
    let mut account: Vec<String> = channel
        .account
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    account.sort();
    let mut text = format_fields(&[
        ("channel", format!("{}/{}", channel.tenant, channel.id)),
        ("kind", kind_label(channel.kind)),
        ("publication", publication_label(channel.publication)),
        ("network", channel.network.join(",")),
        ("priority", channel.priority.to_string()),
        (
            "stacking",
            if channel.stacking {
                "yes: every matching control applies".into()
            } else {
                "no: the first matching control applies".into()
            },
        ),
        (
            "push interval",
            format!("{} ms", channel.min_push_interval_ms),
        ),
        (
            "reassert after",
            format!("{} ms", channel.reassert_interval_ms),
        ),
        ("account", account.join(" ")),
        ("credentials", channel.credentials_ref.clone()),
        ("revision", channel.revision.to_string()),
        ("created", format_unix_ms(channel.created_at_ms)),
        ("updated", format_unix_ms(channel.updated_at_ms)),
    ]);
    if channel.controls.is_empty() {
        text.push_str("no controls\n");
    } else {
        text.push('\n');
        text.push_str(&format_controls(&channel.controls));
    }
    text
}

fn channel_rows(channels: &[pb::Channel]) -> String {
    let rows: Vec<Vec<String>> = channels
        .iter()
        .map(|channel| {
            vec![
                channel.id.clone(),
                kind_label(channel.kind),
                publication_label(channel.publication),
                channel.network.join(","),
                channel.controls.len().to_string(),
                channel.revision.to_string(),
            ]
        })
        .collect();
    format_table(
        &[
            ("channel", Align::Left),
            ("kind", Align::Left),
            ("publication", Align::Left),
            ("network", Align::Left),
            ("controls", Align::Right),
            ("revision", Align::Right),
        ],
        &rows,
    )
}

fn format_availability(reply: &pb::GetChannelAvailabilityResponse) -> String {
    let mut rows = Vec::new();
    for sku in &reply.skus {
        rows.push(vec![
            sku.sku.clone(),
            String::new(),
            sku.available_to_sell.to_string(),
            sku.network_available.to_string(),
        ]);
        for line in &sku.locations {
            rows.push(vec![
                String::new(),
                line.location.clone(),
                line.available_to_sell.to_string(),
                line.network_available.to_string(),
            ]);
        }
    }
    let mut text = format_table(
        &[
            ("sku", Align::Left),
            ("location", Align::Left),
            ("available to sell", Align::Right),
            ("network available", Align::Right),
        ],
        &rows,
    );
    if let Some(first) = reply.skus.first() {
        text.push_str(&format!("(channel revision {})\n", first.revision));
    }
    text
}

fn read_controls_file(path: &PathBuf) -> anyhow::Result<Vec<pb::ChannelControl>> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| fail(format!("cannot read {}: {error}", path.display())))?;
    serde_json::from_str(&text).map_err(|error| {
        fail(format!(
            "{}: not a JSON array of controls: {error}",
            path.display()
        ))
    })
}

pub(super) async fn run(
    ctx: &CallContext,
    channel: Channel,
    command: ChannelsCommand,
) -> anyhow::Result<()> {
    let mut client = ChannelServiceClient::new(channel);
    match command {
        ChannelsCommand::Create(args) => {
            let mut definition = pb::Channel {
                tenant: args.channel.tenant.tenant,
                id: args.channel.channel,
                kind: pb::ChannelKind::from(args.kind).into(),
                priority: 1,
                controls: with_default_priorities(args.controls),
                account: HashMap::new(),
                ..Default::default()
            };
            apply(&mut definition, args.definition);
            let request = pb::CreateChannelRequest {
                channel: Some(definition),
            };
            let reply = ctx
                .call(request, None, |r| client.create_channel(r))
                .await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(
                &reply
                    .channel
                    .as_ref()
                    .map(format_channel)
                    .unwrap_or_default(),
            )
        }
        ChannelsCommand::List(args) => {
            let request = pb::ListChannelsRequest {
                tenant: args.tenant.tenant,
                page_size: args.page_size,
                page_token: args.page_token,
            };
            let reply = ctx.call(request, None, |r| client.list_channels(r)).await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(&channel_rows(&reply.channels))?;
            if !reply.next_page_token.is_empty() {
                let _ = writeln!(io::stderr(), "more: --page-token {}", reply.next_page_token);
            }
            Ok(())
        }
        ChannelsCommand::Show(args) => {
            let request = pb::GetChannelRequest {
                tenant: args.tenant.tenant,
                id: args.channel,
            };
            let reply = ctx.call(request, None, |r| client.get_channel(r)).await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(
                &reply
                    .channel
                    .as_ref()
                    .map(format_channel)
                    .unwrap_or_default(),
            )
        }
        ChannelsCommand::Update(args) => {
            let request = pb::GetChannelRequest {
                tenant: args.channel.tenant.tenant,
                id: args.channel.channel,
            };
            let current = ctx
                .call(request, None, |r| client.get_channel(r))
                .await?
                .channel
                .ok_or_else(|| fail("the node answered no channel".to_owned()))?;
            let expected_revision = Some(args.expected_revision.unwrap_or(current.revision));
            let mut changed = current;
            for name in &args.remove_account {
                changed.account.remove(name);
            }
            apply(&mut changed, args.definition);
            let request = pb::UpdateChannelRequest {
                channel: Some(changed),
                expected_revision,
            };
            let reply = ctx
                .call(request, None, |r| client.update_channel(r))
                .await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(
                &reply
                    .channel
                    .as_ref()
                    .map(format_channel)
                    .unwrap_or_default(),
            )
        }
        ChannelsCommand::Delete(args) => {
            let id = args.channel.channel;
            let request = pb::DeleteChannelRequest {
                tenant: args.channel.tenant.tenant,
                id: id.clone(),
                expected_revision: args.expected_revision,
            };
            let reply = ctx
                .call(request, None, |r| client.delete_channel(r))
                .await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(&format!("deleted {id}\n"))
        }
        ChannelsCommand::Controls(args) => {
            let controls = match &args.file {
                Some(path) => read_controls_file(path)?,
                None => with_default_priorities(args.controls),
            };
            let request = pb::SetControlsRequest {
                tenant: args.channel.tenant.tenant,
                channel_id: args.channel.channel,
                controls,
                stacking: args.stacking,
                expected_revision: args.expected_revision,
            };
            let reply = ctx.call(request, None, |r| client.set_controls(r)).await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(
                &reply
                    .channel
                    .as_ref()
                    .map(format_channel)
                    .unwrap_or_default(),
            )
        }
        ChannelsCommand::DeadLetters(args) => {
            channel_pushes::dead_letters(ctx, &mut client, args).await
        }
        ChannelsCommand::Replay(args) => channel_pushes::replay(ctx, &mut client, args).await,
        ChannelsCommand::Drift(args) => channel_pushes::drift(ctx, &mut client, args).await,
        ChannelsCommand::Sync(args) => channel_pushes::sync(ctx, &mut client, args).await,
        ChannelsCommand::Reconcile(args) => channel_pushes::reconcile(ctx, &mut client, args).await,
        ChannelsCommand::WebhookExceptions(args) => {
            channel_pushes::webhook_exceptions(ctx, &mut client, args).await
        }
        ChannelsCommand::Availability(args) => {
            let request = pb::GetChannelAvailabilityRequest {
                tenant: args.tenant.tenant,
                channel_id: args.channel,
                skus: args.skus,
                per_location: args.per_location,
            };
            let reply = ctx
                .call(request, None, |r| client.get_channel_availability(r))
                .await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(&format_availability(&reply))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_control_spec_names_its_kind_scope_and_priority() {
        let control =
            parse_control("id=dc1-hold,quantity_buffer=5,location=DC1,priority=2").unwrap();
        assert_eq!(control.id, "dc1-hold");
        assert_eq!(control.priority, 2);
        assert_eq!(
            control.kind,
            Some(Kind::QuantityBuffer(control_pb::QuantityBuffer {
                units: 5
            }))
        );
        assert_eq!(control_scope(&control), "location DC1");
        let share = parse_control("id=s,allocation_share=2500,sku=SKU-1").unwrap();
        assert_eq!(control_effect(&share), "allocation_share 25.00 %");
        assert_eq!(control_scope(&share), "sku SKU-1");
        assert!(parse_control("id=x,exclusion").is_ok());
        for bad in [
            "quantity_buffer=5",
            "id=x",
            "id=x,quantity_buffer",
            "id=x,quantity_buffer=five",
            "id=x,exclusion,minimum=2",
            "id=x,percent_buffer=-1",
            "id=x,colour=red",
        ] {
            assert!(parse_control(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn controls_without_a_priority_apply_in_the_order_given() {
        let controls = with_default_priorities(vec![
            parse_control("id=a,exclusion").unwrap(),
            parse_control("id=b,minimum=3,priority=7").unwrap(),
            parse_control("id=c,minimum=1").unwrap(),
        ]);
        let priorities: Vec<u32> = controls.iter().map(|control| control.priority).collect();
        assert_eq!(priorities, [1, 7, 3]);
    }

    #[test]
    fn a_controls_file_is_what_json_output_prints() {
        let controls =
            vec![parse_control("id=a,ring_fence_cap=9,sku=S,location=L,priority=1").unwrap()];
        let printed = serde_json::to_string(&controls).unwrap();
        let read: Vec<pb::ChannelControl> = serde_json::from_str(&printed).unwrap();
        assert_eq!(read, controls);
        assert!(printed.contains("ringFenceCap"), "{printed}");
    }
}
