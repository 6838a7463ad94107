//! Extractors: who is calling (by role), the request id, the purpose header and JSON bodies
//! that fail with our error shape instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use std::net::SocketAddr;

use axum::extract::ConnectInfo;

use super::AppState;
use super::error::ApiError;
use super::rate_limit::CallerLimiter;
use crate::auth::AuthError;
use crate::domain::{Principal, Role};
use crate::vault::RequestContext;

/// The request id assigned by the request-id middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))
    }
}

/// Authenticates the bearer token and checks its role; refusals are audited as `auth.denied`.
async fn authenticate(parts: &mut Parts, state: &AppState, role: Role) -> Result<RequestContext, ApiError> {
    let RequestId(request_id) = RequestId::from_request_parts(parts, state).await?;
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let verified = match token {
        None => Err(AuthError::Missing),
        Some(t) => state.auth.verify(t.trim()),
    };
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let budget = match &verified {
        Ok(p) => state
            .limiter
            .check(&CallerLimiter::caller_key(p.role.as_str(), p.sub.as_deref().unwrap_or_default())),
        Err(_) => state.limiter.check_peer(&CallerLimiter::peer_key(peer)),
    };
    if let Err(wait) = budget {
        return Err(ApiError::too_many_requests(wait));
    }
    let (principal, refusal, reason) = match verified {
        Ok(p) if p.role == role => return Ok(RequestContext { principal: p, request_id }),
        Ok(p) => (p, ApiError::forbidden_role(), "role_forbidden"),
        Err(e) => (Principal::anonymous(), ApiError::unauthenticated(), e.code()),
    };
    let ctx = RequestContext { principal, request_id };
    state.vault.record_auth_denied(&ctx, reason).await.map_err(ApiError::from)?;
    Err(refusal)
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

/// The `X-Purpose` header, if present. Validated against the policy by the vault.
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

/// A JSON body parsed strictly: malformed JSON is 400, a body of the wrong shape (wrong types,
/// unknown members) is 422 naming where, an oversized body 413. Messages name paths and keys,
/// never values.
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
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the body is too large")
            } else {
                ApiError::bad_request("bad_request", "the body could not be read")
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses `bytes` as `T` with value-free error messages.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let malformed = |e: &serde_json::Error| {
        ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON (line {}, column {})", e.line(), e.column()),
        )
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.classify() != serde_json::error::Category::Data {
            return malformed(&inner);
        }
        let text = inner.to_string();
        let message = if text.starts_with("unknown field") || text.starts_with("missing field") {
            // These messages name a key, not a value: keep them up to the list of expected
            // keys and the position.
            let head = text.split(", expected").next().unwrap_or(&text);
            let head = head.split(" at line").next().unwrap_or(head);
            format!("{head} at `{path}`")
        } else {
            format!("wrong type or value at `{path}`")
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
    })?;
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
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
