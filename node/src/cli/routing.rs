//! A position's or a return's command goes to the node that owns it
//! (`skuld-client`'s shard map), saving the forwarding hop; `--endpoint`
//! serves it when the owner is not known or cannot be reached.

use super::*;
use std::time::Duration;

use skuld_client::{RouteKey, Router, RouterOptions};
use skuld_proto::v1 as pb;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// The entity a command acts on.
pub(super) enum Keyed {
    Position(pb::PositionKey),
    Return(pb::ReturnKey),
}

impl Keyed {
    fn route_key(&self) -> RouteKey<'_> {
        match self {
            Self::Position(key) => RouteKey::Position(key),
            Self::Return(key) => RouteKey::Return(key),
        }
    }
}

/// The position or return case `command` acts on; `None` for commands of
/// no single key (availability, lists, events, admin).
pub(super) fn keyed(command: &ClientCommand) -> Option<Keyed> {
    use ClientCommand as C;
    let position = match command {
        C::Adjust(args) => &args.position,
        C::SetOnHand(args) => &args.position,
        C::Move(args) => &args.position,
        C::Reserve(args) => &args.position,
        C::Extend(args) => &args.position,
        C::Release(args) => &args.position,
        C::Commit(args) => &args.position,
        C::Fulfill(args) => &args.position,
        C::CancelCommitment(args) => &args.position,
        C::Position(args) => args,
        C::Returns(command) => return command.key().map(Keyed::Return),
        _ => return None,
    };
    Some(Keyed::Position(position.key()))
}

/// A channel to the owner of `key`, asked of the node at `endpoint`;
/// `None` when that node names none (a single node, a moving shard, a
/// version without GetShardMap) or the owner does not answer in time.
pub(super) async fn owner_channel(
    endpoint: &str,
    tls: Option<ClientTlsConfig>,
    authorization: Option<AsciiMetadataValue>,
    key: &Keyed,
    timeout: Duration,
) -> Option<Channel> {
    let mut options = RouterOptions::new([endpoint]);
    options.tls = tls.clone();
    options.authorization = authorization;
    options.map_timeout = timeout.min(Duration::from_secs(2));
    let router = Router::connect(options).await.ok()?;
    let route = router.route(key.route_key());
    route.owner()?;
    if route.endpoint() == endpoint {
        return None;
    }
    let mut builder = Endpoint::from_shared(route.endpoint().to_owned()).ok()?;
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).ok()?;
    }
    builder
        .connect_timeout(timeout.min(Duration::from_secs(2)))
        .connect()
        .await
        .ok()
}
