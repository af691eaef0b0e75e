//! Reading a node's event stream in tests: subscribe, take what comes until
//! the stream is quiet, and check the order the API promises.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, Context as _};
use skuld_proto::v1 as pb;
use skuld_proto::v1::event_service_client::EventServiceClient;
use tonic::transport::Channel;

/// Where a subscription starts.
#[derive(Debug, Clone)]
pub enum From {
    Start,
    Now,
    After(String),
}

impl From {
    fn request(&self) -> pb::subscribe_request::From {
        match self {
            From::Start => pb::subscribe_request::From::Start(true),
            From::Now => pb::subscribe_request::From::Now(true),
            From::After(token) => pb::subscribe_request::From::After(token.clone()),
        }
    }
}

/// What one subscription delivered: its events and the last token.
#[derive(Debug, Default)]
pub struct Delivered {
    pub events: Vec<pb::Event>,
    pub token: Option<String>,
}

/// Subscribes and reads messages until `max_messages` arrived or none came
/// for `quiet`. The stream is dropped afterwards (a cut subscriber).
pub async fn read(
    channel: Channel,
    from: From,
    filter: pb::EventFilter,
    max_batch: u32,
    max_messages: usize,
    quiet: Duration,
) -> anyhow::Result<Delivered> {
    let mut client = EventServiceClient::new(channel);
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            from: Some(from.request()),
            filter: Some(filter),
            subscriber: "test".into(),
            max_batch,
        })
        .await?
        .into_inner();
    let mut delivered = Delivered::default();
    for _ in 0..max_messages {
        match tokio::time::timeout(quiet, stream.message()).await {
            Err(_) => break,
            Ok(message) => match message? {
                Some(message) => {
                    delivered.events.extend(message.events);
                    delivered.token = Some(message.resume_token);
                }
                None => break,
            },
        }
    }
    Ok(delivered)
}

/// Everything from `from` until the stream is quiet for `quiet`.
pub async fn read_all(channel: Channel, from: From, quiet: Duration) -> anyhow::Result<Delivered> {
    read(
        channel,
        from,
        pb::EventFilter::default(),
        0,
        usize::MAX,
        quiet,
    )
    .await
}

/// Checks the promised order of a complete delivery: each event once, every
/// shard's sequence 1, 2, 3, ... from its first delivered event without a
/// gap, and every aggregate's (version, index) increasing.
pub fn check_order(events: &[pb::Event]) -> anyhow::Result<()> {
    let mut ids = BTreeSet::new();
    let mut shards: BTreeMap<u32, u64> = BTreeMap::new();
    let mut aggregates: BTreeMap<&str, (u64, u32)> = BTreeMap::new();
    for event in events {
        if !ids.insert(event.id.as_str()) {
            bail!("event {} delivered twice", event.id);
        }
        if let Some(previous) = shards.insert(event.shard, event.shard_sequence) {
            if event.shard_sequence != previous + 1 {
                bail!(
                    "shard {}: sequence {} after {}",
                    event.shard,
                    event.shard_sequence,
                    previous
                );
            }
        }
        let place = (event.aggregate_version, event.index);
        if let Some(previous) = aggregates.insert(event.aggregate_key.as_str(), place) {
            if place <= previous {
                bail!(
                    "{}: event {:?} after {:?}",
                    event.aggregate_key,
                    place,
                    previous
                );
            }
        }
    }
    Ok(())
}

/// A position's retained events, oldest first, page after page.
pub async fn history(channel: Channel, key: &pb::PositionKey) -> anyhow::Result<Vec<pb::Event>> {
    let mut client = EventServiceClient::new(channel);
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .get_history(pb::GetHistoryRequest {
                aggregate: Some(pb::get_history_request::Aggregate::Position(key.clone())),
                page_size: 1_000,
                page_token,
            })
            .await
            .context("GetHistory")?
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return Ok(events);
        }
        page_token = page.next_page_token;
    }
}
