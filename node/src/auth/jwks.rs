//! The JSON Web Key Set that signs callers' tokens: loaded from a file,
//! verified against in memory, and re-read while the node runs.
//!
//! Each key's algorithm comes from the key (its `alg`, or its curve where
//! that decides it), never from a token's header: a token whose header
//! names another algorithm is refused. Symmetric (`oct`, HS*) keys are not
//! accepted: a key set is public material, and a shared secret in it would
//! make every reader of the file a token issuer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{bail, Context as _};
use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use skuld_cluster::tls::FileStamp;

use super::principal::Claims;
use super::Rejection;

/// Counter of the JWKS file's reloads, by `outcome`: `loaded` (a set with
/// keys), `empty` (a well-formed set with no usable key: every token is
/// refused), `unusable` (not a key set; the last good one is kept),
/// `unreadable` (the file cannot be read; the last good one is kept).
pub const JWKS_RELOADS: &str = "skuld_jwks_reloads_total";

/// A token longer than this is refused before it is parsed: real ones are
/// well under 2 KiB, and parsing costs in proportion.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What a token must say besides a good signature.
#[derive(Debug, Clone)]
pub struct TokenRules {
    pub audience: String,
    /// Empty: any issuer.
    pub issuers: Vec<String>,
    pub leeway_secs: u64,
}

impl TokenRules {
    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.audience]);
        let mut required = vec!["exp", "aud", "sub"];
        if !self.issuers.is_empty() {
            validation.set_issuer(&self.issuers);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

struct VerifyingKey {
    key: DecodingKey,
    /// Allows exactly the key's own algorithm.
    validation: Validation,
}

/// One version of the key set, by key id.
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
}

impl KeySet {
    /// Parses a JWKS document. A key that cannot be used (no `kid`, an
    /// encryption key, an unsupported or symmetric algorithm) is skipped,
    /// and said so in the returned notes; a document with two keys of one
    /// `kid` is refused whole. A well-formed document with no usable key is
    /// an empty set (every key revoked), which refuses every token. Error
    /// texts never quote the document, so they hold no key material.
    pub fn parse(bytes: &[u8], rules: &TokenRules) -> anyhow::Result<(Self, Vec<String>)> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(bytes).map_err(|error| {
            anyhow::anyhow!(
                "not a JSON Web Key Set ({:?} at line {}, column {})",
                error.classify(),
                error.line(),
                error.column()
            )
        })?;
        let mut keys = HashMap::new();
        let mut notes = Vec::new();
        for (index, value) in document.keys.into_iter().enumerate() {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                notes.push(format!("key {index} skipped: not a JWK this build reads"));
                continue;
            };
            let Some(kid) = jwk.common.key_id.clone().filter(|kid| !kid.is_empty()) else {
                notes.push(format!("key {index} skipped: it has no kid"));
                continue;
            };
            match verifying_key(&jwk, rules) {
                Ok(key) => {
                    if keys.insert(kid.clone(), key).is_some() {
                        bail!("two keys have kid {kid:?}");
                    }
                }
                Err(why) => notes.push(format!("key {kid:?} skipped: {why}")),
            }
        }
        Ok((Self { keys }, notes))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// The token's claims if one of these keys signed it and it passes the
    /// rules (expiry, audience, issuer).
    pub fn verify(&self, token: &str) -> Result<Claims, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::Invalid("token too long"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Rejection::Invalid("malformed token"))?;
        let kid = header
            .kid
            .ok_or(Rejection::Invalid("token header has no kid"))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or(Rejection::Invalid("unknown kid"))?;
        jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => Rejection::Expired,
                ErrorKind::InvalidSignature => Rejection::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm => {
                    Rejection::Invalid("header alg differs from the key's")
                }
                ErrorKind::InvalidAudience => Rejection::Invalid("wrong audience"),
                ErrorKind::InvalidIssuer => Rejection::Invalid("issuer not accepted"),
                ErrorKind::ImmatureSignature => Rejection::Invalid("not valid yet (nbf)"),
                ErrorKind::MissingRequiredClaim(_) => {
                    Rejection::Invalid("a required claim is missing")
                }
                ErrorKind::Json(_) | ErrorKind::InvalidClaimFormat(_) => {
                    Rejection::Invalid("malformed claims")
                }
                _ => Rejection::Invalid("token does not verify"),
            })
    }
}

/// The algorithm `jwk` verifies with, checked against its key type.
fn algorithm(jwk: &Jwk) -> Result<Algorithm, &'static str> {
    let params = &jwk.algorithm;
    if matches!(params, AlgorithmParameters::OctetKey(_)) {
        return Err("symmetric keys are not accepted");
    }
    let algorithm = match (jwk.common.key_algorithm, params) {
        (Some(KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512), _) => {
            return Err("symmetric keys are not accepted")
        }
        (Some(named), _) => {
            Algorithm::try_from(named).map_err(|_| "its alg is not a signature algorithm")?
        }
        // Where the curve decides the algorithm, alg may be left out.
        (None, AlgorithmParameters::EllipticCurve(ec)) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err("unsupported curve"),
        },
        (None, AlgorithmParameters::OctetKeyPair(okp)) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        (None, AlgorithmParameters::RSA(_)) => return Err("an RSA key must name its alg"),
        (None, _) => return Err("unsupported key type"),
    };
    let fits = match (algorithm, params) {
        (Algorithm::ES256, AlgorithmParameters::EllipticCurve(ec)) => {
            ec.curve == EllipticCurve::P256
        }
        (Algorithm::ES384, AlgorithmParameters::EllipticCurve(ec)) => {
            ec.curve == EllipticCurve::P384
        }
        (Algorithm::EdDSA, AlgorithmParameters::OctetKeyPair(okp)) => {
            okp.curve == EllipticCurve::Ed25519
        }
        (
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
            AlgorithmParameters::RSA(_),
        ) => true,
        _ => false,
    };
    if !fits {
        return Err("its alg does not fit its key type or curve");
    }
    Ok(algorithm)
}

fn verifying_key(jwk: &Jwk, rules: &TokenRules) -> Result<VerifyingKey, &'static str> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|usage| *usage != PublicKeyUse::Signature)
    {
        return Err("it is not a signature key (use)");
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|operations| !operations.contains(&KeyOperations::Verify))
    {
        return Err("its key_ops do not include verify");
    }
    let algorithm = algorithm(jwk)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "its key parameters are malformed")?;
    Ok(VerifyingKey {
        key,
        validation: rules.validation(algorithm),
    })
}

/// The key set in force, swapped whole when the file changes.
pub struct Jwks {
    path: PathBuf,
    rules: TokenRules,
    current: ArcSwap<KeySet>,
    /// Reloads tried since the start, whatever their outcome.
    reloads: AtomicU64,
}

impl Jwks {
    /// Reads and parses `path`, then re-reads it every `every` for as long
    /// as the returned handle lives. A node does not start with a set of no
    /// usable key; one running takes such a set (its keys revoked).
    pub fn start(path: &Path, rules: TokenRules, every: Duration) -> anyhow::Result<Arc<Self>> {
        let stamp = FileStamp::of(&[path]);
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (keys, notes) = KeySet::parse(&bytes, &rules)
            .with_context(|| format!("{} is unusable", path.display()))?;
        if keys.is_empty() {
            bail!(
                "{} has no usable key ({})",
                path.display(),
                notes.join("; ")
            );
        }
        for note in &notes {
            tracing::warn!(path = %path.display(), "JWKS: {note}");
        }
        tracing::info!(path = %path.display(), kids = ?keys.kids(), "JWKS loaded");
        let jwks = Arc::new(Self {
            path: path.to_owned(),
            rules,
            current: ArcSwap::from_pointee(keys),
            reloads: AtomicU64::new(0),
        });
        tokio::spawn(watch(Arc::downgrade(&jwks), stamp, every));
        Ok(jwks)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, Rejection> {
        self.current.load().verify(token)
    }

    /// Reloads tried since the start.
    #[cfg(test)]
    fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Acquire)
    }

    /// Takes `bytes` as the new key set, even one of no usable key (every
    /// key revoked), or keeps the one in force when they are no key set.
    fn replace(&self, bytes: &[u8]) {
        let path = self.path.display();
        let outcome = match KeySet::parse(bytes, &self.rules) {
            Ok((keys, notes)) => {
                for note in &notes {
                    tracing::warn!(%path, "JWKS: {note}");
                }
                let outcome = if keys.is_empty() {
                    tracing::error!(
                        %path,
                        "JWKS file has no usable key: every token is refused until it has one"
                    );
                    "empty"
                } else {
                    tracing::info!(%path, kids = ?keys.kids(), "JWKS reloaded");
                    "loaded"
                };
                self.current.store(Arc::new(keys));
                outcome
            }
            Err(error) => {
                tracing::warn!(
                    %path,
                    error = %format!("{error:#}"),
                    kept = self.current.load().len(),
                    "JWKS file changed but is unusable: keeping the last good key set"
                );
                "unusable"
            }
        };
        self.reloaded(outcome);
    }

    fn reloaded(&self, outcome: &'static str) {
        metrics::counter!(JWKS_RELOADS, "outcome" => outcome).increment(1);
        self.reloads.fetch_add(1, Ordering::Release);
    }
}

/// Looks at the file every `every` and reloads it when its stamp
/// (modification time and size, through symlinks, so a Kubernetes Secret's
/// `..data` swap counts) changed. Each change is tried once, good or not:
/// a broken file is warned about once, not at every look. Ends when the key
/// set is no longer used.
async fn watch(jwks: Weak<Jwks>, mut stamp: FileStamp, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(jwks) = jwks.upgrade() else {
            return;
        };
        let now = FileStamp::of(&[&jwks.path]);
        if now == stamp {
            continue;
        }
        stamp = now;
        match std::fs::read(&jwks.path) {
            Ok(bytes) => jwks.replace(&bytes),
            Err(error) => {
                tracing::warn!(
                    path = %jwks.path.display(),
                    %error,
                    "cannot read the JWKS file: keeping the last good key set"
                );
                jwks.reloaded("unreadable");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn rules() -> TokenRules {
        TokenRules {
            audience: "skuld".into(),
            issuers: vec!["skuld-test".into()],
            leeway_secs: 0,
        }
    }

    struct Signer {
        kid: String,
        key: EncodingKey,
        jwk: Jwk,
    }

    fn signer(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate().unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.into());
        Signer {
            kid: kid.into(),
            key,
            jwk,
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(signer: &Signer, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(signer.kid.clone());
        encode(&header, &claims, &signer.key).unwrap()
    }

    fn good_claims() -> serde_json::Value {
        serde_json::json!({
            "sub": "svc-oms", "iss": "skuld-test", "aud": "skuld", "exp": now() + 600,
            "tenants": ["acme"], "roles": ["writer"]
        })
    }

    fn set(jwks: &[&Jwk]) -> KeySet {
        let bytes = serde_json::to_vec(&serde_json::json!({ "keys": jwks })).unwrap();
        KeySet::parse(&bytes, &rules()).unwrap().0
    }

    #[test]
    fn a_good_token_verifies_and_others_are_refused() {
        let k1 = signer("k1");
        let keys = set(&[&k1.jwk]);
        let claims = keys.verify(&token(&k1, good_claims())).unwrap();
        assert_eq!(claims.sub, "svc-oms");
        assert_eq!(claims.tenants, ["acme"]);

        let mut expired = good_claims();
        expired["exp"] = (now() - 60).into();
        assert_eq!(
            keys.verify(&token(&k1, expired)).unwrap_err(),
            Rejection::Expired
        );

        let mut refused = Vec::new();
        for (change, value) in [
            ("aud", serde_json::json!("other")),
            ("iss", serde_json::json!("someone-else")),
            ("nbf", serde_json::json!(now() + 600)),
        ] {
            let mut claims = good_claims();
            claims[change] = value;
            refused.push(token(&k1, claims));
        }
        for missing in ["exp", "sub", "aud", "iss"] {
            let mut claims = good_claims();
            claims.as_object_mut().unwrap().remove(missing);
            refused.push(token(&k1, claims));
        }
        // Another key under the same kid: a bad signature.
        let impostor = signer("k1");
        refused.push(token(&impostor, good_claims()));
        // A kid not in the set.
        refused.push(token(&signer("k9"), good_claims()));
        refused.push("not.a.token".into());
        refused.push("x".repeat(MAX_TOKEN_BYTES + 1));
        for token in refused {
            assert!(
                matches!(keys.verify(&token), Err(Rejection::Invalid(_))),
                "{token}"
            );
        }
    }

    #[test]
    fn the_algorithm_comes_from_the_key_not_the_token() {
        let k1 = signer("k1");
        let keys = set(&[&k1.jwk]);
        // An HS256 token "signed" with the public key's bytes, the classic
        // confusion: the header's alg is not the key's, so it is refused.
        let secret = EncodingKey::from_secret(k1.jwk_x().as_bytes()).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let forged = encode(&header, &good_claims(), &secret).unwrap();
        assert_eq!(
            keys.verify(&forged).unwrap_err(),
            Rejection::Invalid("header alg differs from the key's")
        );
    }

    impl Signer {
        fn jwk_x(&self) -> String {
            match &self.jwk.algorithm {
                AlgorithmParameters::EllipticCurve(ec) => ec.x.clone(),
                _ => String::new(),
            }
        }
    }

    #[test]
    fn unusable_keys_are_skipped_and_unusable_sets_refused() {
        let k1 = signer("k1");
        let mut no_kid = signer("x").jwk;
        no_kid.common.key_id = None;
        let mut encryption = signer("enc").jwk;
        encryption.common.public_key_use = Some(PublicKeyUse::Encryption);
        let mut wrong_alg = signer("rs").jwk;
        wrong_alg.common.key_algorithm = Some(KeyAlgorithm::RS256);
        let secret =
            serde_json::json!({"kty": "oct", "kid": "hs", "alg": "HS256", "k": "c2VjcmV0c2VjcmV0"});
        let bytes = serde_json::to_vec(&serde_json::json!({
            "keys": [k1.jwk, no_kid, encryption, wrong_alg, secret, {"kty": "weird"}]
        }))
        .unwrap();
        let (keys, notes) = KeySet::parse(&bytes, &rules()).unwrap();
        assert_eq!(keys.kids(), ["k1"]);
        assert_eq!(notes.len(), 5, "{notes:?}");
        assert!(
            notes.iter().all(|note| !note.contains("c2VjcmV0")),
            "{notes:?}"
        );

        for broken in [
            b"{\"keys\": \"c2VjcmV0\"}".to_vec(),
            b"not json".to_vec(),
            serde_json::to_vec(&serde_json::json!({"keys": [k1.jwk, k1.jwk]})).unwrap(),
        ] {
            let error = KeySet::parse(&broken, &rules()).err().unwrap();
            assert!(!format!("{error:#}").contains("c2VjcmV0"), "{error:#}");
        }
        // Well-formed with no usable key: an empty set, not an error.
        for empty in [
            serde_json::json!({"keys": []}),
            serde_json::json!({"keys": [{"kty": "weird"}]}),
        ] {
            let (keys, _) = KeySet::parse(&serde_json::to_vec(&empty).unwrap(), &rules()).unwrap();
            assert_eq!(keys.len(), 0);
            assert!(keys.verify(&token(&k1, good_claims())).is_err());
        }
    }

    #[tokio::test]
    async fn a_rotated_file_is_picked_up_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (old, new) = (signer("old"), signer("new"));
        let write = |jwks: serde_json::Value| {
            std::fs::write(&path, serde_json::to_vec(&jwks).unwrap()).unwrap();
        };
        write(serde_json::json!({ "keys": [old.jwk] }));
        let jwks = Jwks::start(&path, rules(), Duration::from_millis(20)).unwrap();
        let (old_token, new_token) = (token(&old, good_claims()), token(&new, good_claims()));
        assert!(jwks.verify(&old_token).is_ok() && jwks.verify(&new_token).is_err());

        write(serde_json::json!({ "keys": [new.jwk] }));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while jwks.verify(&new_token).is_err() {
            assert!(std::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(jwks.verify(&old_token).is_err());

        // A broken file: the reload is tried, and the last good set kept.
        let tried = jwks.reloads();
        std::fs::write(&path, b"{ broken").unwrap();
        wait_for_reload(&jwks, tried).await;
        assert!(jwks.verify(&new_token).is_ok());

        // So is a file that cannot be read (gone).
        let tried = jwks.reloads();
        std::fs::remove_file(&path).unwrap();
        wait_for_reload(&jwks, tried).await;
        assert!(jwks.verify(&new_token).is_ok());
    }

    async fn wait_for_reload(jwks: &Jwks, since: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while jwks.reloads() == since {
            assert!(std::time::Instant::now() < deadline, "no reload tried");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn every_key_can_be_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let k1 = signer("k1");
        std::fs::write(
            &path,
            serde_json::to_vec(&serde_json::json!({ "keys": [k1.jwk] })).unwrap(),
        )
        .unwrap();
        let jwks = Jwks::start(&path, rules(), Duration::from_millis(20)).unwrap();
        let token = token(&k1, good_claims());
        assert!(jwks.verify(&token).is_ok());

        let tried = jwks.reloads();
        std::fs::write(&path, b"{\"keys\": []}").unwrap();
        wait_for_reload(&jwks, tried).await;
        assert_eq!(
            jwks.verify(&token).unwrap_err(),
            Rejection::Invalid("unknown kid")
        );

        // A node does not start on such a set.
        assert!(Jwks::start(&path, rules(), Duration::from_secs(60)).is_err());
    }
}
