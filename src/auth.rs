//! Bearer-token authentication: JWT verification with the algorithm pinned by the configured
//! key, and the `role` claim turned into a [`Principal`].
//!
//! Accepted: HS256 with a shared secret, or RS256 / ES256 (P-256) / EdDSA (Ed25519) with public
//! keys from a PEM file (one or more `PUBLIC KEY` blocks) or a JWKS file. A token is accepted
//! only if its header's `alg` is the algorithm of a configured key; `alg: none` and algorithm
//! confusion (an HS256 token checked against a public key) are therefore impossible. `exp` is
//! required; `iss` and `aud` are checked when configured.
//!
//! The protected header must not carry `crit` (RFC 7515 §4.1.11: a recipient must reject a JWS
//! whose critical extensions it does not understand, and Custodia understands none) nor `b64`
//! (RFC 7797, unencoded payloads, only meaningful under `crit`), and must not repeat a member
//! name (RFC 7515 §4: reject or keep the last; we reject). Other unknown header members are
//! ignored, as RFC 7515 §4 requires. An optional maximum lifetime bounds `exp - iat` and
//! `exp - now` (see [`Authenticator::with_max_lifetime`]).

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::{Principal, Role};

/// The longest `sub` accepted; it is recorded in every audit event of the caller.
const MAX_SUB_LEN: usize = 256;
/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
const LEEWAY_SECS: u64 = 30;
/// Header members that change how a JWS must be processed and that Custodia does not implement:
/// a token carrying any of them is refused, whatever its value.
const REFUSED_HEADER_MEMBERS: [&str; 2] = ["crit", "b64"];

/// Why a token was refused. Only the code reaches the audit log; nothing of the token does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// The token is malformed, badly signed, of a wrong algorithm or fails a claim check.
    #[error("invalid token")]
    Invalid,
    /// The token's `exp` has passed.
    #[error("expired token")]
    Expired,
}

impl AuthError {
    /// The reason code recorded in `auth.denied` events.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Invalid => "token_invalid",
            AuthError::Expired => "token_expired",
        }
    }
}

/// The configured verification keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("JWT key configuration: {0}")]
pub struct KeyConfigError(String);

struct VerifyingKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens against the configured keys.
pub struct Authenticator {
    keys: Vec<VerifyingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    max_lifetime_secs: Option<u64>,
    /// One [`Validation`] per algorithm of `keys`, built from `issuer` and `audience` whenever
    /// either changes, so `verify` allocates none (it used to build one per token).
    /// invariant: holds an entry for the algorithm of every key in `keys`.
    validations: Vec<(Algorithm, Validation)>,
    /// Tokens that passed every check, by the SHA-256 of their text (the token itself, a
    /// credential, is not kept), with the caller they name and their `exp`. A client sends the
    /// same token with every request, and verifying it again (header and claims parsed, the
    /// signature checked) was 6 % of a read's CPU.
    /// invariant: emptied whenever a setting that `verify` checks changes.
    verified: VerifiedTokens,
}

/// How many verified tokens [`Authenticator`] remembers (each 100–400 bytes: a `sub` is at most 256).
const VERIFIED_TOKENS: usize = 10_000;

/// The verified-token cache of an [`Authenticator`].
///
/// Every check but `exp` only gets easier to pass as time goes on (`nbf`, `iat` in the future,
/// the lifetime left under the maximum), so a token that passed them once passes them later;
/// `exp` is checked again on every use, with the same leeway as `jsonwebtoken`.
struct VerifiedTokens(quick_cache::sync::Cache<[u8; 32], (Principal, u64)>);

impl VerifiedTokens {
    fn new() -> Self {
        VerifiedTokens(quick_cache::sync::Cache::new(VERIFIED_TOKENS))
    }

    /// The caller of a token verified before, or why it is refused now; `None` when unknown.
    fn get(&self, digest: &[u8; 32], now: u64) -> Option<Result<Principal, AuthError>> {
        let (principal, exp) = self.0.get(digest)?;
        if exp < now.saturating_sub(LEEWAY_SECS) {
            self.0.remove(digest);
            return Some(Err(AuthError::Expired));
        }
        Some(Ok(principal))
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<_> = self.keys.iter().map(|k| k.alg).collect();
        f.debug_struct("Authenticator").field("algorithms", &algs).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    role: Option<String>,
    // Read only under a maximum lifetime; kept as raw JSON so that without one any value
    // passes (a repeated `iat` is refused, as RFC 7519 §4 allows). jsonwebtoken checks `exp`.
    iat: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
}

impl Authenticator {
    /// An authenticator for HS256 tokens signed with `secret`.
    pub fn hs256(secret: &SecretString) -> Result<Self, KeyConfigError> {
        let bytes = secret.expose_secret().as_bytes();
        if bytes.len() < 32 {
            return Err(KeyConfigError("the HS256 secret must be at least 32 bytes".into()));
        }
        Ok(Authenticator::new(vec![VerifyingKey {
            kid: None,
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(bytes),
        }]))
    }

    /// An authenticator for public keys in a PEM or JWKS file.
    pub fn public_keys(path: &Path) -> Result<Self, KeyConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyConfigError(format!("cannot read {}: {e}", path.display())))?;
        let keys = if text.trim_start().starts_with('{') { jwks_keys(&text)? } else { pem_keys(&text)? };
        if keys.is_empty() {
            return Err(KeyConfigError(format!("{} holds no usable public key", path.display())));
        }
        Ok(Authenticator::new(keys))
    }

    fn new(keys: Vec<VerifyingKey>) -> Self {
        let mut auth = Authenticator {
            keys,
            issuer: None,
            audience: None,
            max_lifetime_secs: None,
            validations: Vec::new(),
            verified: VerifiedTokens::new(),
        };
        auth.build_validations();
        auth
    }

    /// Requires `iss` to equal `issuer`.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self.build_validations();
        self
    }

    /// Requires `aud` to contain `audience`.
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience;
        self.build_validations();
        self
    }

    /// Bounds how long a token may live, in whole seconds; `None` (or zero) turns the bound off.
    /// With a bound `max`, a token must carry a numeric `iat` no later than now + 30 s, and both
    /// `exp - iat` and `exp - now` must be at most `max` (the latter with the same 30 s of
    /// leeway); otherwise it is [`AuthError::Invalid`]. A stolen long-lived token is thereby
    /// refused even when the issuer minted it.
    pub fn with_max_lifetime(mut self, max: Option<Duration>) -> Self {
        self.max_lifetime_secs = max.map(|d| d.as_secs()).filter(|&secs| secs > 0);
        self.verified = VerifiedTokens::new();
        self
    }

    /// Verifies a token and returns the caller it names. A token verified before is only
    /// checked for expiry again (see [`VerifiedTokens`]).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let digest = crate::crypto::sha256(&[token.as_bytes()]);
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(known) = self.verified.get(&digest, now) {
            return known;
        }
        let (principal, exp) = self.verify_anew(token)?;
        self.verified.0.insert(digest, (principal.clone(), exp));
        Ok(principal)
    }

    /// Every check of a token, with its `exp` as whole seconds.
    fn verify_anew(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        check_header_members(token)?;
        let mut last = AuthError::Invalid;
        let candidates = self.keys.iter().filter(|k| {
            k.alg == header.alg
                && match (&k.kid, &header.kid) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        });
        for key in candidates {
            let Some((_, validation)) = self.validations.iter().find(|(alg, _)| *alg == key.alg) else {
                // Unreachable by the invariant on `validations`; refusing is the safe answer.
                continue;
            };
            match jsonwebtoken::decode::<Claims>(token, &key.key, validation) {
                Ok(data) => {
                    self.check_lifetime(&data.claims)?;
                    // invariant: jsonwebtoken has required and parsed `exp` as an integer.
                    let exp = data.claims.exp.as_ref().and_then(numeric_date).ok_or(AuthError::Invalid)?;
                    return principal(data.claims).map(|p| (p, exp));
                }
                Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => {
                    last = AuthError::Expired;
                }
                Err(_) => {}
            }
        }
        Err(last)
    }

    /// Rebuilds `validations` from the keys' algorithms and the configured `iss` / `aud`.
    fn build_validations(&mut self) {
        self.verified = VerifiedTokens::new();
        let mut validations: Vec<(Algorithm, Validation)> = Vec::new();
        for key in &self.keys {
            if !validations.iter().any(|(alg, _)| *alg == key.alg) {
                validations.push((key.alg, self.validation(key.alg)));
            }
        }
        self.validations = validations;
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        // A configured issuer or audience must also be present: jsonwebtoken only compares
        // the claims a token carries unless they are required.
        let mut required = vec!["exp"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.leeway = LEEWAY_SECS;
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        v
    }

    /// The maximum lifetime check (see [`Authenticator::with_max_lifetime`]); a no-op without one.
    fn check_lifetime(&self, claims: &Claims) -> Result<(), AuthError> {
        let Some(max) = self.max_lifetime_secs else {
            return Ok(());
        };
        let now = jsonwebtoken::get_current_timestamp();
        let iat = claims.iat.as_ref().and_then(numeric_date).ok_or(AuthError::Invalid)?;
        let exp = claims.exp.as_ref().and_then(numeric_date).ok_or(AuthError::Invalid)?;
        let issued_in_future = iat > now.saturating_add(LEEWAY_SECS);
        // exp before iat is no lifetime at all: refused too.
        let too_long = exp.checked_sub(iat).is_none_or(|lifetime| lifetime > max);
        let lasts_too_long = exp.saturating_sub(now) > max.saturating_add(LEEWAY_SECS);
        if issued_in_future || too_long || lasts_too_long {
            return Err(AuthError::Invalid);
        }
        Ok(())
    }
}

/// A JWT NumericDate (RFC 7519 §2) as whole seconds: a non-negative integer, or a finite
/// non-negative number rounded as jsonwebtoken rounds `exp`.
fn numeric_date(value: &serde_json::Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        let f = value.as_f64()?;
        (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
    })
}

/// Refuses a token whose protected header repeats a member name or carries a member of
/// [`REFUSED_HEADER_MEMBERS`]. jsonwebtoken parses `crit` but never acts on it.
fn check_header_members(token: &str) -> Result<(), AuthError> {
    let encoded = token.split('.').next().ok_or(AuthError::Invalid)?;
    let json = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| AuthError::Invalid)?;
    let mut de = serde_json::Deserializer::from_slice(&json);
    let names = serde::Deserializer::deserialize_map(&mut de, MemberNames).map_err(|_| AuthError::Invalid)?;
    if names.iter().any(|name| REFUSED_HEADER_MEMBERS.contains(&name.as_str())) {
        return Err(AuthError::Invalid);
    }
    Ok(())
}

/// Reads a JSON object's member names, failing on a repeated one; values are skipped.
struct MemberNames;

impl<'de> serde::de::Visitor<'de> for MemberNames {
    type Value = HashSet<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with unique member names")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut names = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            map.next_value::<serde::de::IgnoredAny>()?;
            if !names.insert(name) {
                return Err(serde::de::Error::custom("repeated member name"));
            }
        }
        Ok(names)
    }
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    let role = claims.role.as_deref().and_then(Role::from_claim).ok_or(AuthError::Invalid)?;
    let sub = claims.sub.ok_or(AuthError::Invalid)?;
    if sub.is_empty() || sub.len() > MAX_SUB_LEN || sub.chars().any(char::is_control) {
        return Err(AuthError::Invalid);
    }
    Ok(Principal { role, sub: Some(sub) })
}

fn pem_keys(text: &str) -> Result<Vec<VerifyingKey>, KeyConfigError> {
    const BEGIN: &str = "-----BEGIN ";
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start..];
        let end_marker =
            block.find("-----END ").ok_or_else(|| KeyConfigError("unterminated PEM block".into()))?;
        let end = block[end_marker + 9..]
            .find("-----")
            .map(|i| end_marker + 9 + i + 5)
            .ok_or_else(|| KeyConfigError("unterminated PEM block".into()))?;
        let pem = &block.as_bytes()[..end];
        let key = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            VerifyingKey { kid: None, alg: Algorithm::RS256, key: k }
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            VerifyingKey { kid: None, alg: Algorithm::ES256, key: k }
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            VerifyingKey { kid: None, alg: Algorithm::EdDSA, key: k }
        } else {
            return Err(KeyConfigError("a PEM block is not an RSA, P-256 or Ed25519 public key".into()));
        };
        keys.push(key);
        rest = &block[end..];
    }
    Ok(keys)
}

fn jwks_keys(text: &str) -> Result<Vec<VerifyingKey>, KeyConfigError> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| KeyConfigError(format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
            _ => {
                return Err(KeyConfigError(
                    "JWKS keys must be RSA, EC P-256 or OKP Ed25519 public keys".into(),
                ));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyConfigError(format!("bad JWK: {e}")))?;
        keys.push(VerifyingKey { kid: jwk.common.key_id.clone(), alg, key });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "unit-test-secret-unit-test-secret-0123";

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn hs256() -> Authenticator {
        Authenticator::hs256(&SecretString::from(SECRET)).unwrap()
    }

    #[test]
    fn issuer_and_audience_hold_whichever_order_they_are_set_in_and_a_later_setting_replaces_them() {
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let claims = |iss: Option<&str>, aud: Option<&str>| {
            let mut c = json!({ "sub": "shop-backend", "role": "merchant", "exp": exp });
            if let Some(iss) = iss {
                c["iss"] = iss.into();
            }
            if let Some(aud) = aud {
                c["aud"] = aud.into();
            }
            token(c)
        };
        let good = claims(Some("issuer-a"), Some("custodia"));
        let no_iss = claims(None, Some("custodia"));
        let no_aud = claims(Some("issuer-a"), None);
        let other_iss = claims(Some("issuer-b"), Some("custodia"));
        let other_aud = claims(Some("issuer-a"), Some("elsewhere"));
        let iss = || Some("issuer-a".to_owned());
        let aud = || Some("custodia".to_owned());
        for auth in
            [hs256().with_issuer(iss()).with_audience(aud()), hs256().with_audience(aud()).with_issuer(iss())]
        {
            assert!(auth.verify(&good).is_ok());
            for refused in [&no_iss, &no_aud, &other_iss, &other_aud] {
                assert_eq!(auth.verify(refused).unwrap_err(), AuthError::Invalid);
            }
        }
        // A later call replaces the earlier setting in the prepared validation.
        let relaxed = hs256().with_issuer(iss()).with_audience(aud()).with_issuer(None);
        assert!(relaxed.verify(&no_iss).is_ok() && relaxed.verify(&other_iss).is_ok());
        assert_eq!(relaxed.verify(&no_aud).unwrap_err(), AuthError::Invalid);
        let moved = hs256().with_audience(aud()).with_audience(Some("elsewhere".into()));
        assert!(moved.verify(&other_aud).is_ok());
        assert_eq!(
            moved.verify(&no_iss).unwrap_err(),
            AuthError::Invalid,
            "aud custodia is no longer accepted"
        );
    }

    #[test]
    fn one_prepared_validation_serves_every_key_of_an_algorithm() {
        let auth = Authenticator::new(vec![
            VerifyingKey {
                kid: Some("a".into()),
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(b"x"),
            },
            VerifyingKey {
                kid: Some("b".into()),
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(b"y"),
            },
        ])
        .with_issuer(Some("issuer-a".into()));
        assert_eq!(auth.validations.len(), 1);
        assert!(auth.keys.iter().all(|k| auth.validations.iter().any(|(alg, _)| *alg == k.alg)));
    }

    #[test]
    fn a_verified_token_is_remembered_until_its_exp_passes_and_never_for_a_changed_setting() {
        let now = jsonwebtoken::get_current_timestamp();
        let good = token(json!({ "sub": "shop-backend", "role": "merchant", "exp": now + 600 }));
        let auth = hs256();
        assert_eq!(auth.verify(&good).unwrap().sub.as_deref(), Some("shop-backend"));
        let digest = crate::crypto::sha256(&[good.as_bytes()]);
        assert!(auth.verified.0.get(&digest).is_some(), "the verified token is remembered");
        // Past its exp and the leeway, the remembered token is refused as expired, and forgotten.
        assert_eq!(
            auth.verified.get(&digest, now + 600 + LEEWAY_SECS),
            Some(Ok(auth.verify(&good).unwrap()))
        );
        assert_eq!(auth.verified.get(&digest, now + 601 + LEEWAY_SECS), Some(Err(AuthError::Expired)));
        assert!(auth.verified.0.get(&digest).is_none());
        // Refused tokens are never remembered: a forged signature, an expired token.
        let signature_start = good.rfind('.').unwrap() + 1;
        let flipped = if good.as_bytes()[signature_start] == b'A' { "B" } else { "A" };
        let mut forged = good.clone();
        forged.replace_range(signature_start..=signature_start, flipped);
        let expired = token(json!({ "sub": "shop-backend", "role": "merchant", "exp": now - 600 }));
        for (refused, reason) in [(&forged, AuthError::Invalid), (&expired, AuthError::Expired)] {
            for _ in 0..2 {
                assert_eq!(auth.verify(refused).unwrap_err(), reason);
            }
            assert!(auth.verified.0.get(&crate::crypto::sha256(&[refused.as_bytes()])).is_none());
        }
        // A setting changed after a token was remembered applies to it.
        let auth = hs256();
        auth.verify(&good).unwrap();
        let auth = auth.with_issuer(Some("issuer-a".into()));
        assert_eq!(auth.verify(&good).unwrap_err(), AuthError::Invalid, "no iss");
        let auth = hs256();
        auth.verify(&good).unwrap();
        let auth = auth.with_max_lifetime(Some(Duration::from_secs(60)));
        assert_eq!(auth.verify(&good).unwrap_err(), AuthError::Invalid, "no iat, lasts too long");
    }
}
