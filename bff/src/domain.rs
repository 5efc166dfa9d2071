//! Identifiers and value types shared by every capability.
//!
//! Parse, don't validate: every id that arrives from a client or an upstream
//! is turned into one of these newtypes once, at the edge, by a `parse` that
//! rejects bad input. Code past the edge never re-checks.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a client-supplied value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is invalid: {reason}")]
pub struct InvalidInput {
    /// The name of the value, as the client knows it (e.g. `mallId`).
    pub what: &'static str,
    /// A human explanation, safe to show to the client.
    pub reason: &'static str,
}

/// Longest id we accept from a client. Upstream ids are short; anything
/// longer is either a mistake or an attempt to make us build huge URLs.
const MAX_ID_LEN: usize = 64;

fn check_id(what: &'static str, raw: &str) -> Result<(), InvalidInput> {
    if raw.is_empty() {
        return Err(InvalidInput {
            what,
            reason: "must not be empty",
        });
    }
    if raw.len() > MAX_ID_LEN {
        return Err(InvalidInput {
            what,
            reason: "is longer than 64 characters",
        });
    }
    // Ids travel in URL paths and comma-separated batch queries to the
    // upstreams, so only a conservative alphabet is allowed.
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(InvalidInput {
            what,
            reason: "may only contain letters, digits, '-', '_' and '.'",
        });
    }
    // `.` and `..` are path segments with a meaning of their own: in an
    // upstream URL they would name another resource.
    if raw == "." || raw == ".." {
        return Err(InvalidInput {
            what,
            reason: "must not be '.' or '..'",
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses a client- or upstream-supplied id.
            pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidInput> {
                let raw = raw.into();
                check_id($what, &raw)?;
                Ok(Self(raw))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidInput;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(raw)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A tenant: one mall group, the unit of data isolation.
    TenantId,
    "tenant"
);
id_type!(
    /// A mall of the tenant.
    MallId,
    "mallId"
);
id_type!(
    /// A store inside a mall.
    StoreId,
    "storeId"
);
id_type!(
    /// A product (SKU).
    ProductId,
    "productId"
);
id_type!(
    /// A member (shopper) of the tenant.
    MemberId,
    "memberId"
);
id_type!(
    /// A coupon held by a member.
    CouponId,
    "couponId"
);

/// ISO 4217 code of the only currency the demo tenant uses.
pub const CNY: &str = "CNY";

/// An amount of money in minor units (fen for CNY).
///
/// Integer arithmetic only: prices are never floating point anywhere in the
/// product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Money {
    minor: i64,
}

impl Money {
    /// Zero.
    pub const ZERO: Money = Money { minor: 0 };

    /// An amount in minor units; negative amounts are rejected because no
    /// price, discount or balance in the product is negative.
    pub fn from_minor(minor: i64) -> Result<Self, InvalidInput> {
        if minor < 0 {
            return Err(InvalidInput {
                what: "amount",
                reason: "must not be negative",
            });
        }
        Ok(Self { minor })
    }

    /// The amount in minor units.
    pub fn minor(self) -> i64 {
        self.minor
    }

    /// `self - other`, floored at zero (a price never goes below zero).
    pub fn saturating_sub(self, other: Money) -> Money {
        Money {
            minor: (self.minor - other.minor).max(0),
        }
    }
}

/// An amount of money.
#[async_graphql::Object]
impl Money {
    /// Amount in minor units (fen for CNY): ¥12.34 is 1234.
    async fn amount(&self) -> i64 {
        self.minor
    }
    /// ISO 4217 currency code.
    async fn currency(&self) -> &'static str {
        CNY
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.minor / 100, self.minor % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_empty_long_and_url_unsafe_input() {
        assert!(MallId::parse("mall-1").is_ok());
        assert!(MallId::parse("").is_err());
        assert!(MallId::parse("a".repeat(65)).is_err());
        assert!(MallId::parse("mall-1,mall-2").is_err());
        assert!(MallId::parse("../admin").is_err());
        assert!(MallId::parse("mall 1").is_err());
        assert!(MallId::parse(".").is_err());
        assert!(MallId::parse("..").is_err());
        assert!(MemberId::parse("..").is_err());
        assert!(MallId::parse("v1.2").is_ok());
        assert!(MallId::parse("...").is_ok());
    }

    #[test]
    fn money_is_never_negative() {
        assert!(Money::from_minor(-1).is_err());
        let ten = Money::from_minor(1000).unwrap();
        let twenty = Money::from_minor(2000).unwrap();
        assert_eq!(ten.saturating_sub(twenty), Money::ZERO);
        assert_eq!(twenty.saturating_sub(ten).minor(), 1000);
        assert_eq!(Money::from_minor(12345).unwrap().to_string(), "123.45");
    }
}
