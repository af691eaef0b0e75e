//! `[erp]` (file only): the ERP that posts credit memos for refunds held by
//! the `ERP_VALIDATION` gate (docs/erp.md). Without it (`kind` empty) the
//! gate waits for a person's `ConfirmErp`, as before.
//!
//! The password is never in this file: `password_ref` names where it is
//! (`file:<path>` or `env:<NAME>`, as channel credentials do), and it is
//! read when the worker starts, into a [`Secret`] whose `Debug` redacts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skuld_connectors::Secret;

use super::ConfigError;

/// The most a password file may hold.
const MAX_PASSWORD_BYTES: u64 = 4 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Erp {
    /// `sap` (SAP S/4HANA's `API_CREDIT_MEMO_REQUEST_SRV`), or empty: no
    /// ERP, the gate waits for `ConfirmErp`.
    pub kind: String,
    /// The API host, e.g. `https://my123456-api.s4hana.cloud.sap`.
    pub base_url: String,
    /// The communication user (Basic auth).
    pub username: String,
    /// Where its password is: `file:<path>` or `env:<NAME>`.
    pub password_ref: String,
    /// Only these tenants' cases are posted; empty: every tenant.
    pub tenants: Vec<String>,
    /// `CreditMemoRequestType`, e.g. `CR` (never `CBAR`).
    pub document_type: String,
    pub sales_organization: String,
    pub distribution_channel: String,
    pub division: String,
    /// The `SoldToParty` of a customer not in `customers`.
    pub sold_to_party: String,
    /// A case's `customer_ref` to its SAP business partner.
    pub customers: BTreeMap<String, String>,
    /// The `SDDocumentReason` of a reason code not in `order_reasons`.
    pub order_reason: String,
    /// A return line's reason code to SAP's 3-character order reason (the
    /// case's first line decides, SAP takes one per document).
    pub order_reasons: BTreeMap<String, String>,
    /// The currency of every amount (cases carry minor units, 2 decimals).
    pub currency: String,
    /// The tenant's manual price condition type.
    pub condition_type: String,
    /// The commercial unit of every item, e.g. `PC`.
    pub unit: String,
    /// SKU to SAP material; a SKU not here is sent as it is.
    pub materials: BTreeMap<String, String>,
    /// How often the worker looks for cases and polls the posting status.
    pub poll_interval_ms: u64,
    /// One HTTP call's budget; past it the call is in doubt.
    pub request_timeout_ms: u64,
    /// After a create in doubt, how long the reference must stay absent
    /// before a new create (an in-flight create must have committed). At
    /// least `request_timeout_ms`: SAP may still apply a POST the client
    /// gave up on, and a shorter wait would POST a second credit memo.
    pub settle_ms: u64,
    /// First and longest wait between retries of a failing call
    /// (exponential, full jitter).
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Past this time after processing, a case whose credit memo is not
    /// posted gets its ERP_CONFIRMATION_OVERDUE exception.
    pub overdue_timeout_ms: u64,
}

impl Default for Erp {
    fn default() -> Self {
        Self {
            kind: String::new(),
            base_url: String::new(),
            username: String::new(),
            password_ref: String::new(),
            tenants: Vec::new(),
            document_type: "CR".into(),
            sales_organization: String::new(),
            distribution_channel: String::new(),
            division: String::new(),
            sold_to_party: String::new(),
            customers: BTreeMap::new(),
            order_reason: String::new(),
            order_reasons: BTreeMap::new(),
            currency: String::new(),
            condition_type: String::new(),
            unit: "PC".into(),
            materials: BTreeMap::new(),
            poll_interval_ms: 30_000,
            request_timeout_ms: 10_000,
            settle_ms: 30_000,
            retry_base_ms: 1_000,
            retry_cap_ms: 3_600_000,
            overdue_timeout_ms: 24 * 3_600_000,
        }
    }
}

impl Erp {
    pub fn enabled(&self) -> bool {
        !self.kind.is_empty()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let invalid = |message: String| Err(ConfigError::Invalid(format!("[erp] {message}")));
        if self.kind != "sap" {
            return invalid(format!("kind {:?} is not known (sap)", self.kind));
        }
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return invalid("base_url must be an http(s) URL".into());
        }
        if !(self.password_ref.starts_with("file:") || self.password_ref.starts_with("env:")) {
            return invalid("password_ref must be file:<path> or env:<NAME>".into());
        }
        // SAP's field lengths (ERP.md A.2-A.4), checked before anything is sent.
        let fields = [
            ("username", &self.username, 64),
            ("document_type", &self.document_type, 4),
            ("sales_organization", &self.sales_organization, 4),
            ("distribution_channel", &self.distribution_channel, 2),
            ("division", &self.division, 2),
            ("sold_to_party", &self.sold_to_party, 10),
            ("order_reason", &self.order_reason, 3),
            ("currency", &self.currency, 5),
            ("condition_type", &self.condition_type, 4),
            ("unit", &self.unit, 3),
        ];
        for (name, value, max) in fields {
            if value.is_empty() || value.chars().count() > max {
                return invalid(format!("{name} must be 1 to {max} characters"));
            }
        }
        if self.document_type.eq_ignore_ascii_case("CBAR") {
            return invalid(
                "document_type CBAR is a customer return, not a credit memo request".into(),
            );
        }
        let maps = [
            ("customers", &self.customers, 10),
            ("order_reasons", &self.order_reasons, 3),
            ("materials", &self.materials, 40),
        ];
        for (name, map, max) in maps {
            if let Some((from, _)) = map
                .iter()
                .find(|(_, to)| to.is_empty() || to.chars().count() > max)
            {
                return invalid(format!("{name}.{from} must be 1 to {max} characters"));
            }
        }
        super::positive(&[
            ("[erp] poll_interval_ms", self.poll_interval_ms),
            ("[erp] request_timeout_ms", self.request_timeout_ms),
            ("[erp] settle_ms", self.settle_ms),
            ("[erp] retry_base_ms", self.retry_base_ms),
            ("[erp] retry_cap_ms", self.retry_cap_ms),
            ("[erp] overdue_timeout_ms", self.overdue_timeout_ms),
        ])?;
        // A POST the client gave up on may still be applied by SAP; the
        // look-up must not call the reference absent before then.
        if self.settle_ms < self.request_timeout_ms {
            return invalid(format!(
                "settle_ms ({}) must be at least request_timeout_ms ({}): SAP may still apply a create the worker stopped waiting for",
                self.settle_ms, self.request_timeout_ms
            ));
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// The password `password_ref` names. The error names the reference,
    /// never the content.
    pub fn password(&self) -> Result<Secret, String> {
        if let Some(name) = self.password_ref.strip_prefix("env:") {
            return std::env::var(name)
                .map(|value| Secret::new(value.trim().to_owned()))
                .map_err(|_| format!("[erp] password_ref {}: not set", self.password_ref));
        }
        let path = Path::new(self.password_ref.strip_prefix("file:").unwrap_or_default());
        let too_big = std::fs::metadata(path)
            .map(|meta| meta.len() > MAX_PASSWORD_BYTES)
            .map_err(|error| format!("[erp] password_ref {}: {error}", self.password_ref))?;
        if too_big {
            return Err(format!(
                "[erp] password_ref {}: more than {MAX_PASSWORD_BYTES} bytes",
                self.password_ref
            ));
        }
        std::fs::read_to_string(path)
            .map(|value| Secret::new(value.trim().to_owned()))
            .map_err(|error| format!("[erp] password_ref {}: {error}", self.password_ref))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sap() -> Erp {
        Erp {
            kind: "sap".into(),
            base_url: "http://127.0.0.1:1".into(),
            username: "SKULD_COMM_USER".into(),
            password_ref: "env:SKULD_TEST_NO_SUCH_VARIABLE".into(),
            sales_organization: "1710".into(),
            distribution_channel: "10".into(),
            division: "00".into(),
            sold_to_party: "17100001".into(),
            order_reason: "102".into(),
            currency: "USD".into(),
            condition_type: "PMP0".into(),
            ..Erp::default()
        }
    }

    #[test]
    fn no_kind_is_no_erp_and_needs_nothing() {
        assert!(!Erp::default().enabled());
        assert!(Erp::default().validate().is_ok());
    }

    #[test]
    fn sap_needs_its_fields_within_sap_lengths() {
        assert!(sap().validate().is_ok());
        assert!(Erp {
            request_timeout_ms: 500,
            settle_ms: 500,
            ..sap()
        }
        .validate()
        .is_ok());
        let cases: Vec<(Erp, &str)> = vec![
            (
                Erp {
                    kind: "oracle".into(),
                    ..sap()
                },
                "kind",
            ),
            (
                Erp {
                    base_url: "my-host".into(),
                    ..sap()
                },
                "base_url",
            ),
            (
                Erp {
                    password_ref: "hunter2".into(),
                    ..sap()
                },
                "password_ref",
            ),
            (
                Erp {
                    sales_organization: "17100".into(),
                    ..sap()
                },
                "sales_organization",
            ),
            (
                Erp {
                    sold_to_party: String::new(),
                    ..sap()
                },
                "sold_to_party",
            ),
            (
                Erp {
                    document_type: "CBAR".into(),
                    ..sap()
                },
                "CBAR",
            ),
            (
                Erp {
                    materials: BTreeMap::from([("TEE".into(), "M".repeat(41))]),
                    ..sap()
                },
                "materials.TEE",
            ),
            (
                Erp {
                    poll_interval_ms: 0,
                    ..sap()
                },
                "poll_interval_ms",
            ),
            (
                Erp {
                    settle_ms: 0,
                    ..sap()
                },
                "settle_ms must be greater than 0",
            ),
            (
                Erp {
                    request_timeout_ms: 1_000,
                    settle_ms: 300,
                    ..sap()
                },
                "settle_ms (300) must be at least request_timeout_ms (1000)",
            ),
        ];
        for (erp, named) in cases {
            let error = erp.validate().unwrap_err().to_string();
            assert!(error.contains(named), "{named}: {error}");
        }
    }

    #[test]
    fn a_password_error_names_the_reference_not_the_secret() {
        let dir = std::env::temp_dir().join(format!("skuld-erp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3cret-value\n").unwrap();
        let erp = Erp {
            password_ref: format!("file:{}", file.display()),
            ..sap()
        };
        let secret = erp.password().unwrap();
        assert_eq!(secret.expose(), "s3cret-value");
        assert!(!format!("{secret:?}").contains("s3cret"));
        let missing = Erp {
            password_ref: format!("file:{}", dir.join("nope").display()),
            ..sap()
        };
        assert!(missing.password().unwrap_err().contains("nope"));
        let unset = sap().password().unwrap_err();
        assert!(unset.contains("SKULD_TEST_NO_SUCH_VARIABLE"), "{unset}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
