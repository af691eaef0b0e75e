//! Service identities from client certificates: the certificate's DNS
//! names, then its common name, looked up in `[identities]`. The TLS
//! listener has verified the chain against `tls_client_ca_file` already;
//! this only decides who the verified holder is.

use std::collections::BTreeMap;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;

use super::principal::Principal;
use super::Rejection;
use crate::config::Identity;

/// `[identities]` by lower-cased name (DNS names are case-insensitive).
#[derive(Default)]
pub struct Identities {
    by_name: BTreeMap<String, Arc<Principal>>,
}

impl Identities {
    pub fn new(configured: &BTreeMap<String, Identity>) -> Self {
        Self {
            by_name: configured
                .iter()
                .map(|(name, identity)| {
                    (
                        name.to_ascii_lowercase(),
                        Arc::new(Principal::from_identity(name, identity)),
                    )
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The identity of the leaf certificate `der`. A certificate whose
    /// names match two different identities is refused: which one the CA
    /// meant cannot be told, and granting both would surprise.
    pub fn principal(&self, der: &[u8]) -> Result<Arc<Principal>, Rejection> {
        let names = names(der).ok_or(Rejection::Invalid("unreadable client certificate"))?;
        let mut found: Option<(&String, &Arc<Principal>)> = None;
        for name in names {
            let Some((key, principal)) = self.by_name.get_key_value(&name.to_ascii_lowercase())
            else {
                continue;
            };
            match found {
                Some((earlier, _)) if earlier != key => {
                    return Err(Rejection::Invalid(
                        "client certificate names two identities",
                    ))
                }
                _ => found = Some((key, principal)),
            }
        }
        found
            .map(|(_, principal)| Arc::clone(principal))
            .ok_or(Rejection::Invalid("client certificate maps to no identity"))
    }
}

/// The DNS names of the certificate's subjectAltName, then its common
/// names; `None` when it does not parse.
fn names(der: &[u8]) -> Option<Vec<String>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    for common_name in cert.subject().iter_common_name() {
        if let Ok(text) = common_name.as_str() {
            names.push(text.to_owned());
        }
    }
    Some(names)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::principal::Role;

    fn certificate(common_name: &str, dns: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(
            dns.iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn identity(tenants: &[&str], roles: &[&str]) -> Identity {
        Identity {
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn identities() -> Identities {
        Identities::new(&BTreeMap::from([
            (
                "svc-oms.acme.internal".to_owned(),
                identity(&["acme"], &["writer"]),
            ),
            ("svc-wms".to_owned(), identity(&["*"], &["reader"])),
        ]))
    }

    #[test]
    fn a_dns_name_or_the_common_name_maps_to_an_identity() {
        let identities = identities();
        let oms = identities
            .principal(&certificate("ignored", &["SVC-OMS.acme.internal"]))
            .unwrap();
        assert_eq!(oms.subject, "svc-oms.acme.internal");
        assert!(oms.has_role(Role::Writer) && oms.tenants.holds("acme"));
        assert!(!oms.tenants.holds("globex"));

        let wms = identities.principal(&certificate("svc-wms", &[])).unwrap();
        assert!(wms.tenants.is_every() && !wms.has_role(Role::Writer));
    }

    #[test]
    fn unknown_ambiguous_and_garbage_certificates_are_refused() {
        let identities = identities();
        for der in [
            certificate("svc-unknown", &["unknown.internal"]),
            certificate("svc-wms", &["svc-oms.acme.internal"]),
            b"not a certificate".to_vec(),
        ] {
            assert!(matches!(
                identities.principal(&der),
                Err(Rejection::Invalid(_))
            ));
        }
    }
}
