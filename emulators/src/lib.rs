//! Loopback emulators of the four sales channels' public inventory APIs, written
//! from `CHANNELS.md` (sections A-D), for connector tests and for a person
//! trying skuld out. Each emulator keeps its own remote state, records every
//! request, counts the requests it refused for a rate limit (budget
//! violations), and takes injected faults through `/_control/...` routes and
//! the Rust handles here.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let emulators = skuld_emulators::Emulators::start(Default::default()).await?;
//! let shopify = emulators.shopify();
//! shopify.seed_level(1, 10, skuld_emulators::shopify::Levels::with_available(5));
//! println!("{}", shopify.graphql_url("2026-04"));
//! assert_eq!(emulators.budget_violations(), 0);
//! emulators.shutdown().await;
//! # Ok(()) }
//! ```

// Handlers refuse a request with the channel's own HTTP response (`Err(Response)`),
// built once on the error path; boxing it would only add an allocation there.
#![allow(clippy::result_large_err)]
pub mod adobe;
pub mod amazon;
pub mod bucket;
pub mod clock;
mod control;
pub mod faults;
pub mod recorder;
pub mod sap;
mod server;
pub mod shopify;
pub mod walmart;

pub use faults::{FaultPlan, Faults};
pub use recorder::{Counters, RecordedRequest, Recorder};
pub use server::CONTROL_PREFIX;

use server::RunningServer;

/// Settings for all four emulators; `Default` gives free ports and the
/// documented defaults.
#[derive(Debug, Clone, Default)]
pub struct EmulatorsConfig {
    pub shopify: shopify::ShopifyConfig,
    pub amazon: amazon::AmazonConfig,
    pub walmart: walmart::WalmartConfig,
    pub adobe: adobe::AdobeConfig,
    pub sap: sap::SapConfig,
}

/// The running emulators. Dropping the handle leaves them running until the
/// runtime ends; `shutdown` stops them cleanly.
pub struct Emulators {
    shopify: shopify::ShopifyEmulator,
    amazon: amazon::AmazonEmulator,
    walmart: walmart::WalmartEmulator,
    adobe: adobe::AdobeEmulator,
    sap: sap::SapEmulator,
    servers: Vec<RunningServer>,
}

impl Emulators {
    /// Starts every emulator on 127.0.0.1.
    pub async fn start(config: EmulatorsConfig) -> std::io::Result<Self> {
        let mut servers = Vec::new();
        let (shopify, server) = shopify::start(config.shopify).await?;
        servers.push(server);
        let (amazon, server) = amazon::start(config.amazon).await?;
        servers.push(server);
        let (walmart, server) = walmart::start(config.walmart).await?;
        servers.push(server);
        let (adobe, server) = adobe::start(config.adobe).await?;
        servers.push(server);
        let (sap, server) = sap::start(config.sap).await?;
        servers.push(server);
        Ok(Self {
            shopify,
            amazon,
            walmart,
            adobe,
            sap,
            servers,
        })
    }

    pub fn shopify(&self) -> &shopify::ShopifyEmulator {
        &self.shopify
    }

    pub fn amazon(&self) -> &amazon::AmazonEmulator {
        &self.amazon
    }

    pub fn walmart(&self) -> &walmart::WalmartEmulator {
        &self.walmart
    }

    pub fn adobe(&self) -> &adobe::AdobeEmulator {
        &self.adobe
    }

    /// The SAP S/4HANA credit memo emulator (ERP.md).
    pub fn sap(&self) -> &sap::SapEmulator {
        &self.sap
    }

    /// Requests refused for a rate limit, summed over the emulators.
    pub fn budget_violations(&self) -> u64 {
        self.shopify.budget_violations()
            + self.amazon.budget_violations()
            + self.walmart.budget_violations()
            + self.adobe.budget_violations()
    }

    /// Stops every server and waits for them.
    pub async fn shutdown(self) {
        for server in self.servers {
            server.shutdown().await;
        }
    }
}
