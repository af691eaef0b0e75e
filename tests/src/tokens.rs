//! Test bearer tokens: ES256 signing keys (rcgen P-256 pairs), the JWKS
//! file a node verifies them with, and tokens with the claims skuld reads.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::metadata::MetadataValue;

use crate::certs::write_replacing;

/// The issuer and audience tokens are minted for unless a test says
/// otherwise.
pub const ISSUER: &str = "skuld-test";
pub const AUDIENCE: &str = "skuld";

/// One signing key and its public JWK.
pub struct SigningKey {
    kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

impl SigningKey {
    /// A new P-256 key under `kid`.
    pub fn new(kid: &str) -> anyhow::Result<Self> {
        let pair = rcgen::KeyPair::generate()?;
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        Ok(Self {
            kid: kid.to_owned(),
            key,
            jwk,
        })
    }

    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// A token of `claims`, signed with this key, its header naming it.
    pub fn sign(&self, claims: &serde_json::Value) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }

    /// A token for `sub` acting for `tenants` with `roles`, valid for ten
    /// minutes.
    pub fn token(&self, sub: &str, tenants: &[&str], roles: &[&str]) -> anyhow::Result<String> {
        self.sign(&Claims::new(sub, tenants, roles).into_json())
    }
}

/// The claims of a test token, to change before signing.
#[derive(Debug, Clone)]
pub struct Claims {
    pub sub: String,
    pub tenants: Vec<String>,
    pub roles: Vec<String>,
    pub iss: String,
    pub aud: String,
    /// Seconds from now (negative: already expired).
    pub expires_in: i64,
}

impl Claims {
    pub fn new(sub: &str, tenants: &[&str], roles: &[&str]) -> Self {
        Self {
            sub: sub.to_owned(),
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            expires_in: 600,
        }
    }

    pub fn into_json(self) -> serde_json::Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs() as i64);
        serde_json::json!({
            "sub": self.sub,
            "tenants": self.tenants,
            "roles": self.roles,
            "iss": self.iss,
            "aud": self.aud,
            "iat": now,
            "exp": now + self.expires_in,
        })
    }
}

/// Writes the public keys of `keys` as a JWKS file, replacing it in place
/// by a rename (a rotation).
pub fn write_jwks(path: &Path, keys: &[&SigningKey]) -> anyhow::Result<()> {
    let set = JwkSet {
        keys: keys.iter().map(|key| key.jwk.clone()).collect(),
    };
    let text = serde_json::to_string_pretty(&set).context("cannot encode the JWKS")?;
    write_replacing(path, &text)
}

/// `message` as a request with `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer {token}"))
        .context("a token that is no header value")?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}
