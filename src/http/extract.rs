//! Extractors: who is calling (by role), the request id, the purpose header and JSON bodies
//! that fail with our error shape instead of axum's plain-text rejections.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use serde::Deserializer;
use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::AppState;
use super::error::ApiError;
use super::rate_limit::CallerLimiter;
use crate::auth::AuthError;
use crate::domain::{Principal, Role};
use crate::vault::{RequestContext, shown_name};

/// The request id assigned by the request-id middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        request_id(&parts.extensions)
    }
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1): the scheme name is
/// case-insensitive (RFC 9110 §11.1) and separated from the token by one or more spaces
/// (§11.4, `1*SP`). No header, another scheme, or no token is [`AuthError::Missing`]. A header
/// given more than once never gets here: the head check refuses it first.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or(AuthError::Missing)?;
    let (scheme, rest) = value.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    // Surrounding whitespace is not part of a field value (RFC 9110 §5.5); a space inside the
    // token leaves it unverifiable, which is `token_invalid`.
    let token = rest.trim_start_matches(' ').trim_end_matches([' ', '\t']);
    if token.is_empty() { Err(AuthError::Missing) } else { Ok(token) }
}

/// Authenticates the bearer token and checks its role; refusals are audited as `auth.denied`.
async fn authenticate(parts: &mut Parts, state: &AppState, role: Role) -> Result<RequestContext, ApiError> {
    let verified = bearer_token(&parts.headers).and_then(|t| state.auth.verify(t));
    let principal = match verified {
        Ok(p) => p,
        Err(e) => {
            deny_anonymous(state, &parts.extensions, e.code()).await?;
            return Err(ApiError::unauthenticated());
        }
    };
    let RequestId(request_id) = request_id(&parts.extensions)?;
    let key =
        CallerLimiter::caller_key(principal.role.as_str(), principal.sub.as_deref().unwrap_or_default());
    state.limiter.check(&key).map_err(ApiError::too_many_requests)?;
    let ctx = RequestContext { principal, request_id };
    if ctx.principal.role == role {
        return Ok(ctx);
    }
    state.vault.record_auth_denied(&ctx, "role_forbidden").await.map_err(ApiError::from)?;
    Err(ApiError::forbidden_role())
}

/// Takes one request from the peer's budget for failing credentials and records the refusal
/// as `auth.denied` by an anonymous actor with `reason` (an [`AuthError::code`]). `Ok` means
/// the refusal is recorded and the caller answers with its own error; `Err` is the answer
/// instead: 429 when the peer's budget is spent (not audited, so a flood cannot fill the log),
/// 503 when the event could not be made durable.
pub(super) async fn deny_anonymous(
    state: &AppState,
    extensions: &Extensions,
    reason: &str,
) -> Result<(), ApiError> {
    let peer = extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    state.limiter.check_peer(&CallerLimiter::peer_key(peer)).map_err(ApiError::too_many_requests)?;
    let RequestId(request_id) = request_id(extensions)?;
    let ctx = RequestContext { principal: Principal::anonymous(), request_id };
    state.vault.record_auth_denied(&ctx, reason).await.map_err(ApiError::from)
}

fn request_id(extensions: &Extensions) -> Result<RequestId, ApiError> {
    extensions
        .get::<RequestId>()
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))
}

macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub RequestContext);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, Self::Rejection> {
                authenticate(parts, state, $role).await.map($name)
            }
        }
    };
}

role_extractor!(
    /// A caller with `role = "merchant"`.
    MerchantCaller,
    Role::Merchant
);
role_extractor!(
    /// A caller with `role = "customer"`; `sub` is their customer id.
    CustomerCaller,
    Role::Customer
);
role_extractor!(
    /// A caller with `role = "auditor"`.
    AuditorCaller,
    Role::Auditor
);

/// One request from the peer's budget for the public routes (`/portal*`, `/transparency*`,
/// `/v1/transparency`): taken before the handler runs, so an unknown asset costs the same.
/// When it is spent the answer is 429 `rate_limited` with `Retry-After`, not audited. The peer
/// is the connection's address: behind a proxy, every client shares the proxy's budget.
#[derive(Debug)]
pub struct PublicBudget;

impl FromRequestParts<AppState> for PublicBudget {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        state.limiter.check_public(&CallerLimiter::peer_key(peer)).map_err(ApiError::too_many_requests)?;
        Ok(PublicBudget)
    }
}

/// The `X-Purpose` header, if present. Validated against the policy by the vault (a purpose
/// name has no comma, so a list is simply undeclared); a repeated header never gets here, the
/// head check refuses it.
#[derive(Debug)]
pub struct PurposeHeader(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for PurposeHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get("x-purpose") {
            None => Ok(PurposeHeader(None)),
            Some(v) => match v.to_str() {
                Ok(s) => Ok(PurposeHeader(Some(s.trim().to_owned()))),
                Err(_) => Err(ApiError::bad_request(
                    "unknown_purpose",
                    "purpose is not declared in the policy files",
                )),
            },
        }
    }
}

/// A JSON body parsed strictly: malformed JSON, a member given twice in one object (at any
/// depth) or nesting deeper than [`MAX_JSON_DEPTH`] is 400, a body of the wrong shape (wrong
/// types, unknown members) is 422 naming where, an oversized body 413 (decided from
/// `Content-Length` before any byte is read when the length is declared). Messages name paths
/// and keys that look like member names, never values.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large()
            } else {
                ApiError::bad_request("bad_request", "the body could not be read")
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deepest nesting of objects and arrays a JSON body may have. The deepest legitimate body
/// nests three (`{"fields": {"shipping_address": {…}}}`); serde_json's own limit (128) is
/// never reached because this check runs first.
pub const MAX_JSON_DEPTH: usize = 16;

/// Parses `bytes` as `T` with value-free error messages.
///
/// Two passes: the first walks the whole document and refuses a member name repeated within
/// one object (`duplicate_key`; RFC 8259 §4 leaves their meaning to the parser, and serde keeps
/// the last in maps but may refuse or keep either in structs) and nesting deeper than
/// [`MAX_JSON_DEPTH`] (`nesting_too_deep`); the second is the typed parse. Names are compared
/// after unescaping, so `"a"` and `"\u0061"` are the same member.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    check_shape(bytes)?;
    // Every body is an object; serde would also read a struct from an array, by position.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = shown_path(e.path().iter().map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Segment::Index(*index),
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => Segment::Key(key.clone()),
            serde_path_to_error::Segment::Unknown => Segment::Key("?".to_owned()),
        }));
        let inner = e.into_inner();
        if inner.classify() != serde_json::error::Category::Data {
            return malformed(&inner);
        }
        let text = inner.to_string();
        let message = if let Some(rest) = text.strip_prefix("unknown field `") {
            // serde quotes the caller's key verbatim, then lists the expected names (ours, so
            // the last "`, expected" / "`, there are" ends the key). Show it only if it looks
            // like a member name: a key can be anything, a value pasted as a key included.
            let end = rest.rfind("`, expected").or_else(|| rest.rfind("`, there are")).unwrap_or(rest.len());
            format!("unknown field{} at `{path}`", shown_name(&rest[..end]))
        } else if text.starts_with("missing field") {
            // Names one of our own members.
            let head = text.split(" at line").next().unwrap_or(&text);
            format!("{head} at `{path}`")
        } else {
            format!("wrong type or value at `{path}`")
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
    })?;
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

fn malformed(e: &serde_json::Error) -> ApiError {
    ApiError::bad_request(
        "malformed_json",
        format!("the body is not valid JSON (line {}, column {})", e.line(), e.column()),
    )
}

/// The first pass of [`parse_json`]: syntax, duplicate members, depth.
fn check_shape(bytes: &[u8]) -> Result<(), ApiError> {
    let mut refusal = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walked = Shape { depth: 0, refusal: &mut refusal }.deserialize(&mut de).and_then(|()| de.end());
    match (walked, refusal) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(ShapeRefusal::TooDeep)) => Err(ApiError::bad_request(
            "nesting_too_deep",
            format!("the body nests objects and arrays deeper than {MAX_JSON_DEPTH} levels"),
        )),
        (Err(_), Some(ShapeRefusal::Duplicate { key, mut path })) => {
            path.reverse();
            let place = if path.is_empty() { String::new() } else { format!(" in `{}`", shown_path(path)) };
            Err(ApiError::bad_request(
                "duplicate_key",
                format!("the body names member{} twice in one object{place}", shown_name(&key)),
            ))
        }
        (Err(e), None) => Err(malformed(&e)),
    }
}

/// One step of a path into a JSON document.
enum Segment {
    Key(String),
    Index(usize),
}

/// `a.b[0].c`, as serde_path_to_error writes paths, with every key that does not look like a
/// member name replaced by `?`; `.` for the document itself.
fn shown_path(segments: impl IntoIterator<Item = Segment>) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(if crate::vault::looks_like_name(&key) { &key } else { "?" });
            }
        }
    }
    if out.is_empty() { ".".to_owned() } else { out }
}

/// Why [`Shape`] stopped.
enum ShapeRefusal {
    /// `key` appeared twice in the object at `path` (innermost segment first while unwinding).
    Duplicate { key: String, path: Vec<Segment> },
    /// Nesting went past [`MAX_JSON_DEPTH`].
    TooDeep,
}

/// Walks any JSON value, checking every object's member names are distinct and the nesting
/// bounded. It stops at the first problem, which it leaves in `refusal` (serde's error only
/// carries it out).
struct Shape<'r> {
    /// Containers entered so far.
    depth: usize,
    refusal: &'r mut Option<ShapeRefusal>,
}

impl Shape<'_> {
    fn enter<E: serde::de::Error>(&mut self) -> Result<usize, E> {
        if self.depth >= MAX_JSON_DEPTH {
            *self.refusal = Some(ShapeRefusal::TooDeep);
            return Err(E::custom("too deep"));
        }
        Ok(self.depth + 1)
    }

    fn child(&mut self, depth: usize) -> Shape<'_> {
        Shape { depth, refusal: &mut *self.refusal }
    }

    /// Adds `segment` to the path of a duplicate found below it.
    fn locate(&mut self, segment: Segment) {
        if let Some(ShapeRefusal::Duplicate { path, .. }) = self.refusal {
            path.push(segment);
        }
    }
}

impl<'de> DeserializeSeed<'de> for Shape<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shape<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        let mut index = 0;
        loop {
            match seq.next_element_seed(self.child(depth)) {
                Ok(Some(())) => index += 1,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.locate(Segment::Index(index));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        // Names without escapes borrow from the body; a body is at most max_body_bytes, so
        // this set is bounded by it.
        let mut seen: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(MemberName)? {
            if seen.contains(&key) {
                *self.refusal = Some(ShapeRefusal::Duplicate { key: key.into_owned(), path: Vec::new() });
                return Err(serde::de::Error::custom("duplicate member"));
            }
            if let Err(e) = map.next_value_seed(self.child(depth)) {
                self.locate(Segment::Key(key.into_owned()));
                return Err(e);
            }
            seen.insert(key);
        }
        Ok(())
    }
}

/// A member name, borrowed from the body when it has no escapes.
struct MemberName;

impl<'de> DeserializeSeed<'de> for MemberName {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for MemberName {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Path parameters whose rejection (e.g. invalid percent-encoding) is our JSON 400, not
/// axum's plain text. Ids inside are checked by the vault (a malformed id is simply unknown).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|_| ApiError::bad_request("bad_request", "the path is not valid"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// The code and message `check_shape` answers `body` with, if it refuses it.
    fn refusal(body: &str) -> Option<(&'static str, String)> {
        check_shape(body.as_bytes()).err().map(|e| {
            let (code, message) = e.parts();
            (code, message.to_owned())
        })
    }

    #[test]
    fn a_repeated_member_is_found_in_objects_inside_arrays_and_after_unescaping() {
        let (code, message) = refusal(r#"{"a":[1,{"b":{"c":1,"d":2,"c":3}}]}"#).unwrap();
        assert_eq!(code, "duplicate_key");
        assert_eq!(message, "the body names member `c` twice in one object in `a[1].b`");
        assert_eq!(refusal(r#"{"x":1,"\u0078":2}"#).unwrap().0, "duplicate_key");
        // The same name in different objects, or differing in case, is no duplicate.
        assert_eq!(refusal(r#"{"a":{"x":1},"b":{"x":1},"c":[{"x":1},{"x":2}],"X":1,"x":1}"#), None);
    }

    #[test]
    fn syntax_errors_stay_malformed_json_with_their_position() {
        let (code, message) = refusal("{\"a\":1,\n\"b\":}").unwrap();
        assert_eq!(code, "malformed_json");
        assert_eq!(message, "the body is not valid JSON (line 2, column 5)");
        assert_eq!(refusal(r#"{"a":1} {"a":1}"#).unwrap().0, "malformed_json");
        assert_eq!(refusal("").unwrap().0, "malformed_json");
    }

    /// Any JSON value, nested up to `depth` containers.
    fn any_json(depth: u32) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z\\\\\"\u{e9}]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(depth, 64, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z\"\\\\]{0,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn depth_of(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// `v` inside `levels` containers, alternately arrays and objects.
    fn wrapped(v: Value, levels: usize) -> Value {
        (0..levels).fold(v, |v, i| if i % 2 == 0 { json!([v]) } else { json!({ "w": v }) })
    }

    proptest! {
        #[test]
        fn every_document_without_repeats_passes_exactly_when_shallow_enough(
            v in any_json(4),
            levels in 0usize..24,
        ) {
            let v = wrapped(v, levels);
            let text = serde_json::to_string(&v).unwrap();
            let result = refusal(&text);
            if depth_of(&v) <= MAX_JSON_DEPTH {
                prop_assert_eq!(result, None);
            } else {
                prop_assert_eq!(result.map(|r| r.0), Some("nesting_too_deep"));
            }
        }

        #[test]
        fn a_member_repeated_at_any_depth_is_refused_whatever_the_values(
            first in any_json(3),
            second in any_json(3),
            levels in 0usize..12, // 12 + the object + 3 inside: within the bound
        ) {
            // `{"k": first, "k": second}` cannot be built as a Value: splice the text.
            let marker = "\u{1}marker\u{1}";
            let text = serde_json::to_string(&wrapped(json!(marker), levels)).unwrap();
            let repeated = format!("{{\"k\":{first},\"k\":{second}}}");
            let text = text.replace(&serde_json::to_string(marker).unwrap(), &repeated);
            prop_assert_eq!(refusal(&text).map(|r| r.0), Some("duplicate_key"));
        }
    }
}
