//! Payment methods: cards and payment-provider tokens, sealed per method, listed masked, and
//! revealed in full only by an allowed disclosure.
//!
//! Card security codes, track data and PINs are refused wherever they appear in a body, before
//! anything is parsed further, so they never reach storage or a log.

use chrono::Datelike;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::{RequestContext, Step, Vault, VaultError, next_version};
use crate::audit::Action;
use crate::crypto::{DataKey, Plaintext};
use crate::domain::card::{CardNumber, check_expiry};
use crate::domain::{CustomerId, Timestamp};
use crate::policy::{FieldDecision, Mask, PAYMENT_METHODS};
use crate::store::{CardFingerprint, CustomerRecord, StoredPaymentMethod};

/// Member names that must never be accepted: security codes, track data, PINs (PCI DSS 3.3).
const FORBIDDEN_MEMBERS: &[&str] = &[
    "cvv",
    "cvc",
    "cvv2",
    "cvc2",
    "cav2",
    "cid",
    "csc",
    "cvn",
    "security_code",
    "securitycode",
    "card_code",
    "verification_value",
    "track",
    "track1",
    "track2",
    "track_1",
    "track_2",
    "track_data",
    "trackdata",
    "magstripe",
    "pin",
    "pin_block",
    "pinblock",
];

/// The most payment methods one customer may hold.
const MAX_METHODS: usize = 32;

/// The body of `POST /v1/customers/{id}/payment-methods`: exactly one of `card` and
/// `provider_token`. A security code (CVV/CVC), track data or PIN member anywhere is refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPaymentMethod {
    /// A card.
    #[schema(nullable = false)]
    card: Option<CardInput>,
    /// A token issued by a payment provider.
    #[schema(nullable = false)]
    provider_token: Option<ProviderTokenInput>,
}

/// A card as submitted.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CardInput {
    /// The card number (12–19 digits, spaces and dashes allowed; Luhn checked).
    #[schema(value_type = String)]
    number: Zeroizing<String>,
    /// 1–12.
    exp_month: u32,
    /// Four digits; the expiry must not be in the past.
    exp_year: u32,
    /// The cardholder's name.
    #[serde(default)]
    holder: Option<String>,
}

impl std::fmt::Debug for CardInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardInput([redacted])")
    }
}

/// A payment provider's token as submitted.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProviderTokenInput {
    /// The provider's name.
    provider: String,
    /// The provider's token.
    #[schema(value_type = String)]
    token: Zeroizing<String>,
}

impl std::fmt::Debug for ProviderTokenInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderTokenInput([redacted])")
    }
}

/// A payment method in full, as sealed (and as an unmasked disclosure hands it over).
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Secret {
    Card { brand: String, number: String, exp_month: u32, exp_year: u32, holder: Option<String> },
    ProviderToken { provider: String, token: String },
}

impl Secret {
    /// The card number (digits only), for a card.
    fn card_number(&self) -> Option<&str> {
        match self {
            Secret::Card { number, .. } => Some(number),
            Secret::ProviderToken { .. } => None,
        }
    }
}

/// A payment method as listings show it: nothing that allows a charge.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PaymentMethodView {
    /// The random handle of the method.
    pub token: String,
    /// `card` or `provider_token`.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// Card brand, or the provider's name for a provider token.
    pub brand: String,
    /// Last four characters of the card number (or provider token).
    pub last4: String,
    /// Expiry month (cards only).
    pub exp_month: Option<u32>,
    /// Expiry year (cards only).
    pub exp_year: Option<u32>,
    /// On create: the token of the same card already stored for this customer, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub duplicate_of: Option<String>,
}

impl Secret {
    fn view(&self, token: &str) -> PaymentMethodView {
        // The last four characters only of values long enough that four reveal little.
        let last4 = |s: &str| {
            if s.chars().count() < 12 {
                return "****".to_owned();
            }
            s.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect::<String>()
        };
        match self {
            Secret::Card { brand, number, exp_month, exp_year, .. } => PaymentMethodView {
                token: token.to_owned(),
                kind: "card",
                brand: brand.clone(),
                last4: last4(number),
                exp_month: Some(*exp_month),
                exp_year: Some(*exp_year),
                duplicate_of: None,
            },
            Secret::ProviderToken { provider, token: t } => PaymentMethodView {
                token: token.to_owned(),
                kind: "provider_token",
                brand: provider.clone(),
                last4: last4(t),
                exp_month: None,
                exp_year: None,
                duplicate_of: None,
            },
        }
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        match self {
            Secret::Card { number, holder, .. } => {
                number.zeroize();
                if let Some(h) = holder {
                    h.zeroize();
                }
            }
            Secret::ProviderToken { token, .. } => token.zeroize(),
        }
    }
}

/// True if `value` has a forbidden member (case-insensitive) at any depth.
pub fn has_forbidden_member(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| {
            let key = k.to_ascii_lowercase().replace('-', "_");
            FORBIDDEN_MEMBERS.contains(&key.as_str()) || has_forbidden_member(v)
        }),
        Value::Array(items) => items.iter().any(has_forbidden_member),
        _ => false,
    }
}

impl Vault {
    /// Adds a card or provider token. A card already on this customer (same keyed fingerprint)
    /// is not stored twice: the answer is the existing method with `duplicate_of` set.
    #[tracing::instrument(skip_all)]
    pub async fn add_payment_method(
        &self,
        ctx: &RequestContext,
        id: &str,
        body: Value,
    ) -> Result<(PaymentMethodView, bool), VaultError> {
        let (draft, id) = ctx.draft_for(Action::PaymentMethodCreate, id);
        if has_forbidden_member(&body) {
            let e = VaultError::InvalidField {
                field: "payment method".into(),
                expected: "must not contain a security code (CVV/CVC), track data or PIN".into(),
            };
            return self.refuse(draft.failed(["sensitive_authentication_data"]), e).await;
        }
        let secret = match self.parse_payment_method(body) {
            Ok(parsed) => parsed,
            Err(e) => return self.refuse(draft.failed(["invalid_payment_method"]), e).await,
        };
        let step = |mut record: CustomerRecord| {
            let key = self.data_key(&record)?;
            // Keyed by this customer's data key: compared only within this record, and
            // shredded with it. Fingerprints of format 2 (`Legacy`) never match here; the
            // re-wrap pass replaces them.
            let fingerprint =
                secret.card_number().map(|n| CardFingerprint::DataKey(key.card_fingerprint(&record.id, n)));
            if let Some(existing) =
                fingerprint.and_then(|f| record.payment_methods.iter().find(|m| m.fingerprint == Some(f)))
            {
                // The answer is built from the submitted card, which has the same number: it
                // shows no stored value (the stored expiry or holder may differ), only the
                // existing method's handle, which the event names.
                let mut view = secret.view(&existing.token);
                view.duplicate_of = Some(existing.token.clone());
                let event = draft.clone().fields([context(&existing.token)]).failed(["duplicate"]);
                return Ok(Step::Answer { event, answer: (view, false) });
            }
            if record.payment_methods.len() >= MAX_METHODS {
                let error = VaultError::BadRequest(format!(
                    "a customer may hold at most {MAX_METHODS} payment methods"
                ));
                return Ok(Step::Refuse { event: draft.clone().failed(["too_many_payment_methods"]), error });
            }
            let token = format!("pm_{}", hex(&crate::crypto::random_bytes::<16>()?));
            let plaintext =
                Plaintext::new(serde_json::to_vec(&secret).map_err(|e| VaultError::Internal(e.to_string()))?);
            let sealed = key.seal(&record.id, &context(&token), plaintext.expose())?;
            let now = Timestamp::now();
            record.payment_methods.push(StoredPaymentMethod {
                token: token.clone(),
                sealed,
                fingerprint,
                created_at: now,
            });
            Ok(Step::Commit {
                draft: draft.clone().fields([context(&token)]),
                change: next_version(record, now),
                then: Vec::new(),
                answer: (secret.view(&token), true),
            })
        };
        Ok(self.write_customer("payment method", &draft, id, step).await?.0)
    }

    /// Lists a customer's payment methods, masked, for a purpose `payment_methods` serves.
    #[tracing::instrument(skip_all)]
    pub async fn list_payment_methods(
        &self,
        ctx: &RequestContext,
        id: &str,
        purpose: Option<&str>,
    ) -> Result<Vec<PaymentMethodView>, VaultError> {
        let (draft, id) = ctx.draft_for(Action::PaymentMethodList, id);
        let purpose = self.resolve_purpose(&draft, purpose, true).await?;
        // invariant: resolve_purpose with required = true returns a purpose or an error.
        let purpose = purpose.expect("purpose is required");
        let draft = draft.purpose(Some(&purpose.name)).fields([PAYMENT_METHODS]);
        let record = self.load(&draft, id).await?;
        let now = Timestamp::now().millis();
        if let FieldDecision::Deny(reason) =
            self.policies.decide_use(&purpose.name, PAYMENT_METHODS, &record, now)
        {
            let e = VaultError::PolicyDenied { denied: vec![(PAYMENT_METHODS.to_owned(), reason)] };
            return self.refuse(draft.denied([format!("{PAYMENT_METHODS}:{}", reason.as_str())]), e).await;
        }
        let views = self.payment_method_views(&record, &self.data_key(&record)?)?;
        self.record(draft).await?;
        Ok(views)
    }

    /// Removes one payment method.
    #[tracing::instrument(skip_all)]
    pub async fn delete_payment_method(
        &self,
        ctx: &RequestContext,
        id: &str,
        token: &str,
    ) -> Result<(), VaultError> {
        let (draft, id) = ctx.draft_for(Action::PaymentMethodDelete, id);
        let step = |mut record: CustomerRecord| {
            let Some(pos) = record.payment_methods.iter().position(|m| m.token == token) else {
                // The token is caller text: recorded only as "unknown".
                return Ok(Step::Refuse {
                    event: draft.clone().failed(["not_found"]),
                    error: VaultError::NotFound,
                });
            };
            record.payment_methods.remove(pos);
            Ok(Step::Commit {
                draft: draft.clone().fields([context(token)]),
                change: next_version(record, Timestamp::now()),
                then: Vec::new(),
                answer: (),
            })
        };
        self.write_customer("payment method delete", &draft, id, step).await.map(|_| ())
    }

    /// Every payment method of a record in its masked listing form.
    pub(super) fn payment_method_views(
        &self,
        record: &CustomerRecord,
        key: &DataKey,
    ) -> Result<Vec<PaymentMethodView>, VaultError> {
        record
            .payment_methods
            .iter()
            .map(|m| Ok(self.open_method(key, &record.id, m)?.view(&m.token)))
            .collect()
    }

    /// Payment methods as a disclosure hands them over: in full with mask `none`, otherwise in
    /// their masked listing form.
    pub(super) fn disclosed_payment_methods(
        &self,
        record: &CustomerRecord,
        key: &DataKey,
        mask: Mask,
    ) -> Result<Value, VaultError> {
        let mut out = Vec::new();
        for method in &record.payment_methods {
            let secret = self.open_method(key, &record.id, method)?;
            let value = if mask == Mask::None {
                let mut full =
                    serde_json::to_value(&secret).map_err(|e| VaultError::Internal(e.to_string()))?;
                full["token"] = Value::String(method.token.clone());
                full
            } else {
                serde_json::to_value(secret.view(&method.token))
                    .map_err(|e| VaultError::Internal(e.to_string()))?
            };
            out.push(value);
        }
        Ok(Value::Array(out))
    }

    fn open_method(
        &self,
        key: &DataKey,
        customer: &CustomerId,
        method: &StoredPaymentMethod,
    ) -> Result<Secret, VaultError> {
        let plaintext = key.open(customer, &context(&method.token), &method.sealed)?;
        serde_json::from_slice(plaintext.expose())
            .map_err(|e| super::fields::value_error("payment method", &e))
    }

    /// The card number of a stored card method (`None` for a provider token), for
    /// re-fingerprinting it under the data key.
    pub(super) fn card_number_of(
        &self,
        key: &DataKey,
        customer: &CustomerId,
        method: &StoredPaymentMethod,
    ) -> Result<Option<Zeroizing<String>>, VaultError> {
        let secret = self.open_method(key, customer, method)?;
        Ok(secret.card_number().map(|n| Zeroizing::new(n.to_owned())))
    }

    /// Validates a body into the form that is sealed.
    fn parse_payment_method(&self, body: Value) -> Result<Secret, VaultError> {
        let invalid = |field: &str, expected: &str| VaultError::InvalidField {
            field: field.into(),
            expected: expected.into(),
        };
        let input: NewPaymentMethod = serde_json::from_value(body)
            .map_err(|_| invalid("payment method", "must be {\"card\": {number, exp_month, exp_year, holder?}} or {\"provider_token\": {provider, token}}"))?;
        match (input.card, input.provider_token) {
            (Some(card), None) => {
                let number =
                    CardNumber::parse(&card.number).map_err(|e| invalid("card.number", &e.to_string()))?;
                let today = chrono::Utc::now().date_naive();
                check_expiry(card.exp_month, card.exp_year, today.year() as u32, today.month())
                    .map_err(|e| invalid("card.exp_month", &e.to_string()))?;
                if let Some(h) = &card.holder
                    && (h.trim().is_empty() || h.len() > 128 || h.chars().any(char::is_control))
                {
                    return Err(invalid("card.holder", "must be 1–128 printable characters"));
                }
                let secret = Secret::Card {
                    brand: number.brand().as_str().to_owned(),
                    number: number.expose().to_owned(),
                    exp_month: card.exp_month,
                    exp_year: card.exp_year,
                    holder: card.holder.clone(),
                };
                Ok(secret)
            }
            (None, Some(p)) => {
                let name_ok = !p.provider.is_empty()
                    && p.provider.len() <= 64
                    && p.provider.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if !name_ok {
                    return Err(invalid("provider_token.provider", "must be 1–64 of [A-Za-z0-9_.-]"));
                }
                if p.token.is_empty() || p.token.len() > 512 || p.token.chars().any(char::is_control) {
                    return Err(invalid("provider_token.token", "must be 1–512 printable characters"));
                }
                Ok(Secret::ProviderToken { provider: p.provider.clone(), token: p.token.to_string() })
            }
            _ => Err(invalid("payment method", "must have exactly one of `card` or `provider_token`")),
        }
    }
}

/// The seal context and audit name of one payment method.
fn context(token: &str) -> String {
    format!("{PAYMENT_METHODS}/{token}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
