//! The channel definitions as the node's channel tasks see them: every
//! channel of every tenant, read from the store's records and read again at
//! every scan of the push worker (its poll interval), so a definition made
//! on any node reaches every node's projection and worker within that time.

use std::sync::Arc;

use arc_swap::ArcSwap;
use skuld_actors::channel::Channel;
use skuld_cluster::{Store, StoreError};

use super::definitions::{self, StoredChannel};

pub struct Catalog {
    store: Arc<dyn Store>,
    channels: ArcSwap<Vec<StoredChannel>>,
}

impl Catalog {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Catalog {
            store,
            channels: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// Reads the definitions again; on a failure the last ones stay.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let channels = definitions::all_channels(self.store.as_ref()).await?;
        self.channels.store(Arc::new(channels));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.channels.load().is_empty()
    }

    /// Every channel, as last read.
    pub fn all(&self) -> Arc<Vec<StoredChannel>> {
        self.channels.load_full()
    }

    pub fn get(&self, tenant: &str, channel: &str) -> Option<StoredChannel> {
        self.channels
            .load()
            .iter()
            .find(|stored| stored.channel.tenant == tenant && stored.channel.id == channel)
            .cloned()
    }

    /// The channels of `tenant` that sell from `location`.
    pub fn selling_from(&self, tenant: &str, location: &str) -> Vec<StoredChannel> {
        self.channels
            .load()
            .iter()
            .filter(|stored| stored.channel.tenant == tenant && stored.channel.sells_from(location))
            .cloned()
            .collect()
    }

    /// Every channel of `tenant`: the peers an allocation share is split
    /// with.
    pub fn of_tenant(&self, tenant: &str) -> Vec<Channel> {
        self.channels
            .load()
            .iter()
            .filter(|stored| stored.channel.tenant == tenant)
            .map(|stored| stored.channel.clone())
            .collect()
    }
}
