//! Who may call the client API, and for which tenants.
//!
//! Authentication happens in an interceptor in front of each client
//! service ([`Authenticator`], wired in `server.rs`): a bearer token
//! (`authorization: Bearer <jwt>`) verified against the JWKS file, else the
//! verified client certificate mapped through `[identities]`. It attaches a
//! [`Caller`] to the request. gRPC health and reflection are separate
//! services and stay open.
//!
//! Authorization happens in `rpc::serve`, once the message is decoded and its
//! tenant known: each request type declares the role and tenant it needs
//! ([`access`]), and the caller must hold both, before anything is looked
//! up. Then the tenant's quota is charged ([`quota`]).
//!
//! With neither `jwks_file` nor `[identities]` configured, authentication is
//! off: every caller gets [`Principal::open`] (every tenant, every role), as
//! before this module existed. The interceptor runs then too, and a request
//! that reaches `rpc::serve` without a [`Caller`] is refused: a service
//! wired without the interceptor fails closed, in every test.

pub mod access;
mod certificate;
mod jwks;
mod layer;
pub mod principal;
pub mod quota;

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Status};

pub use access::{Access, Scoped, Target};
pub use layer::Authenticator;
pub use principal::{Principal, Role, Tenants, EVERY_TENANT};

use crate::config::Config;
use crate::status;
use quota::TenantQuota;

/// Counter of refused calls, by `reason`: `missing` (no credential),
/// `invalid` (a credential that does not verify or maps to no identity),
/// `expired` (a well-signed token past its `exp`), `forbidden` (a role or
/// tenant not granted).
pub const AUTH_FAILURES: &str = "skuld_auth_failures_total";
/// Counter of calls refused by a tenant's quota, by `tenant`.
pub const TENANT_THROTTLED: &str = "skuld_tenant_throttled_total";

/// Why authentication failed: a low-cardinality reason for the metric and
/// a fixed detail for the debug log. Neither ever holds token text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    Missing,
    Invalid(&'static str),
    Expired,
}

impl Rejection {
    fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid(_) => "invalid",
            Self::Expired => "expired",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Self::Missing => "no bearer token and no client certificate",
            Self::Invalid(detail) => detail,
            Self::Expired => "token expired",
        }
    }
}

/// Builds the authenticator from the configuration: loads the JWKS file
/// (a node that cannot read it does not start) and keeps re-reading it
/// every `tls_reload_interval_secs`.
pub fn start(config: &Config) -> anyhow::Result<Authenticator> {
    describe_metrics();
    let every = Duration::from_secs(config.server.tls_reload_interval_secs.max(1));
    let authenticator = Authenticator::new(config, every)?;
    if authenticator.enforced() {
        tracing::info!(
            jwks = !config.auth.jwks_file.as_os_str().is_empty(),
            identities = config.identities.len(),
            "client API authentication on"
        );
        if !config.auth.jwks_file.as_os_str().is_empty()
            && config.server.tls_cert_file.as_os_str().is_empty()
        {
            tracing::warn!(
                "bearer tokens are accepted over plaintext: set tls_cert_file so they cannot be read on the way"
            );
        }
    } else {
        tracing::info!(
            "client API authentication off (no jwks_file, no [identities]): every caller may do everything"
        );
    }
    Ok(authenticator)
}

/// The authenticated caller of one request, and the quota it is charged to.
#[derive(Clone)]
pub struct Caller {
    principal: Arc<Principal>,
    quota: Option<Arc<TenantQuota>>,
}

impl Caller {
    pub(crate) fn new(principal: Arc<Principal>, quota: Option<Arc<TenantQuota>>) -> Self {
        Self { principal, quota }
    }

    /// The caller the interceptor attached to `request`.
    pub fn of<T>(request: &Request<T>) -> Option<Self> {
        request.extensions().get::<Self>().cloned()
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Whether the caller acts for every tenant, and so may learn whether
    /// a thing of any tenant exists.
    pub fn sees_every_tenant(&self) -> bool {
        self.principal.tenants.is_every()
    }

    /// The role and tenant `access` needs, then the tenant's quota. Calls
    /// over every tenant are charged to the bucket `"*"`; calls on the node
    /// itself name no tenant and are not charged (the node-wide admission
    /// bound covers them); those on the node or the cluster, which every
    /// tenant shares, need every tenant.
    pub fn admit(&self, access: Access<'_>) -> Result<(), Status> {
        if let Some(role) = access.role {
            if !self.principal.has_role(role) {
                return Err(self.forbidden());
            }
        }
        match access.target {
            Target::Tenant(tenant) => self.admit_tenant(tenant),
            Target::EveryTenant if self.sees_every_tenant() => self.charge(EVERY_TENANT),
            Target::Cluster if self.sees_every_tenant() => Ok(()),
            Target::EveryTenant | Target::Cluster => Err(self.forbidden()),
            Target::Node | Target::Looked => Ok(()),
        }
    }

    /// The tenant of a thing the request named by id, once looked up; then
    /// that tenant's quota.
    pub fn admit_tenant(&self, tenant: &str) -> Result<(), Status> {
        if !self.principal.tenants.holds(tenant) {
            return Err(self.forbidden());
        }
        if self.quota.is_some() {
            // Before the name is copied into the quota's map: a caller of
            // every tenant may send any string. The handler would refuse it
            // the same way.
            skuld_actors::key::validate_tenant("tenant", tenant)
                .map_err(|refusal| status::to_status(&skuld_actors::Error::Refused(refusal)))?;
        }
        self.charge(tenant)
    }

    /// PERMISSION_DENIED, counted.
    pub fn forbidden(&self) -> Status {
        metrics::counter!(AUTH_FAILURES, "reason" => "forbidden").increment(1);
        tracing::debug!(subject = %self.principal.subject, "request not granted to the caller");
        status::permission_denied()
    }

    fn charge(&self, tenant: &str) -> Result<(), Status> {
        let Some(quota) = &self.quota else {
            return Ok(());
        };
        let any_name = self.sees_every_tenant();
        quota.charge(tenant, any_name).map_err(|refused| {
            // Label values come only from credentials (the tenants a token
            // or an identity lists), which the issuer and the configuration
            // bound. A caller allowed every tenant may name any tenant, so
            // its throttles are counted under "*".
            let label = if any_name {
                EVERY_TENANT.to_owned()
            } else {
                tenant.to_owned()
            };
            metrics::counter!(TENANT_THROTTLED, "tenant" => label).increment(1);
            status::tenant_quota_exhausted(quota::retry_after_ms(refused.wait()))
        })
    }
}

/// What `rpc::serve` checks before a handler runs. No caller means the
/// service was wired without the interceptor: refused, loudly.
pub fn admit(caller: Option<&Caller>, access: Access<'_>) -> Result<(), Status> {
    match caller {
        Some(caller) => caller.admit(access),
        None => {
            tracing::error!("a client API call arrived without the authenticator in front of its service: refused");
            metrics::counter!(AUTH_FAILURES, "reason" => "missing").increment(1);
            Err(status::unauthenticated())
        }
    }
}

/// Registers the metrics' help texts.
fn describe_metrics() {
    metrics::describe_counter!(
        AUTH_FAILURES,
        "Client API calls refused by authentication or authorization, by reason (missing, invalid, expired, forbidden)"
    );
    metrics::describe_counter!(
        jwks::JWKS_RELOADS,
        "Reloads of the JWKS file, by outcome (loaded; empty: no usable key, every token refused; unusable or unreadable: the last good key set kept)"
    );
    metrics::describe_counter!(
        TENANT_THROTTLED,
        "Client API calls refused by a tenant's request quota, by tenant (\"*\" for callers allowed every tenant)"
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn caller(principal: Principal, quota: Option<TenantQuota>) -> Caller {
        Caller::new(Arc::new(principal), quota.map(Arc::new))
    }

    fn access(role: Option<Role>, target: Target<'_>) -> Access<'_> {
        Access { role, target }
    }

    #[test]
    fn a_caller_needs_the_role_and_the_tenant() {
        let writer = caller(Principal::new("oms", ["acme"], [Role::Writer]), None);
        assert!(writer
            .admit(access(Some(Role::Writer), Target::Tenant("acme")))
            .is_ok());
        assert!(writer
            .admit(access(Some(Role::Reader), Target::Tenant("acme")))
            .is_ok());
        let denied = [
            access(Some(Role::Writer), Target::Tenant("globex")),
            access(Some(Role::Writer), Target::Tenant("")),
            access(Some(Role::Reader), Target::EveryTenant),
            access(Some(Role::Admin), Target::Node),
            access(Some(Role::Admin), Target::Cluster),
        ];
        for access in denied {
            let status = writer.admit(access).unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{access:?}");
            assert_eq!(status.message(), status::PERMISSION_DENIED);
        }
        assert!(writer.admit(access(None, Target::Node)).is_ok());
        assert!(writer.admit_tenant("globex").is_err());

        let sre = caller(Principal::new("sre", ["*"], [Role::Admin]), None);
        assert!(sre.admit(access(Some(Role::Admin), Target::Node)).is_ok());
        assert!(sre
            .admit(access(Some(Role::Admin), Target::Cluster))
            .is_ok());
        assert!(sre
            .admit(access(Some(Role::Admin), Target::EveryTenant))
            .is_ok());
        assert!(sre
            .admit(access(Some(Role::Reader), Target::Tenant("acme")))
            .is_err());
        assert!(admit(None, access(None, Target::Node)).is_err());
    }

    #[test]
    fn a_tenants_admin_is_no_cluster_admin_and_the_cluster_is_not_charged() {
        let acme_admin = caller(Principal::new("acme-ops", ["acme"], [Role::Admin]), None);
        assert!(acme_admin
            .admit(access(Some(Role::Admin), Target::Tenant("acme")))
            .is_ok());
        let refused = acme_admin
            .admit(access(Some(Role::Admin), Target::Cluster))
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        // NodeStatus stays open to any authenticated caller.
        assert!(acme_admin.admit(access(None, Target::Node)).is_ok());

        let sre = caller(
            Principal::new("sre", ["*"], [Role::Admin]),
            TenantQuota::new(1, 1),
        );
        for _ in 0..3 {
            sre.admit(access(Some(Role::Admin), Target::Cluster))
                .unwrap();
        }
        let reader = caller(Principal::new("r", ["*"], [Role::Reader]), None);
        assert!(reader
            .admit(access(Some(Role::Admin), Target::Cluster))
            .is_err());
    }

    #[test]
    fn the_quota_is_charged_after_authorization_and_per_tenant() {
        let reader = caller(
            Principal::new("pos", ["acme", "globex"], [Role::Reader]),
            TenantQuota::new(1, 1),
        );
        let read = |tenant| access(Some(Role::Reader), Target::Tenant(tenant));
        // A refused call does not use the tenant's budget...
        let refused = reader
            .admit(access(Some(Role::Writer), Target::Tenant("acme")))
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(reader.admit(read("acme")).is_ok());
        // ... an admitted one does.
        let throttled = reader.admit(read("acme")).unwrap_err();
        assert_eq!(throttled.code(), tonic::Code::ResourceExhausted);
        assert!(throttled.metadata().get(status::RETRY_AFTER_MS).is_some());
        assert!(reader.admit(read("globex")).is_ok());
    }

    #[test]
    fn a_tenant_is_validated_before_it_is_charged() {
        let quota = Arc::new(TenantQuota::new(1, 1).unwrap());
        let sre = Caller::new(
            Arc::new(Principal::new("sre", ["*"], [Role::Writer])),
            Some(quota.clone()),
        );
        let huge = "x".repeat(1 << 20);
        for bad in [huge.as_str(), "", " acme", "ac\nme"] {
            let status = sre
                .admit(access(Some(Role::Writer), Target::Tenant(bad)))
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(status.message().contains("tenant"), "{status:?}");
        }
        assert_eq!(quota.tracked(), 0);
        let longest = "x".repeat(skuld_actors::key::MAX_TOKEN_BYTES);
        sre.admit(access(Some(Role::Writer), Target::Tenant(&longest)))
            .unwrap();
        assert_eq!(quota.tracked(), 1);
        // Without a quota, the handler validates it.
        let open = caller(Principal::open(), None);
        assert!(open
            .admit(access(Some(Role::Writer), Target::Tenant(&huge)))
            .is_ok());
    }
}
