//! `skuld-emulators`: starts the four channel emulators on loopback, prints
//! their base URLs and the credentials to use, and runs until Ctrl-C.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::json;
use skuld_emulators::shopify::{Levels, Plan};
use skuld_emulators::{Emulators, EmulatorsConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PlanArg {
    Standard,
    Advanced,
    Plus,
    CommerceComponents,
}

#[derive(Debug, Parser)]
#[command(
    name = "skuld-emulators",
    about = "Loopback emulators of the Shopify, Amazon, Walmart and Adobe Commerce inventory APIs and of SAP S/4HANA credit memo requests"
)]
struct Args {
    /// Shopify port (0: a free port).
    #[arg(long, env = "SKULD_EMULATOR_SHOPIFY_PORT", default_value_t = 0)]
    shopify_port: u16,
    #[arg(long, env = "SKULD_EMULATOR_AMAZON_PORT", default_value_t = 0)]
    amazon_port: u16,
    #[arg(long, env = "SKULD_EMULATOR_WALMART_PORT", default_value_t = 0)]
    walmart_port: u16,
    #[arg(long, env = "SKULD_EMULATOR_ADOBE_PORT", default_value_t = 0)]
    adobe_port: u16,
    /// SAP S/4HANA (credit memo requests, ERP.md) port (0: a free port).
    #[arg(long, env = "SKULD_EMULATOR_SAP_PORT", default_value_t = 0)]
    sap_port: u16,
    /// Shopify store plan: sets the cost bucket's restore rate (CHANNELS.md A.4).
    #[arg(long, value_enum, default_value_t = PlanArg::Standard)]
    shopify_plan: PlanArg,
    /// HTTP status of a Shopify THROTTLED answer (unconfirmed: 200 or 429).
    #[arg(long, default_value_t = 200)]
    shopify_throttled_status: u16,
    /// Where Shopify webhooks (orders/create, inventory_levels/update) go.
    #[arg(long)]
    shopify_webhook_url: Option<String>,
    /// Delay between an Amazon ACCEPTED patch and its apply.
    #[arg(long, default_value_t = 2000)]
    amazon_apply_delay_ms: u64,
    /// How long an Amazon feed stays IN_PROGRESS.
    #[arg(long, default_value_t = 5000)]
    amazon_feed_processing_ms: u64,
    /// Walmart inventory API budget per minute (unconfirmed: 200).
    #[arg(long, default_value_t = 200.0)]
    walmart_inventory_per_minute: f64,
    /// How long a Walmart feed stays INPROGRESS.
    #[arg(long, default_value_t = 2000)]
    walmart_feed_processing_ms: u64,
    /// Start empty instead of with one demo SKU on every channel.
    #[arg(long)]
    no_seed: bool,
    /// Print the URLs and credentials as one JSON object.
    #[arg(long)]
    json: bool,
}

fn config(args: &Args) -> EmulatorsConfig {
    let mut config = EmulatorsConfig::default();
    config.shopify.port = args.shopify_port;
    config.shopify.plan = match args.shopify_plan {
        PlanArg::Standard => Plan::Standard,
        PlanArg::Advanced => Plan::Advanced,
        PlanArg::Plus => Plan::Plus,
        PlanArg::CommerceComponents => Plan::CommerceComponents,
    };
    config.shopify.throttled_http_status = args.shopify_throttled_status;
    config.shopify.webhooks.url = args.shopify_webhook_url.clone();
    config.amazon.port = args.amazon_port;
    config.amazon.apply_delay = Duration::from_millis(args.amazon_apply_delay_ms);
    config.amazon.feed_processing_time = Duration::from_millis(args.amazon_feed_processing_ms);
    config.walmart.port = args.walmart_port;
    config.walmart.inventory_budget.tokens = args.walmart_inventory_per_minute;
    config.walmart.feed_processing_time = Duration::from_millis(args.walmart_feed_processing_ms);
    config.adobe.port = args.adobe_port;
    config.sap.port = args.sap_port;
    config
}

fn seed(emulators: &Emulators) {
    emulators.shopify().add_location(1, "Main warehouse");
    emulators.shopify().add_item(1001, "SKU-1");
    emulators
        .shopify()
        .seed_level(1001, 1, Levels::with_available(10));
    emulators.amazon().add_listing("SKU-1", "PRODUCT", 10);
    emulators.walmart().add_item("SKU-1", 10);
    emulators
        .adobe()
        .set_source_item("SKU-1", "default", 10.0, true);
}

fn describe(emulators: &Emulators) -> serde_json::Value {
    let shopify = emulators.shopify();
    let amazon = emulators.amazon();
    let walmart = emulators.walmart();
    let adobe = emulators.adobe();
    let sap = emulators.sap();
    json!({
        "shopify": {
            "base_url": shopify.base_url(),
            "graphql_url": shopify.graphql_url("2026-04"),
            "shop_domain": shopify.config().shop_domain,
            "access_token": shopify.access_token(),
            "api_secret": shopify.config().api_secret,
        },
        "amazon": {
            "base_url": amazon.base_url(),
            "token_url": amazon.token_url(),
            "client_id": amazon.config().client_id,
            "client_secret": amazon.config().client_secret,
            "refresh_token": amazon.config().refresh_token,
            "seller_id": amazon.seller_id(),
            "marketplace_id": amazon.marketplace_id(),
        },
        "walmart": {
            "base_url": walmart.base_url(),
            "client_id": walmart.config().client_id,
            "client_secret": walmart.config().client_secret,
            "ship_node": walmart.default_ship_node(),
        },
        "adobe_commerce": {
            "base_url": adobe.base_url(),
            "rest_url": adobe.rest_url("default"),
            "username": adobe.config().username,
            "password": adobe.config().password,
        },
        "sap": {
            "base_url": sap.base_url(),
            "service_url": format!("{}{}/", sap.base_url(), skuld_emulators::sap::CMR_SERVICE),
            "username": sap.config().username,
            "password": sap.config().password,
        },
    })
}

fn print_text(description: &serde_json::Value) {
    let text = |value: &serde_json::Value| value.as_str().unwrap_or("").to_owned();
    let shopify = &description["shopify"];
    let amazon = &description["amazon"];
    let walmart = &description["walmart"];
    let adobe = &description["adobe_commerce"];
    println!("Shopify         {}", text(&shopify["graphql_url"]));
    println!(
        "  X-Shopify-Access-Token: {}   shop: {}   webhook secret: {}",
        text(&shopify["access_token"]),
        text(&shopify["shop_domain"]),
        text(&shopify["api_secret"])
    );
    println!("Amazon SP-API   {}", text(&amazon["base_url"]));
    println!(
        "  LWA {}   client_id: {}   client_secret: {}",
        text(&amazon["token_url"]),
        text(&amazon["client_id"]),
        text(&amazon["client_secret"])
    );
    println!(
        "  refresh_token: {}   seller: {}   marketplace: {}",
        text(&amazon["refresh_token"]),
        text(&amazon["seller_id"]),
        text(&amazon["marketplace_id"])
    );
    println!("Walmart         {}", text(&walmart["base_url"]));
    println!(
        "  client_id: {}   client_secret: {}   ship node: {}",
        text(&walmart["client_id"]),
        text(&walmart["client_secret"]),
        text(&walmart["ship_node"])
    );
    println!("Adobe Commerce  {}", text(&adobe["rest_url"]));
    println!(
        "  admin username: {}   password: {}",
        text(&adobe["username"]),
        text(&adobe["password"])
    );
    let sap = &description["sap"];
    println!("SAP S/4HANA     {}", text(&sap["service_url"]));
    println!(
        "  communication user: {}   password: {}",
        text(&sap["username"]),
        text(&sap["password"])
    );
    println!("Each emulator: GET <base>/_control/requests (recorder), GET <base>/_control/counters, POST <base>/_control/faults");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let emulators = Emulators::start(config(&args)).await?;
    if !args.no_seed {
        seed(&emulators);
    }
    let description = describe(&emulators);
    if args.json {
        println!("{description}");
    } else {
        print_text(&description);
    }
    tracing::info!("emulators running; Ctrl-C stops them");
    tokio::signal::ctrl_c().await?;
    emulators.shutdown().await;
    Ok(())
}
