//! `skuld orders ...`: one subcommand per `OrderService` RPC.

use clap::{Args, Subcommand};
use skuld_proto::v1 as pb;
use skuld_proto::v1::order_service_client::OrderServiceClient;
use tonic::transport::Channel;

use super::{emit, fail, format_table, print_json, Align, CallContext, IdempotencyKey};

#[derive(Subcommand, Debug)]
pub enum OrdersCommand {
    /// Hold every line of an order, or none.
    Reserve(ReserveArgs),
    /// Commit every hold of a held order.
    Commit(OrderArgs),
    /// Give back everything an order holds.
    Release(OrderArgs),
    /// Show an order: where each line is held, or why it was released.
    Show(ShowArgs),
    /// Move units of a SKU out of one location into another's incoming.
    Transfer(TransferArgs),
    /// Receive an in-transit transfer into its destination's available.
    ReceiveTransfer(TransferIdArgs),
    /// Show a transfer.
    ShowTransfer(TransferKeyArgs),
}

/// Names one transfer.
#[derive(Args, Debug, Clone)]
pub struct TransferKeyArgs {
    #[arg(long, env = "SKULD_TENANT", default_value = "default")]
    pub tenant: String,
    #[arg(long)]
    pub transfer_id: String,
}

impl TransferKeyArgs {
    fn key(&self) -> pb::TransferKey {
        pb::TransferKey {
            tenant: self.tenant.clone(),
            transfer_id: self.transfer_id.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct TransferIdArgs {
    #[command(flatten)]
    pub transfer: TransferKeyArgs,
    /// Idempotency key; a UUID v4 is generated (and printed) when absent.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

#[derive(Args, Debug)]
pub struct TransferArgs {
    #[command(flatten)]
    pub transfer: TransferIdArgs,
    #[arg(long)]
    pub sku: String,
    #[arg(long)]
    pub from: String,
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub quantity: i64,
}

/// Names one order.
#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    #[arg(long, env = "SKULD_TENANT", default_value = "default")]
    pub tenant: String,
    #[arg(long)]
    pub order_id: String,
}

impl ShowArgs {
    fn key(&self) -> pb::OrderKey {
        pb::OrderKey {
            tenant: self.tenant.clone(),
            order_id: self.order_id.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct OrderArgs {
    #[command(flatten)]
    pub order: ShowArgs,
    /// Idempotency key; a UUID v4 is generated (and printed) when absent.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

#[derive(Args, Debug)]
pub struct ReserveArgs {
    #[command(flatten)]
    pub order: OrderArgs,
    /// A line as LINE_ID:SKU:QUANTITY:LOC1[,LOC2...][:split]; candidates in
    /// preference order, `split` lets them share the quantity. Repeatable.
    #[arg(long = "line", required = true, value_parser = parse_line)]
    pub lines: Vec<pb::OrderLineSpec>,
    /// How long the holds last, in seconds (0: the positions' default).
    #[arg(long, default_value_t = 0)]
    pub ttl: i64,
    #[arg(long, default_value = "")]
    pub channel: String,
}

/// `LINE_ID:SKU:QUANTITY:LOC1,LOC2[:split]`.
pub fn parse_line(text: &str) -> Result<pb::OrderLineSpec, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (split, parts) = match parts.as_slice() {
        [rest @ .., "split"] if rest.len() == 4 => (true, rest),
        rest if rest.len() == 4 => (false, rest),
        _ => return Err("expected LINE_ID:SKU:QUANTITY:LOC1[,LOC2...][:split]".into()),
    };
    let quantity = parts[2]
        .parse::<i64>()
        .map_err(|error| format!("quantity {:?}: {error}", parts[2]))?;
    Ok(pb::OrderLineSpec {
        line_id: parts[0].to_owned(),
        sku: parts[1].to_owned(),
        quantity,
        locations: parts[3].split(',').map(str::to_owned).collect(),
        allow_split: split,
    })
}

fn status_name(status: i32) -> &'static str {
    match pb::OrderStatus::try_from(status) {
        Ok(pb::OrderStatus::Reserving) => "RESERVING",
        Ok(pb::OrderStatus::Held) => "HELD",
        Ok(pb::OrderStatus::Committing) => "COMMITTING",
        Ok(pb::OrderStatus::Committed) => "COMMITTED",
        Ok(pb::OrderStatus::Releasing) => "RELEASING",
        Ok(pb::OrderStatus::Released) => "RELEASED",
        _ => "UNKNOWN",
    }
}

fn hold_state(state: i32) -> &'static str {
    match pb::OrderHoldState::try_from(state) {
        Ok(pb::OrderHoldState::Held) => "held",
        Ok(pb::OrderHoldState::Committed) => "committed",
        Ok(pb::OrderHoldState::Released) => "released",
        _ => "unknown",
    }
}

fn shortfalls(list: &[pb::OrderShortfall]) -> String {
    list.iter()
        .map(|s| match s.available {
            Some(available) => format!("{}: {available} available", s.location),
            None => format!("{}: {}", s.location, s.reason),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn format_order(order: &pb::Order) -> String {
    let id = order.key.as_ref().map_or("", |key| key.order_id.as_str());
    let mut text = format!(
        "order {id}: {} (version {})\n",
        status_name(order.status),
        order.version
    );
    let mut rows = Vec::new();
    for line in &order.lines {
        let spec = line.line.clone().unwrap_or_default();
        for hold in &line.holds {
            rows.push(vec![
                spec.line_id.clone(),
                spec.sku.clone(),
                hold.location.clone(),
                hold.quantity.to_string(),
                hold_state(hold.state).to_owned(),
            ]);
        }
        if line.holds.is_empty() {
            rows.push(vec![
                spec.line_id.clone(),
                spec.sku.clone(),
                "-".into(),
                format!("0 of {}", spec.quantity),
                "-".into(),
            ]);
        }
    }
    text.push_str(&format_table(
        &[
            ("LINE", Align::Left),
            ("SKU", Align::Left),
            ("LOCATION", Align::Left),
            ("QUANTITY", Align::Right),
            ("STATE", Align::Left),
        ],
        &rows,
    ));
    if let Some(failure) = &order.failure {
        if failure.line_id.is_empty() {
            text.push_str(&format!("released: {}\n", failure.reason));
        } else {
            text.push_str(&format!(
                "line {} ({} x {}) could not be held: {}; {}\n",
                failure.line_id,
                failure.sku,
                failure.requested,
                failure.reason,
                shortfalls(&failure.shortfalls)
            ));
        }
    }
    text
}

fn transfer_status_name(status: i32) -> &'static str {
    match pb::TransferStatus::try_from(status) {
        Ok(pb::TransferStatus::Moving) => "MOVING",
        Ok(pb::TransferStatus::InTransit) => "IN_TRANSIT",
        Ok(pb::TransferStatus::Receiving) => "RECEIVING",
        Ok(pb::TransferStatus::Received) => "RECEIVED",
        Ok(pb::TransferStatus::Returning) => "RETURNING",
        Ok(pb::TransferStatus::NotTransferred) => "NOT_TRANSFERRED",
        _ => "UNKNOWN",
    }
}

pub fn format_transfer(transfer: &pb::Transfer) -> String {
    let id = transfer
        .key
        .as_ref()
        .map_or("", |key| key.transfer_id.as_str());
    let mut text = format!(
        "transfer {id}: {} (version {})\n{} x {}: {} -> {}\n",
        transfer_status_name(transfer.status),
        transfer.version,
        transfer.sku,
        transfer.quantity,
        transfer.from_location,
        transfer.to_location
    );
    if let Some(failure) = &transfer.failure {
        text.push_str(&format!(
            "{}; {}\n",
            failure.reason,
            shortfalls(&failure.shortfalls)
        ));
    }
    text
}

fn show(
    ctx: &CallContext,
    order: Option<&pb::Order>,
    replayed: bool,
    key: Option<&IdempotencyKey>,
    reply: &impl serde::Serialize,
) -> anyhow::Result<()> {
    show_text(ctx, order.map(format_order), "order", replayed, key, reply)
}

fn show_transfer(
    ctx: &CallContext,
    transfer: Option<&pb::Transfer>,
    replayed: bool,
    key: Option<&IdempotencyKey>,
    reply: &impl serde::Serialize,
) -> anyhow::Result<()> {
    let text = transfer.map(format_transfer);
    show_text(ctx, text, "transfer", replayed, key, reply)
}

fn show_text(
    ctx: &CallContext,
    text: Option<String>,
    what: &str,
    replayed: bool,
    key: Option<&IdempotencyKey>,
    reply: &impl serde::Serialize,
) -> anyhow::Result<()> {
    if ctx.json {
        return print_json(reply);
    }
    let Some(mut text) = text else {
        return Err(fail(format!("the reply carried no {what}")));
    };
    if replayed {
        text.push_str("\nreplayed: true (the stored reply of an earlier request with this key)\n");
    }
    if let Some(key) = key.filter(|key| key.generated) {
        text.push_str(&format!(
            "\nidempotency key: {} (generated; pass --idempotency-key to retry)\n",
            key.value
        ));
    }
    emit(&text)
}

pub(super) async fn run(
    ctx: &CallContext,
    channel: Channel,
    command: OrdersCommand,
) -> anyhow::Result<()> {
    let mut client = OrderServiceClient::new(channel);
    match command {
        OrdersCommand::Reserve(args) => {
            let key = IdempotencyKey::from_flag(args.order.idempotency_key.as_deref());
            let request = pb::ReserveOrderRequest {
                key: Some(args.order.order.key()),
                idempotency_key: key.value.clone(),
                lines: args.lines,
                ttl_seconds: args.ttl,
                channel: args.channel,
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.reserve_order(r))
                .await?;
            show(
                ctx,
                reply.order.as_ref(),
                reply.replayed,
                Some(&key),
                &reply,
            )
        }
        OrdersCommand::Commit(args) => {
            let key = IdempotencyKey::from_flag(args.idempotency_key.as_deref());
            let request = pb::CommitOrderRequest {
                key: Some(args.order.key()),
                idempotency_key: key.value.clone(),
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.commit_order(r))
                .await?;
            show(
                ctx,
                reply.order.as_ref(),
                reply.replayed,
                Some(&key),
                &reply,
            )
        }
        OrdersCommand::Release(args) => {
            let key = IdempotencyKey::from_flag(args.idempotency_key.as_deref());
            let request = pb::ReleaseOrderRequest {
                key: Some(args.order.key()),
                idempotency_key: key.value.clone(),
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.release_order(r))
                .await?;
            show(
                ctx,
                reply.order.as_ref(),
                reply.replayed,
                Some(&key),
                &reply,
            )
        }
        OrdersCommand::Show(args) => {
            let request = pb::GetOrderRequest {
                key: Some(args.key()),
            };
            let reply = ctx.call(request, None, |r| client.get_order(r)).await?;
            show(ctx, reply.order.as_ref(), false, None, &reply)
        }
        OrdersCommand::Transfer(args) => {
            let key = IdempotencyKey::from_flag(args.transfer.idempotency_key.as_deref());
            let request = pb::TransferStockRequest {
                key: Some(args.transfer.transfer.key()),
                idempotency_key: key.value.clone(),
                sku: args.sku,
                from_location: args.from,
                to_location: args.to,
                quantity: args.quantity,
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.transfer_stock(r))
                .await?;
            let transfer = reply.transfer.as_ref();
            show_transfer(ctx, transfer, reply.replayed, Some(&key), &reply)
        }
        OrdersCommand::ReceiveTransfer(args) => {
            let key = IdempotencyKey::from_flag(args.idempotency_key.as_deref());
            let request = pb::ReceiveTransferRequest {
                key: Some(args.transfer.key()),
                idempotency_key: key.value.clone(),
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.receive_transfer(r))
                .await?;
            let transfer = reply.transfer.as_ref();
            show_transfer(ctx, transfer, reply.replayed, Some(&key), &reply)
        }
        OrdersCommand::ShowTransfer(args) => {
            let request = pb::GetTransferRequest {
                key: Some(args.key()),
            };
            let reply = ctx.call(request, None, |r| client.get_transfer(r)).await?;
            show_transfer(ctx, reply.transfer.as_ref(), false, None, &reply)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_candidates_and_split() {
        let line = parse_line("1:SKU-1:3:DC1,DC2:split").unwrap_or_default();
        assert_eq!(line.locations, vec!["DC1", "DC2"]);
        assert!(line.allow_split && line.quantity == 3 && line.sku == "SKU-1");
        assert!(!parse_line("1:SKU-1:3:DC1").unwrap_or_default().allow_split);
        assert!(parse_line("1:SKU-1:x:DC1").is_err());
        assert!(parse_line("1:SKU-1").is_err());
    }
}
