//! Who is calling: the role and subject taken from a verified JWT.

use std::fmt;

use serde::Serialize;

/// The role claim of a token; it decides which routes a caller reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The merchant's backend.
    Merchant,
    /// A data subject acting on their own record (`sub` is their customer id).
    Customer,
    /// An outside auditor reading the access log.
    Auditor,
    /// A caller whose token was missing or invalid (only ever seen in `auth.denied` events).
    Anonymous,
    /// The vault itself (retention sweeps, key rotation).
    System,
}

impl Role {
    /// The role named by a token's `role` claim; `anonymous` and `system` cannot be claimed.
    pub fn from_claim(claim: &str) -> Option<Role> {
        match claim {
            "merchant" => Some(Role::Merchant),
            "customer" => Some(Role::Customer),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }

    /// The wire name used in audit events.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Merchant => "merchant",
            Role::Customer => "customer",
            Role::Auditor => "auditor",
            Role::Anonymous => "anonymous",
            Role::System => "system",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// What the caller may do.
    pub role: Role,
    /// The token's subject: a merchant service name, a customer id or an auditor name.
    /// `None` only for anonymous callers.
    pub sub: Option<String>,
}

impl Principal {
    /// The caller of a request whose token could not be verified.
    pub fn anonymous() -> Self {
        Principal { role: Role::Anonymous, sub: None }
    }

    /// The vault acting on its own (background jobs).
    pub fn system(job: &str) -> Self {
        Principal { role: Role::System, sub: Some(job.to_owned()) }
    }
}
