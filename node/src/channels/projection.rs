//! The availability projection's input: a sink over the event stream that
//! marks, for every position change, the push keys of the channels selling
//! from that location as dirty.
//!
//! A channel's quantity is state, not events: what a key should show is a
//! function of the network's positions and the channel's definition, which
//! the worker computes when it pushes. So the projection stores no figures,
//! only which keys may have changed, in one durable write per window of
//! events and before the sink's cursor moves past them (a crash between the
//! two marks the window again: at least once, and a mark is idempotent).
//! Rebuilding from the event stream marks the same keys, and the worker
//! computes the same values from the positions.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use skuld_actors::channel::ChannelKind;
use skuld_actors::runtime::published::PublishedEvent;
use skuld_actors::PositionKey;
use skuld_cluster::Store;
use tokio_util::sync::CancellationToken;

use super::catalog::Catalog;
use super::keys::{encode_mark, DirtyMark, PushKey, DIRTY_KIND};
use super::marks::MarkFeed;
use crate::sinks::{Delivery, Sink, Stopped};

/// The sink's name: its cursors are `channels/<shard>`.
pub const PROJECTION_SINK: &str = "channels";

pub struct Projection {
    pub store: Arc<dyn Store>,
    pub catalog: Arc<Catalog>,
    pub shard_count: u32,
    /// Each window's marks, once stored, for the local worker.
    pub marked: Arc<MarkFeed>,
}

impl Projection {
    /// The dirty records one window of events makes: `(record id, key)`,
    /// each key once.
    fn marks(&self, by_key: &[Vec<Delivery>]) -> BTreeMap<String, DirtyMark> {
        let mut marks = BTreeMap::new();
        for events in by_key {
            let (Some(first), Some(last)) = (events.first(), events.last()) else {
                continue;
            };
            let Some(position) = PositionKey::decode(&first.entity) else {
                continue;
            };
            let at = format!("{}:{}", last.shard, last.seq);
            // A webhook channel is not pushed (GetChannelAvailability
            // answers it); only the connectors' channels have keys.
            for stored in self
                .catalog
                .selling_from(&position.tenant, &position.location)
                .into_iter()
                .filter(|stored| stored.channel.kind != ChannelKind::Webhook)
            {
                let key = PushKey::new(&position.tenant, &stored.channel.id, &position.sku);
                marks.insert(
                    key.record_id(self.shard_count),
                    DirtyMark {
                        key,
                        at: at.clone(),
                    },
                );
            }
        }
        marks
    }
}

#[async_trait]
impl Sink for Projection {
    fn name(&self) -> String {
        PROJECTION_SINK.to_owned()
    }

    fn wants(&self, event: &PublishedEvent) -> bool {
        event.aggregate_kind == "position"
    }

    async fn deliver(
        &self,
        events: Vec<Delivery>,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        self.deliver_window(vec![events], stop).await
    }

    async fn deliver_window(
        &self,
        by_key: Vec<Vec<Delivery>>,
        _stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let marks = self.marks(&by_key);
        if marks.is_empty() {
            return Ok(());
        }
        let count = marks.len();
        let records: Vec<(String, Vec<u8>)> = marks
            .into_iter()
            .map(|(id, mark)| (id, encode_mark(&mark)))
            .collect();
        self.store.put_records(DIRTY_KIND, records.clone()).await?;
        metrics::counter!("skuld_channel_keys_marked_total").increment(count as u64);
        self.marked.offer(&records);
        Ok(())
    }
}
