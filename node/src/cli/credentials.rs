//! What the CLI proves itself with: a bearer token (`--token`,
//! `SKULD_TOKEN`, `--token-file`) sent as sensitive metadata, and TLS to an
//! https:// endpoint (`--tls-ca-file`, and a client certificate with
//! `--tls-cert-file`/`--tls-key-file`). A token is never printed: not by
//! `--help` (its variable's value is hidden), not in `Debug`, not in an
//! error.

use std::convert::Infallible;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::call::fail;

/// A bearer token given on the command line or in the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl FromStr for Token {
    type Err = Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// The `authorization` value of every call, when a token was given:
/// marked sensitive, so tonic and hyper keep it out of their debug output.
pub(super) fn authorization(
    credentials: &CredentialArgs,
) -> anyhow::Result<Option<AsciiMetadataValue>> {
    let token = match (&credentials.token, &credentials.token_file) {
        (Some(token), _) => token.0.clone(),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|error| {
            fail(format!(
                "cannot read the token file {}: {error}",
                path.display()
            ))
        })?,
        (None, None) => return Ok(None),
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(fail("the bearer token is empty".into()));
    }
    let mut value = AsciiMetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| fail("the bearer token holds characters a header cannot carry".into()))?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// The TLS configuration for `endpoint`: `None` for http://. An https://
/// endpoint needs `--tls-ca-file`: this build carries no system roots, and
/// the CA of a skuld deployment is the operator's own.
pub(super) fn tls(
    endpoint: &str,
    credentials: &CredentialArgs,
) -> anyhow::Result<Option<ClientTlsConfig>> {
    let https = endpoint
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
    let flags = credentials.tls_ca_file.is_some()
        || credentials.tls_cert_file.is_some()
        || credentials.tls_key_file.is_some();
    if !https {
        if flags {
            return Err(fail(format!(
                "--tls-* flags need an https:// endpoint, not {endpoint}"
            )));
        }
        return Ok(None);
    }
    let identity = match (&credentials.tls_cert_file, &credentials.tls_key_file) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(fail(
                "--tls-cert-file and --tls-key-file go together".into(),
            ))
        }
    };
    let ca = credentials.tls_ca_file.as_deref().ok_or_else(|| {
        fail(
            "an https:// endpoint needs --tls-ca-file (the CA that signs the node's certificate)"
                .into(),
        )
    })?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(config))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| fail(format!("cannot read {}: {error}", path.display())))
}

/// The CLI's flags for tokens and TLS, for [`ClientOptions`].
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CredentialArgs {
    /// Bearer token sent with every call (`authorization: Bearer ...`); never printed.
    #[arg(
        long,
        global = true,
        env = "SKULD_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<Token>,
    /// File holding the bearer token (e.g. a mounted secret).
    #[arg(long, global = true, env = "SKULD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle that signs the node's certificate (https:// endpoints).
    #[arg(long, global = true, env = "SKULD_CLI_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate presented to the node (a service identity).
    #[arg(long, global = true, env = "SKULD_CLI_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, global = true, env = "SKULD_CLI_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_sent_sensitive_and_never_shown() {
        let credentials = CredentialArgs {
            token: Some(" s3cret.token.x \n".parse().unwrap()),
            ..CredentialArgs::default()
        };
        assert!(!format!("{credentials:?}").contains("s3cret"));
        let value = authorization(&credentials).unwrap().unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "Bearer s3cret.token.x");
        assert!(!format!("{value:?}").contains("s3cret"));
        assert!(authorization(&CredentialArgs::default()).unwrap().is_none());
    }

    #[test]
    fn tls_flags_fit_the_endpoint() {
        let none = CredentialArgs::default();
        assert!(tls("http://127.0.0.1:7070", &none).unwrap().is_none());
        assert!(tls("https://127.0.0.1:7070", &none).is_err());
        let ca = CredentialArgs {
            tls_ca_file: Some("/nonexistent/ca.crt".into()),
            ..CredentialArgs::default()
        };
        assert!(tls("http://127.0.0.1:7070", &ca).is_err());
        // Named, unreadable.
        assert!(tls("https://127.0.0.1:7070", &ca).is_err());
        let half = CredentialArgs {
            tls_cert_file: Some("/nonexistent/client.crt".into()),
            ..CredentialArgs::default()
        };
        assert!(tls("https://127.0.0.1:7070", &half).is_err());
    }
}
