//! `skuld events ...`: follow the event stream and read one aggregate's
//! history.

use std::io::{self, Write};

use clap::{Args, Subcommand};
use skuld_proto::v1 as pb;
use skuld_proto::v1::event_service_client::EventServiceClient;
use tonic::transport::Channel;

use super::{
    emit, fail, format_status, format_table, format_unix_ms, print_json, Align, CallContext,
};

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Follow events as they are committed (Ctrl-C stops and prints the resume token).
    Tail(TailArgs),
    /// One aggregate's retained events, oldest first.
    History(HistoryArgs),
}

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Where to start: `start` (every retained event), `now`, or a resume token printed earlier.
    #[arg(long, default_value = "now")]
    pub from: String,
    /// Only event types starting with this (repeatable), e.g. skuld.inventory.reservation.
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Only this tenant's events.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this aggregate: tenant/sku@location or tenant/return_id.
    #[arg(long)]
    pub key: Option<String>,
    /// Stop after this many events (and print the resume token).
    #[arg(long)]
    pub count: Option<u64>,
    /// Name for the node's lag metrics.
    #[arg(long, default_value = "cli")]
    pub subscriber: String,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// tenant/sku@location (a position) or tenant/return_id (a return).
    pub key: String,
    /// Events per page (up to 1000).
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    /// The token the previous page printed.
    #[arg(long, default_value = "")]
    pub page_token: String,
}

/// An aggregate key as the events name it.
fn aggregate(key: &str) -> anyhow::Result<pb::get_history_request::Aggregate> {
    let (tenant, rest) = key.split_once('/').ok_or_else(|| {
        fail(format!(
            "{key:?}: expected tenant/sku@location or tenant/return_id"
        ))
    })?;
    Ok(match rest.rsplit_once('@') {
        Some((sku, location)) => pb::get_history_request::Aggregate::Position(pb::PositionKey {
            tenant: tenant.into(),
            sku: sku.into(),
            location: location.into(),
        }),
        None => pb::get_history_request::Aggregate::ReturnCase(pb::ReturnKey {
            tenant: tenant.into(),
            return_id: rest.into(),
        }),
    })
}

fn event_rows(events: &[pb::Event]) -> Vec<Vec<String>> {
    events
        .iter()
        .map(|event| {
            vec![
                format!("{}/{}", event.shard, event.shard_sequence),
                format_unix_ms(event.recorded_at_ms),
                event.r#type.clone(),
                event.aggregate_key.clone(),
                event.aggregate_version.to_string(),
                event.causation_id.clone(),
            ]
        })
        .collect()
}

const COLUMNS: [(&str, Align); 6] = [
    ("shard/seq", Align::Left),
    ("recorded", Align::Left),
    ("type", Align::Left),
    ("key", Align::Left),
    ("version", Align::Right),
    ("caused by", Align::Left),
];

pub(super) async fn run(
    ctx: &CallContext,
    channel: Channel,
    command: EventsCommand,
) -> anyhow::Result<()> {
    let mut client = EventServiceClient::new(channel);
    match command {
        EventsCommand::History(args) => {
            let request = pb::GetHistoryRequest {
                aggregate: Some(aggregate(&args.key)?),
                page_size: args.page_size,
                page_token: args.page_token,
            };
            let reply = ctx.call(request, None, |r| client.get_history(r)).await?;
            if !reply.next_page_token.is_empty() && !ctx.json {
                let _ = writeln!(io::stderr(), "more: --page-token {}", reply.next_page_token);
            }
            if ctx.json {
                return print_json(&reply);
            }
            if reply.events.is_empty() {
                return emit(&format!("{}: no retained events\n", args.key));
            }
            emit(&format_table(&COLUMNS, &event_rows(&reply.events)))
        }
        EventsCommand::Tail(args) => tail(ctx, &mut client, args).await,
    }
}

async fn tail(
    ctx: &CallContext,
    client: &mut EventServiceClient<Channel>,
    args: TailArgs,
) -> anyhow::Result<()> {
    let from = match args.from.as_str() {
        "start" => pb::subscribe_request::From::Start(true),
        "now" => pb::subscribe_request::From::Now(true),
        token => pb::subscribe_request::From::After(token.to_owned()),
    };
    let request = pb::SubscribeRequest {
        from: Some(from),
        filter: Some(pb::EventFilter {
            type_prefixes: args.types,
            tenant: args.tenant.unwrap_or_default(),
            aggregate_key: args.key.unwrap_or_default(),
        }),
        subscriber: args.subscriber,
        // With a count, one event per message: the token printed at the
        // end then covers exactly the events shown.
        max_batch: u32::from(args.count.is_some()),
    };
    // No deadline: a tail runs until stopped.
    let request = ctx.request(request);
    let mut stream = client
        .subscribe(request)
        .await
        .map_err(|status| fail(format_status(&status, None)))?
        .into_inner();
    let mut token = String::new();
    let mut shown = 0u64;
    let mut header = !ctx.json;
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            _ = tokio::signal::ctrl_c() => break,
        };
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                print_token(&token);
                return Err(fail(format_status(&status, None)));
            }
        };
        let events = message.events;
        shown += events.len() as u64;
        if !events.is_empty() {
            if ctx.json {
                let line = pb::SubscribeResponse {
                    events,
                    resume_token: message.resume_token.clone(),
                };
                let mut text = serde_json::to_string(&line)?;
                text.push('\n');
                emit(&text)?;
            } else {
                let table = format_table(&COLUMNS, &event_rows(&events));
                // The header once, then rows only.
                let body = if header {
                    header = false;
                    table
                } else {
                    table
                        .lines()
                        .skip(1)
                        .map(|line| format!("{line}\n"))
                        .collect()
                };
                emit(&body)?;
            }
        }
        token = message.resume_token;
        if args.count.is_some_and(|count| shown >= count) {
            break;
        }
    }
    print_token(&token);
    Ok(())
}

/// The token a person passes to `--from` to continue; on stderr, so stdout
/// stays the events alone.
fn print_token(token: &str) {
    if !token.is_empty() {
        let _ = writeln!(io::stderr(), "resume token: {token}");
    }
}
