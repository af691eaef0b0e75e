//! `skuld channels dead-letters|replay|drift|reconcile`: what the push
//! worker left for people, and telling it to act.

use std::io::{self, Write};

use clap::Args;
use skuld_proto::v1 as pb;
use skuld_proto::v1::channel_service_client::ChannelServiceClient;
use tonic::transport::Channel;

use super::channels::ChannelArgs;
use super::{emit, format_table, format_unix_ms, print_json, Align, CallContext};

#[derive(Args, Debug)]
pub struct PageArgs {
    #[command(flatten)]
    pub channel: ChannelArgs,
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    #[arg(long, default_value = "")]
    pub page_token: String,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub channel: ChannelArgs,
    /// Only these dead letters (repeatable, ids as `dead-letters` lists
    /// them); all of the channel's when absent.
    #[arg(long = "id")]
    pub ids: Vec<String>,
}

fn location_label(location: &str) -> String {
    if location.is_empty() {
        "(all)".into()
    } else {
        location.to_owned()
    }
}

fn figure(value: Option<i64>) -> String {
    value.map_or_else(|| "-".into(), |value| value.to_string())
}

fn more(next_page_token: &str) {
    if !next_page_token.is_empty() {
        let _ = writeln!(io::stderr(), "more: --page-token {next_page_token}");
    }
}

pub(super) async fn dead_letters(
    ctx: &CallContext,
    client: &mut ChannelServiceClient<Channel>,
    args: PageArgs,
) -> anyhow::Result<()> {
    let request = pb::ListChannelDeadLettersRequest {
        tenant: args.channel.tenant.tenant,
        channel: args.channel.channel,
        page_size: args.page_size,
        page_token: args.page_token,
    };
    let reply = ctx
        .call(request, None, |r| client.list_channel_dead_letters(r))
        .await?;
    if ctx.json {
        return print_json(&reply);
    }
    let rows: Vec<Vec<String>> = reply
        .dead_letters
        .iter()
        .map(|letter| {
            vec![
                letter.sku.clone(),
                location_label(&letter.location),
                letter.value.to_string(),
                letter.attempts.to_string(),
                format!("{}: {}", letter.code, letter.message),
                format_unix_ms(letter.last_at_ms),
                letter.id.clone(),
            ]
        })
        .collect();
    emit(&format_table(
        &[
            ("sku", Align::Left),
            ("location", Align::Left),
            ("value", Align::Right),
            ("attempts", Align::Right),
            ("refused with", Align::Left),
            ("last", Align::Left),
            ("id", Align::Left),
        ],
        &rows,
    ))?;
    more(&reply.next_page_token);
    Ok(())
}

pub(super) async fn replay(
    ctx: &CallContext,
    client: &mut ChannelServiceClient<Channel>,
    args: ReplayArgs,
) -> anyhow::Result<()> {
    let request = pb::ReplayChannelDeadLettersRequest {
        tenant: args.channel.tenant.tenant,
        channel: args.channel.channel,
        ids: args.ids,
    };
    let reply = ctx
        .call(request, None, |r| client.replay_channel_dead_letters(r))
        .await?;
    if ctx.json {
        return print_json(&reply);
    }
    emit(&format!(
        "replayed {}: each target's current value is pushed again\n",
        reply.replayed
    ))
}

pub(super) async fn drift(
    ctx: &CallContext,
    client: &mut ChannelServiceClient<Channel>,
    args: PageArgs,
) -> anyhow::Result<()> {
    let request = pb::ListChannelDriftRequest {
        tenant: args.channel.tenant.tenant,
        channel: args.channel.channel,
        page_size: args.page_size,
        page_token: args.page_token,
    };
    let reply = ctx
        .call(request, None, |r| client.list_channel_drift(r))
        .await?;
    if ctx.json {
        return print_json(&reply);
    }
    let rows: Vec<Vec<String>> = reply
        .drift
        .iter()
        .map(|drift| {
            vec![
                drift.sku.clone(),
                location_label(&drift.location),
                figure(drift.remote),
                figure(drift.believed),
                drift.desired.to_string(),
                format_unix_ms(drift.found_at_ms),
            ]
        })
        .collect();
    emit(&format_table(
        &[
            ("sku", Align::Left),
            ("location", Align::Left),
            ("channel showed", Align::Right),
            ("skuld believed", Align::Right),
            ("desired", Align::Right),
            ("found", Align::Left),
        ],
        &rows,
    ))?;
    more(&reply.next_page_token);
    Ok(())
}

pub(super) async fn reconcile(
    ctx: &CallContext,
    client: &mut ChannelServiceClient<Channel>,
    args: ChannelArgs,
) -> anyhow::Result<()> {
    let request = pb::ReconcileChannelRequest {
        tenant: args.tenant.tenant,
        channel: args.channel,
    };
    let reply = ctx
        .call(request, None, |r| client.reconcile_channel(r))
        .await?;
    if ctx.json {
        return print_json(&reply);
    }
    emit(&format!(
        "reconciliation requested at {}: every node reads its keys of the channel back; `skuld channels drift` lists what differed\n",
        format_unix_ms(reply.requested_at_ms)
    ))
}
