//! `skuld channels dead-letters|replay|drift|reconcile|webhook-exceptions`:
//! what the push worker and the inbound webhooks left for people, and
//! telling the worker to act.

use std::io::{self, Write};

use clap::Args;
use skuld_proto::v1 as pb;
use skuld_proto::v1::channel_service_client::ChannelServiceClient;
use tonic::transport::Channel;

use super::channels::ChannelArgs;
use super::{emit, fail, format_table, format_unix_ms, print_json, Align, CallContext};

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

#[derive(Args, Debug)]
pub struct SyncArgs {
    #[command(flatten)]
    pub channel: ChannelArgs,
    /// SKUs to push now (their current figures).
    pub skus: Vec<String>,
    /// A file of SKUs, one per line, sent 1,000 at a time.
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
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

pub(super) async fn webhook_exceptions(
    ctx: &CallContext,
    client: &mut ChannelServiceClient<Channel>,
    args: PageArgs,
) -> anyhow::Result<()> {
    let request = pb::ListChannelWebhookExceptionsRequest {
        tenant: args.channel.tenant.tenant,
        channel: args.channel.channel,
        page_size: args.page_size,
        page_token: args.page_token,
    };
    let reply = ctx
        .call(request, None, |r| client.list_channel_webhook_exceptions(r))
        .await?;
    if ctx.json {
        return print_json(&reply);
    }
    let rows: Vec<Vec<String>> = reply
        .exceptions
        .iter()
        .map(|exception| {
            vec![
                exception.code.clone(),
                exception.topic.clone(),
                exception.resource.clone(),
                exception.remote_ref.clone(),
                exception.owner.clone(),
                format_unix_ms(exception.recorded_at_ms),
                exception.detail.clone(),
            ]
        })
        .collect();
    emit(&format_table(
        &[
            ("code", Align::Left),
            ("topic", Align::Left),
            ("resource", Align::Left),
            ("channel's ref", Align::Left),
            ("owner", Align::Left),
            ("recorded", Align::Left),
            ("detail", Align::Left),
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

pub(super) async fn sync(
    ctx: &CallContext,
    client: &mut ChannelServiceClient<Channel>,
    args: SyncArgs,
) -> anyhow::Result<()> {
    let mut skus = args.skus;
    if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path)
            .map_err(|error| fail(format!("cannot read {}: {error}", path.display())))?;
        skus.extend(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(str::to_owned),
        );
    }
    if skus.is_empty() {
        return Err(fail("name SKUs, or a --file of them".to_owned()));
    }
    let mut queued = 0u64;
    let chunks: Vec<Vec<String>> = skus.chunks(1_000).map(<[String]>::to_vec).collect();
    let total = chunks.len();
    for (done, chunk) in chunks.into_iter().enumerate() {
        let request = pb::SyncChannelRequest {
            tenant: args.channel.tenant.tenant.clone(),
            channel: args.channel.channel.clone(),
            skus: chunk,
        };
        let reply = ctx.call(request, None, |r| client.sync_channel(r)).await?;
        queued += u64::from(reply.queued);
        if total > 1 && !ctx.json {
            let _ = writeln!(
                io::stderr(),
                "{}/{total} batches, {queued} SKUs queued",
                done + 1
            );
        }
    }
    if ctx.json {
        return print_json(&serde_json::json!({ "queued": queued }));
    }
    emit(&format!(
        "{queued} SKUs queued: each is pushed where the channel does not show its figure\n"
    ))
}
