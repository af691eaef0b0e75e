//! `skuld webhooks ...`: endpoints, secrets and dead letters.

use std::io::{self, Write};

use clap::{Args, Subcommand};
use skuld_proto::v1 as pb;
use skuld_proto::v1::webhook_service_client::WebhookServiceClient;
use tonic::transport::Channel;

use super::{emit, format_table, format_unix_ms, print_json, Align, CallContext};

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// Endpoints (every tenant's, or one's).
    List(ListArgs),
    /// Add an endpoint; prints its signing secret once.
    Add(AddArgs),
    /// Remove an endpoint (its dead letters stay listable).
    Remove(IdArgs),
    /// A new signing secret; the old one keeps signing for 24 hours.
    RotateSecret(IdArgs),
    /// Events given up on after the retry horizon.
    DeadLetters(DeadLettersArgs),
    /// Send dead letters again, with their original webhook-id.
    Replay(ReplayArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    #[arg(long, env = "SKULD_TENANT", default_value = "default")]
    pub tenant: String,
    /// http:// URL the events are POSTed to.
    #[arg(long)]
    pub url: String,
    /// Only event types starting with this (repeatable).
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Deliveries per second at most (10 when absent).
    #[arg(long)]
    pub rate_per_second: Option<u32>,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// The endpoint's id (wh_...).
    pub id: String,
}

#[derive(Args, Debug)]
pub struct DeadLettersArgs {
    pub id: String,
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    #[arg(long, default_value = "")]
    pub page_token: String,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    pub id: String,
    /// Only these events (repeatable); all of the endpoint's when absent.
    #[arg(long = "event")]
    pub events: Vec<String>,
}

fn webhook_rows(webhooks: &[pb::Webhook]) -> String {
    let rows: Vec<Vec<String>> = webhooks
        .iter()
        .map(|webhook| {
            vec![
                webhook.id.clone(),
                webhook.tenant.clone(),
                webhook.url.clone(),
                if webhook.type_prefixes.is_empty() {
                    "*".into()
                } else {
                    webhook.type_prefixes.join(",")
                },
                if webhook.enabled {
                    "enabled".into()
                } else {
                    format!("disabled ({})", webhook.disabled_reason)
                },
            ]
        })
        .collect();
    format_table(
        &[
            ("id", Align::Left),
            ("tenant", Align::Left),
            ("url", Align::Left),
            ("types", Align::Left),
            ("state", Align::Left),
        ],
        &rows,
    )
}

pub(super) async fn run(
    ctx: &CallContext,
    channel: Channel,
    command: WebhooksCommand,
) -> anyhow::Result<()> {
    let mut client = WebhookServiceClient::new(channel);
    match command {
        WebhooksCommand::List(args) => {
            let request = pb::ListWebhooksRequest {
                tenant: args.tenant.unwrap_or_default(),
            };
            let reply = ctx.call(request, None, |r| client.list_webhooks(r)).await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(&webhook_rows(&reply.webhooks))
        }
        WebhooksCommand::Add(args) => {
            let request = pb::AddWebhookRequest {
                tenant: args.tenant,
                url: args.url,
                type_prefixes: args.types,
                rate_per_second: args.rate_per_second.unwrap_or(0),
                secret: String::new(),
            };
            let reply = ctx.call(request, None, |r| client.add_webhook(r)).await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(&webhook_rows(reply.webhook.as_slice()))?;
            // Shown once: the node keeps it, nobody can read it back.
            let _ = writeln!(
                io::stderr(),
                "signing secret (shown once): {}",
                reply.secret
            );
            Ok(())
        }
        WebhooksCommand::Remove(args) => {
            let request = pb::RemoveWebhookRequest {
                id: args.id.clone(),
            };
            let reply = ctx
                .call(request, None, |r| client.remove_webhook(r))
                .await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(&format!("removed {}\n", args.id))
        }
        WebhooksCommand::RotateSecret(args) => {
            let request = pb::RotateWebhookSecretRequest { id: args.id };
            let reply = ctx
                .call(request, None, |r| client.rotate_webhook_secret(r))
                .await?;
            if ctx.json {
                return print_json(&reply);
            }
            let _ = writeln!(
                io::stderr(),
                "new signing secret (shown once; the previous one signs too for 24 h): {}",
                reply.secret
            );
            Ok(())
        }
        WebhooksCommand::DeadLetters(args) => {
            let request = pb::ListDeadLettersRequest {
                webhook_id: args.id,
                page_size: args.page_size,
                page_token: args.page_token,
            };
            let reply = ctx
                .call(request, None, |r| client.list_dead_letters(r))
                .await?;
            if ctx.json {
                return print_json(&reply);
            }
            let rows: Vec<Vec<String>> = reply
                .dead_letters
                .iter()
                .map(|letter| {
                    vec![
                        letter.event_id.clone(),
                        letter.event_type.clone(),
                        letter.aggregate_key.clone(),
                        letter.attempts.to_string(),
                        letter.last_error.clone(),
                        format_unix_ms(letter.dead_at_ms),
                    ]
                })
                .collect();
            emit(&format_table(
                &[
                    ("event", Align::Left),
                    ("type", Align::Left),
                    ("key", Align::Left),
                    ("attempts", Align::Right),
                    ("last error", Align::Left),
                    ("dead since", Align::Left),
                ],
                &rows,
            ))?;
            if !reply.next_page_token.is_empty() {
                let _ = writeln!(io::stderr(), "more: --page-token {}", reply.next_page_token);
            }
            Ok(())
        }
        WebhooksCommand::Replay(args) => {
            let request = pb::ReplayDeadLettersRequest {
                webhook_id: args.id,
                event_ids: args.events,
            };
            let reply = ctx
                .call(request, None, |r| client.replay_dead_letters(r))
                .await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(&format!(
                "delivered {}, failed {} (failed ones stay dead letters)\n",
                reply.delivered, reply.failed
            ))
        }
    }
}
