//! What each client RPC needs: a role, and the tenant it acts on, read
//! from the request message. Every request type `rpc::serve` takes must say
//! so here, so a new RPC cannot be added without deciding who may call it.

use skuld_proto::v1 as pb;

use super::principal::Role;

/// What a request needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access<'a> {
    /// `None`: any authenticated caller.
    pub role: Option<Role>,
    pub target: Target<'a>,
}

/// Which tenant a request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// One tenant, named in the message (empty when the message names none;
    /// validation refuses it later, for callers allowed every tenant).
    Tenant(&'a str),
    /// Every tenant at once (an empty tenant filter): needs `"*"`.
    EveryTenant,
    /// No tenant and nothing shared: the status of the node, the shard
    /// map. Any caller with the role.
    Node,
    /// The node or the cluster, which every tenant shares (draining a
    /// node, listing members and shards): needs `"*"`, so a tenant's admin
    /// (who manages that tenant's webhooks) is not a cluster admin. Not
    /// charged to a quota.
    Cluster,
    /// A tenant known only once the thing the request names is looked up
    /// (a webhook by id); the handler checks it ([`super::Caller::admit_tenant`]).
    Looked,
}

/// A request message that declares the access it needs.
pub trait Scoped {
    fn access(&self) -> Access<'_>;
}

fn tenant(role: Role, tenant: &str) -> Access<'_> {
    Access {
        role: Some(role),
        target: Target::Tenant(tenant),
    }
}

fn position_tenant(key: Option<&pb::PositionKey>) -> &str {
    key.map_or("", |key| key.tenant.as_str())
}

fn mutation_tenant(header: Option<&pb::MutationHeader>) -> &str {
    position_tenant(header.and_then(|header| header.key.as_ref()))
}

fn return_tenant(key: Option<&pb::ReturnKey>) -> &str {
    key.map_or("", |key| key.tenant.as_str())
}

fn return_header_tenant(header: Option<&pb::ReturnHeader>) -> &str {
    return_tenant(header.and_then(|header| header.key.as_ref()))
}

/// An empty tenant filter means every tenant.
fn filter(role: Role, tenant: &str) -> Access<'_> {
    Access {
        role: Some(role),
        target: if tenant.is_empty() {
            Target::EveryTenant
        } else {
            Target::Tenant(tenant)
        },
    }
}

const fn node(role: Option<Role>) -> Access<'static> {
    Access {
        role,
        target: Target::Node,
    }
}

const fn cluster() -> Access<'static> {
    Access {
        role: Some(Role::Admin),
        target: Target::Cluster,
    }
}

const fn looked(role: Role) -> Access<'static> {
    Access {
        role: Some(role),
        target: Target::Looked,
    }
}

macro_rules! scoped {
    ($($message:ident),+ => |$request:ident| $access:expr) => {
        $(
            impl Scoped for pb::$message {
                fn access(&self) -> Access<'_> {
                    let $request = self;
                    $access
                }
            }
        )+
    };
}

// Inventory.
scoped!(
    AdjustRequest, SetOnHandRequest, MoveRequest, ReserveRequest, ExtendReservationRequest,
    ReleaseReservationRequest, CommitReservationRequest, FulfillRequest, CancelCommitmentRequest
    => |request| tenant(Role::Writer, mutation_tenant(request.header.as_ref()))
);
scoped!(GetPositionRequest => |request| tenant(Role::Reader, position_tenant(request.key.as_ref())));
scoped!(GetAvailabilityRequest => |request| tenant(Role::Reader, &request.tenant));
// One message of a bulk load: every line is a count of that tenant.
scoped!(ImportPositionsRequest => |request| tenant(Role::Writer, &request.tenant));

// Returns.
scoped!(
    OpenReturnRequest, FlagForReviewRequest, ApproveReturnRequest, DeclineReturnRequest,
    AttachLabelRequest, RecordCarrierEventRequest, ReceiveItemsRequest, InspectItemsRequest,
    DisposeItemsRequest, ProcessReturnRequest, ApproveRefundRequest, ConfirmErpRequest,
    CloseReturnRequest, ReopenReturnRequest, CancelReturnRequest, ResolveExceptionRequest
    => |request| tenant(Role::Writer, return_header_tenant(request.header.as_ref()))
);
scoped!(GetReturnRequest => |request| tenant(Role::Reader, return_tenant(request.key.as_ref())));
scoped!(ListReturnsRequest => |request| tenant(Role::Reader, &request.tenant));

// Orders.
scoped!(
    ReserveOrderRequest, CommitOrderRequest, ReleaseOrderRequest
    => |request| tenant(Role::Writer, request.key.as_ref().map_or("", |key| key.tenant.as_str()))
);
scoped!(GetOrderRequest => |request| tenant(
    Role::Reader,
    request.key.as_ref().map_or("", |key| key.tenant.as_str()),
));
scoped!(
    TransferStockRequest, ReceiveTransferRequest
    => |request| tenant(Role::Writer, request.key.as_ref().map_or("", |key| key.tenant.as_str()))
);
scoped!(GetTransferRequest => |request| tenant(
    Role::Reader,
    request.key.as_ref().map_or("", |key| key.tenant.as_str()),
));

// Events.
scoped!(SubscribeRequest => |request| filter(
    Role::Reader,
    request.filter.as_ref().map_or("", |filter| filter.tenant.as_str()),
));
scoped!(GetHistoryRequest => |request| {
    use pb::get_history_request::Aggregate;
    tenant(Role::Reader, match &request.aggregate {
        Some(Aggregate::Position(key)) => key.tenant.as_str(),
        Some(Aggregate::ReturnCase(key)) => key.tenant.as_str(),
        None => "",
    })
});

// Webhooks: managing where a tenant's events go is an admin's job.
scoped!(AddWebhookRequest => |request| tenant(Role::Admin, &request.tenant));
scoped!(ListWebhooksRequest => |request| filter(Role::Admin, &request.tenant));
scoped!(
    RemoveWebhookRequest, RotateWebhookSecretRequest, ListDeadLettersRequest,
    ReplayDeadLettersRequest
    => |_request| looked(Role::Admin)
);

// Channels: defining where a tenant sells is an admin's job; what a
// channel may sell is read like any availability.
scoped!(CreateChannelRequest => |request| tenant(
    Role::Admin,
    request.channel.as_ref().map_or("", |channel| channel.tenant.as_str()),
));
scoped!(UpdateChannelRequest => |request| tenant(
    Role::Admin,
    request.channel.as_ref().map_or("", |channel| channel.tenant.as_str()),
));
scoped!(
    GetChannelRequest, ListChannelsRequest, DeleteChannelRequest, SetControlsRequest
    => |request| tenant(Role::Admin, &request.tenant)
);
scoped!(GetChannelAvailabilityRequest => |request| tenant(Role::Reader, &request.tenant));
// What the push worker left (dead letters, drift) and telling it to act.
scoped!(
    ListChannelDeadLettersRequest, ReplayChannelDeadLettersRequest, ListChannelDriftRequest,
    ReconcileChannelRequest, SyncChannelRequest, ListChannelWebhookExceptionsRequest
    => |request| tenant(Role::Admin, &request.tenant)
);

// The node and the cluster. The shard map tells the topology (node ids,
// client endpoints), no tenant's data: every owner-aware client needs it.
scoped!(NodeStatusRequest, GetShardMapRequest => |_request| node(None));
scoped!(
    ListMembersRequest, ListShardsRequest, DrainNodeRequest, UndrainNodeRequest
    => |_request| cluster()
);

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str) -> Option<pb::PositionKey> {
        Some(pb::PositionKey {
            tenant: tenant.into(),
            sku: "SKU-1".into(),
            location: "DC1".into(),
        })
    }

    #[test]
    fn the_tenant_comes_from_the_message() {
        let adjust = pb::AdjustRequest {
            header: Some(pb::MutationHeader {
                key: key("acme"),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(adjust.access(), tenant(Role::Writer, "acme"));
        assert_eq!(
            pb::AdjustRequest::default().access(),
            tenant(Role::Writer, "")
        );
        let get = pb::GetPositionRequest {
            key: key("globex"),
            ..Default::default()
        };
        assert_eq!(get.access(), tenant(Role::Reader, "globex"));
    }

    #[test]
    fn an_empty_filter_is_every_tenant() {
        let every = pb::SubscribeRequest::default();
        assert_eq!(every.access().target, Target::EveryTenant);
        let one = pb::SubscribeRequest {
            filter: Some(pb::EventFilter {
                tenant: "acme".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(one.access(), tenant(Role::Reader, "acme"));
        assert_eq!(
            pb::ListWebhooksRequest::default().access(),
            Access {
                role: Some(Role::Admin),
                target: Target::EveryTenant
            }
        );
    }

    #[test]
    fn channels_are_managed_by_an_admin_and_read_by_a_reader_of_their_tenant() {
        let create = pb::CreateChannelRequest {
            channel: Some(pb::Channel {
                tenant: "acme".into(),
                ..Default::default()
            }),
        };
        assert_eq!(create.access(), tenant(Role::Admin, "acme"));
        assert_eq!(
            pb::UpdateChannelRequest::default().access(),
            tenant(Role::Admin, "")
        );
        let controls = pb::SetControlsRequest {
            tenant: "acme".into(),
            ..Default::default()
        };
        assert_eq!(controls.access(), tenant(Role::Admin, "acme"));
        let availability = pb::GetChannelAvailabilityRequest {
            tenant: "acme".into(),
            ..Default::default()
        };
        assert_eq!(availability.access(), tenant(Role::Reader, "acme"));
    }

    #[test]
    fn node_operations_need_admin_of_every_tenant_except_the_status() {
        assert_eq!(pb::NodeStatusRequest::default().access(), node(None));
        assert_eq!(pb::GetShardMapRequest::default().access(), node(None));
        assert_eq!(pb::DrainNodeRequest::default().access(), cluster());
        assert_eq!(pb::UndrainNodeRequest::default().access(), cluster());
        assert_eq!(pb::ListMembersRequest::default().access(), cluster());
        assert_eq!(pb::ListShardsRequest::default().access(), cluster());
        assert_eq!(
            pb::RemoveWebhookRequest::default().access(),
            looked(Role::Admin)
        );
    }
}
