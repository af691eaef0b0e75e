//! The interceptor in front of each client service: authenticates the
//! call and attaches its [`Caller`].
//!
//! A bearer token, when sent, decides: a bad token is refused even over a
//! connection with a good client certificate, since a client that sends a
//! token means to be that token's subject, and falling back would hide the
//! broken token. Without a token, the verified client certificate's
//! identity is the caller.

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::certificate::Identities;
use super::jwks::{Jwks, TokenRules};
use super::principal::Principal;
use super::quota::TenantQuota;
use super::{Caller, Rejection, AUTH_FAILURES};
use crate::config::Config;
use crate::status;

const AUTHORIZATION: &str = "authorization";

/// Authenticates client API calls; cheap to clone (one per service).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: authentication off, every call is [`Principal::open`].
    enforced: Option<Enforced>,
    open: Arc<Principal>,
    quota: Option<Arc<TenantQuota>>,
}

struct Enforced {
    jwks: Option<Arc<Jwks>>,
    identities: Identities,
}

impl Authenticator {
    pub(super) fn new(config: &Config, reload_every: Duration) -> anyhow::Result<Self> {
        let auth = &config.auth;
        let jwks = if auth.jwks_file.as_os_str().is_empty() {
            None
        } else {
            let rules = TokenRules {
                audience: auth.jwt_audience.clone(),
                issuers: auth.jwt_issuers.clone(),
                leeway_secs: auth.jwt_leeway_secs,
            };
            Some(Jwks::start(&auth.jwks_file, rules, reload_every)?)
        };
        let identities = Identities::new(&config.identities);
        let enforced =
            (jwks.is_some() || !identities.is_empty()).then_some(Enforced { jwks, identities });
        Ok(Self {
            inner: Arc::new(Inner {
                enforced,
                open: Arc::new(Principal::open()),
                quota: TenantQuota::new(auth.tenant_requests_per_sec, auth.tenant_burst)
                    .map(Arc::new),
            }),
        })
    }

    /// Whether calls must authenticate (a JWKS file or identities are
    /// configured).
    pub fn enforced(&self) -> bool {
        self.inner.enforced.is_some()
    }

    /// `service` behind this authenticator.
    pub fn guard<S>(&self, service: S) -> InterceptedService<S, Self> {
        InterceptedService::new(service, self.clone())
    }

    fn authenticate(
        enforced: &Enforced,
        request: &Request<()>,
    ) -> Result<Arc<Principal>, Rejection> {
        if let Some(token) = bearer(request.metadata())? {
            let jwks = enforced
                .jwks
                .as_ref()
                .ok_or(Rejection::Invalid("a token, but no jwks_file to verify it"))?;
            let claims = jwks.verify(token)?;
            return Ok(Arc::new(Principal::from_claims(&claims)));
        }
        match request.peer_certs() {
            Some(chain) => match chain.first() {
                Some(leaf) => enforced.identities.principal(leaf.as_ref()),
                None => Err(Rejection::Missing),
            },
            None => Err(Rejection::Missing),
        }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = match &self.inner.enforced {
            None => Arc::clone(&self.inner.open),
            Some(enforced) => match Self::authenticate(enforced, &request) {
                Ok(principal) => principal,
                Err(rejection) => {
                    metrics::counter!(AUTH_FAILURES, "reason" => rejection.reason()).increment(1);
                    tracing::debug!(
                        reason = rejection.detail(),
                        "client API call not authenticated"
                    );
                    return Err(status::unauthenticated());
                }
            },
        };
        // The handlers have no use for the token: it goes no further.
        request.metadata_mut().remove(AUTHORIZATION);
        request
            .extensions_mut()
            .insert(Caller::new(principal, self.inner.quota.clone()));
        Ok(request)
    }
}

/// The bearer token of `authorization: Bearer <token>` (the scheme is
/// case-insensitive), if the header is there. Several authorization
/// headers, or another scheme, are refused rather than guessed at.
fn bearer(metadata: &MetadataMap) -> Result<Option<&str>, Rejection> {
    let mut values = metadata.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::Invalid("more than one authorization header"));
    }
    let text = value
        .to_str()
        .map_err(|_| Rejection::Invalid("authorization header is not text"))?;
    match text.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if token.is_empty() {
                Err(Rejection::Invalid("empty bearer token"))
            } else {
                Ok(Some(token))
            }
        }
        _ => Err(Rejection::Invalid("authorization is not a bearer token")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn metadata(values: &[&str]) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        for value in values {
            metadata.append(AUTHORIZATION, value.parse().unwrap());
        }
        metadata
    }

    #[test]
    fn reads_a_bearer_token_and_nothing_else() {
        assert_eq!(bearer(&metadata(&[])), Ok(None));
        assert_eq!(
            bearer(&metadata(&["Bearer abc.def.ghi"])),
            Ok(Some("abc.def.ghi"))
        );
        assert_eq!(bearer(&metadata(&["bearer  abc "])), Ok(Some("abc")));
        for bad in [
            &["Basic dXNlcjpwYXNz"][..],
            &["Bearer "],
            &["abc.def.ghi"],
            &["Bearer a", "Bearer b"],
        ] {
            assert!(
                matches!(bearer(&metadata(bad)), Err(Rejection::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn with_auth_off_every_call_is_the_open_principal() {
        let mut authenticator =
            Authenticator::new(&Config::default(), Duration::from_secs(10)).unwrap();
        assert!(!authenticator.enforced());
        let request = authenticator.call(Request::new(())).unwrap();
        let caller = Caller::of(&request).unwrap();
        assert_eq!(caller.principal(), &Principal::open());
    }

    #[test]
    fn with_identities_a_call_without_credentials_is_refused() {
        let mut config = Config::default();
        config.identities.insert(
            "svc-oms".into(),
            crate::config::Identity {
                tenants: vec!["acme".into()],
                roles: vec!["writer".into()],
            },
        );
        let mut authenticator = Authenticator::new(&config, Duration::from_secs(10)).unwrap();
        assert!(authenticator.enforced());
        for request in [Request::new(()), {
            let mut request = Request::new(());
            request
                .metadata_mut()
                .insert(AUTHORIZATION, "Bearer a.b.c".parse().unwrap());
            request
        }] {
            let status = authenticator.call(request).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert_eq!(status.message(), status::UNAUTHENTICATED);
        }
    }
}
