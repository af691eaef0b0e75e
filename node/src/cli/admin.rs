//! `skuld status | members | shards | drain`: operating a cluster.

use std::collections::BTreeMap;

use clap::Args;
use skuld_proto::v1 as pb;
use skuld_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;

use super::{emit, format_fields, format_table, format_unix_ms, print_json, Align, CallContext};

/// Flags of `shards`.
#[derive(Args, Debug)]
pub struct ShardsArgs {
    /// Only the shards of this node.
    #[arg(long)]
    pub node: Option<String>,
    /// One line per owner (shard counts) instead of one per shard.
    #[arg(long)]
    pub summary: bool,
}

/// Flags of `drain` and `undrain`.
#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The node whose shards move to the others (drain), or that takes its
    /// share again (undrain).
    pub node_id: String,
}

pub(super) async fn status(ctx: &CallContext, channel: Channel) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(channel);
    let reply = ctx
        .call(pb::NodeStatusRequest {}, None, |r| client.node_status(r))
        .await?;
    if ctx.json {
        return print_json(&reply);
    }
    let mut fields = vec![
        ("node", reply.node_id.clone()),
        ("mode", reply.mode.clone()),
        ("version", reply.version.clone()),
        ("ready", reply.ready.to_string()),
        (
            "shards",
            format!(
                "{} of {} served here",
                reply.shards_served, reply.shard_count
            ),
        ),
        ("in flight", reply.in_flight.to_string()),
        ("actors", reply.active_actors.to_string()),
    ];
    if reply.mode == "cluster" {
        fields.push((
            "lease",
            format!("confirmed {} ms ago", reply.lease_confirmed_ms_ago),
        ));
    }
    emit(&format_fields(&fields))
}

pub(super) async fn members(ctx: &CallContext, channel: Channel) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(channel);
    let reply = ctx
        .call(pb::ListMembersRequest {}, None, |r| client.list_members(r))
        .await?;
    if ctx.json {
        return print_json(&reply);
    }
    let rows: Vec<Vec<String>> = reply
        .members
        .iter()
        .map(|member| {
            let state = if member.drain_requested && member.state == "active" {
                "drain requested".to_owned()
            } else if !member.store_healthy && member.state == "active" {
                "store failing".to_owned()
            } else {
                member.state.clone()
            };
            vec![
                member.node_id.clone(),
                state,
                member.shards_owned.to_string(),
                member.endpoint.clone(),
                member.version.clone(),
                format_unix_ms(member.started_at_ms),
            ]
        })
        .collect();
    emit(&format_table(
        &[
            ("NODE", Align::Left),
            ("STATE", Align::Left),
            ("SHARDS", Align::Right),
            ("ENDPOINT", Align::Left),
            ("VERSION", Align::Left),
            ("STARTED", Align::Left),
        ],
        &rows,
    ))
}

pub(super) async fn shards(
    ctx: &CallContext,
    channel: Channel,
    args: ShardsArgs,
) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(channel);
    let mut reply = ctx
        .call(pb::ListShardsRequest {}, None, |r| client.list_shards(r))
        .await?;
    if let Some(node) = &args.node {
        reply.shards.retain(|shard| &shard.owner == node);
    }
    if ctx.json {
        return print_json(&reply);
    }
    if args.summary {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for shard in &reply.shards {
            let owner = if shard.owner.is_empty() {
                "(moving)"
            } else {
                shard.owner.as_str()
            };
            *counts.entry(owner).or_default() += 1;
        }
        let rows: Vec<Vec<String>> = counts
            .into_iter()
            .map(|(owner, count)| vec![owner.to_owned(), count.to_string()])
            .collect();
        return emit(&format_table(
            &[("OWNER", Align::Left), ("SHARDS", Align::Right)],
            &rows,
        ));
    }
    let rows: Vec<Vec<String>> = reply
        .shards
        .iter()
        .map(|shard| {
            vec![
                shard.shard.to_string(),
                if shard.owner.is_empty() {
                    "(moving)".to_owned()
                } else {
                    shard.owner.clone()
                },
                shard.epoch.to_string(),
            ]
        })
        .collect();
    emit(&format_table(
        &[
            ("SHARD", Align::Right),
            ("OWNER", Align::Left),
            ("EPOCH", Align::Right),
        ],
        &rows,
    ))
}

pub(super) async fn drain(
    ctx: &CallContext,
    channel: Channel,
    args: DrainArgs,
) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(channel);
    let request = pb::DrainNodeRequest {
        node_id: args.node_id.clone(),
    };
    let reply = ctx.call(request, None, |r| client.drain_node(r)).await?;
    if ctx.json {
        return print_json(&reply);
    }
    emit(&format!(
        "drain of {} requested: its shards move to the other nodes (watch `skuld members`); a restart of {} clears it\n",
        args.node_id, args.node_id
    ))
}

pub(super) async fn undrain(
    ctx: &CallContext,
    channel: Channel,
    args: DrainArgs,
) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(channel);
    let request = pb::UndrainNodeRequest {
        node_id: args.node_id.clone(),
    };
    let reply = ctx.call(request, None, |r| client.undrain_node(r)).await?;
    if ctx.json {
        return print_json(&reply);
    }
    emit(&if reply.was_drained {
        format!(
            "drain of {} withdrawn: it takes its share of shards again (watch `skuld members`)\n",
            args.node_id
        )
    } else {
        format!(
            "no drain of {} was requested; nothing changed\n",
            args.node_id
        )
    })
}
