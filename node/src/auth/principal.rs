//! Who a caller is once authenticated: a subject, the tenants it acts for
//! and its roles, from a token's claims or a configured identity.

use std::collections::BTreeSet;

use serde::Deserialize;

/// The tenant entry that grants every tenant.
pub const EVERY_TENANT: &str = "*";

/// What a caller may do. Roles do not imply each other except that a
/// writer may also read: an SRE's admin credential drains nodes but does
/// not move stock, and a service that moves stock cannot drain nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Get*, List*, Subscribe, GetHistory.
    Reader,
    /// Every mutation (and what a reader may do).
    Writer,
    /// Node and cluster operations and webhook management.
    Admin,
}

impl Role {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "reader" => Some(Self::Reader),
            "writer" => Some(Self::Writer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Writer => "writer",
            Self::Admin => "admin",
        }
    }
}

/// The tenants a principal acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenants {
    /// `"*"`: every tenant, including requests over all tenants at once.
    Every,
    Listed(BTreeSet<String>),
}

impl Tenants {
    fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut listed = BTreeSet::new();
        for name in names {
            if name == EVERY_TENANT {
                return Self::Every;
            }
            listed.insert(name.to_owned());
        }
        Self::Listed(listed)
    }

    pub fn holds(&self, tenant: &str) -> bool {
        match self {
            Self::Every => true,
            Self::Listed(listed) => listed.contains(tenant),
        }
    }

    pub fn is_every(&self) -> bool {
        matches!(self, Self::Every)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`, or the identity's name in `[identities]`.
    pub subject: String,
    pub tenants: Tenants,
    roles: BTreeSet<Role>,
}

/// The claims skuld reads from a verified token; the registered ones
/// (`exp`, `aud`, `iss`, `nbf`) are checked by the verifier.
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub tenants: Vec<String>,
    /// A single tenant, for issuers that cannot emit an array.
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Principal {
    pub fn new<'a>(
        subject: &str,
        tenants: impl IntoIterator<Item = &'a str>,
        roles: impl IntoIterator<Item = Role>,
    ) -> Self {
        Self {
            subject: subject.to_owned(),
            tenants: Tenants::from_names(tenants),
            roles: roles.into_iter().collect(),
        }
    }

    /// Authentication off (no JWKS, no identities): the laptop quick start,
    /// where every caller may do everything.
    pub fn open() -> Self {
        Self::new(
            "anonymous",
            [EVERY_TENANT],
            [Role::Reader, Role::Writer, Role::Admin],
        )
    }

    /// From a verified token. Unknown role names are ignored rather than
    /// refused, so an issuer may add roles of a later version; a token that
    /// names none of skuld's roles can still call NodeStatus only.
    pub fn from_claims(claims: &Claims) -> Self {
        let tenants = claims
            .tenants
            .iter()
            .map(String::as_str)
            .chain(claims.tenant.as_deref());
        Self::new(
            &claims.sub,
            tenants,
            claims.roles.iter().filter_map(|name| Role::parse(name)),
        )
    }

    /// From `[identities.<name>]` (its roles were checked when the
    /// configuration was loaded).
    pub fn from_identity(name: &str, identity: &crate::config::Identity) -> Self {
        Self::new(
            name,
            identity.tenants.iter().map(String::as_str),
            identity.roles.iter().filter_map(|role| Role::parse(role)),
        )
    }

    /// Whether the principal holds `role`; a writer may read.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role) || (role == Role::Reader && self.roles.contains(&Role::Writer))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn claims(json: serde_json::Value) -> Claims {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn claims_become_a_principal() {
        let principal = Principal::from_claims(&claims(serde_json::json!({
            "sub": "svc-oms", "tenants": ["acme", "globex"], "roles": ["writer", "auditor"]
        })));
        assert_eq!(principal.subject, "svc-oms");
        assert!(principal.tenants.holds("acme") && principal.tenants.holds("globex"));
        assert!(!principal.tenants.holds("initech") && !principal.tenants.is_every());
        assert!(principal.has_role(Role::Writer));
        assert!(!principal.has_role(Role::Admin));

        let single = Principal::from_claims(&claims(serde_json::json!({
            "sub": "svc-pos", "tenant": "acme", "roles": ["reader"]
        })));
        assert_eq!(
            single.tenants,
            Tenants::Listed(BTreeSet::from(["acme".to_owned()]))
        );

        let every = Principal::from_claims(&claims(serde_json::json!({
            "sub": "sre", "tenants": ["acme", "*"], "roles": ["admin"]
        })));
        assert!(every.tenants.is_every() && every.tenants.holds("anything"));

        let nothing = Principal::from_claims(&claims(serde_json::json!({"sub": "x"})));
        assert!(!nothing.tenants.holds("acme"));
        assert!(!nothing.has_role(Role::Reader));
    }

    #[test]
    fn a_malformed_claim_is_refused() {
        for bad in [
            serde_json::json!({"tenants": ["acme"]}),
            serde_json::json!({"sub": "x", "tenants": "acme"}),
            serde_json::json!({"sub": "x", "roles": "writer"}),
        ] {
            assert!(
                serde_json::from_value::<Claims>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn writer_implies_reader_and_nothing_else_implies_anything() {
        let writer = Principal::new("w", ["acme"], [Role::Writer]);
        assert!(writer.has_role(Role::Reader) && writer.has_role(Role::Writer));
        assert!(!writer.has_role(Role::Admin));
        let reader = Principal::new("r", ["acme"], [Role::Reader]);
        assert!(reader.has_role(Role::Reader) && !reader.has_role(Role::Writer));
        let admin = Principal::new("a", ["acme"], [Role::Admin]);
        assert!(admin.has_role(Role::Admin));
        assert!(!admin.has_role(Role::Reader) && !admin.has_role(Role::Writer));
    }

    #[test]
    fn an_identity_becomes_a_principal() {
        let identity = crate::config::Identity {
            tenants: vec!["acme".into()],
            roles: vec!["reader".into(), "admin".into()],
        };
        let principal = Principal::from_identity("svc-wms", &identity);
        assert_eq!(principal.subject, "svc-wms");
        assert!(principal.tenants.holds("acme") && !principal.tenants.holds("globex"));
        assert!(principal.has_role(Role::Reader) && principal.has_role(Role::Admin));
        assert!(!principal.has_role(Role::Writer));
        assert!(Principal::open().tenants.is_every());
    }
}
