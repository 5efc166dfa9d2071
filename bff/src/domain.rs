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
        if minor > MAX_MINOR_UNITS {
            return Err(InvalidInput {
                what: "amount",
                reason: "is larger than 9007199254740991 minor units",
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

/// The GraphQL `Money` type: its fields, description and the general
/// resolution path. [`Money`] resolves through it whenever a selection is
/// more than plain fields.
struct MoneyFields<'a>(&'a Money);

/// An amount of money in an ISO 4217 currency.
#[async_graphql::Object(name = "Money")]
impl MoneyFields<'_> {
    /// Amount in minor units (fen for CNY): ¥12.34 is 1234.
    async fn amount(&self) -> MinorUnits {
        MinorUnits(self.0.minor)
    }
    /// ISO 4217 currency code.
    async fn currency(&self) -> &'static str {
        CNY
    }
}

impl crate::graphql::plain::PlainFields for Money {
    const TYPE_NAME: &'static str = "Money";

    fn plain_field(
        &self,
        _: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::parser::types::Field,
    ) -> Option<async_graphql::Value> {
        use async_graphql::ScalarType;
        match field.name.node.as_str() {
            "amount" => Some(MinorUnits(self.minor).to_value()),
            "currency" => Some(async_graphql::Value::String(CNY.to_owned())),
            _ => None,
        }
    }
}

// `{ amount }` appears dozens of times in a card: plain selections of
// `Money` are built at once (see `crate::graphql::plain`).
crate::graphql::plain::plain_output_type!(Money, MoneyFields);

/// The largest magnitude the API carries in minor units: 2⁵³ − 1, the
/// largest integer every JSON parser (JavaScript's included) reads exactly.
/// Every amount the BFF accepts, and every sum it can form from them, stays
/// below it (see `pricing::api::MAX_UNIT_PRICE`).
pub const MAX_MINOR_UNITS: i64 = (1 << 53) - 1;

/// An integer amount in minor units as the API carries it.
///
/// GraphQL's `Int` is 32 bits by the specification — ¥21,474,836.47 — so
/// money has its own scalar: a JSON integer within ±(2⁵³ − 1). Inputs also
/// take the integer as a decimal string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MinorUnits(pub i64);

/// An amount of money in minor units (fen for CNY: ¥12.34 is 1234), as a
/// JSON integer between -9007199254740991 and 9007199254740991 (so every
/// JSON parser reads it exactly). Inputs also accept the integer as a
/// string of decimal digits.
#[async_graphql::Scalar(name = "MinorUnits")]
impl async_graphql::ScalarType for MinorUnits {
    fn parse(value: async_graphql::Value) -> async_graphql::InputValueResult<Self> {
        let parsed = match &value {
            async_graphql::Value::Number(n) => n.as_i64(),
            async_graphql::Value::String(s) => {
                let digits = s.strip_prefix('-').unwrap_or(s);
                if digits.is_empty()
                    || digits.len() > 16
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    None
                } else {
                    s.parse::<i64>().ok()
                }
            }
            _ => return Err(async_graphql::InputValueError::expected_type(value)),
        };
        match parsed {
            Some(v) if (-MAX_MINOR_UNITS..=MAX_MINOR_UNITS).contains(&v) => Ok(MinorUnits(v)),
            _ => Err(async_graphql::InputValueError::custom(
                "expected an integer amount in minor units between -9007199254740991 and 9007199254740991",
            )),
        }
    }

    fn is_valid(value: &async_graphql::Value) -> bool {
        matches!(
            value,
            async_graphql::Value::Number(_) | async_graphql::Value::String(_)
        )
    }

    fn to_value(&self) -> async_graphql::Value {
        if self.0.abs() > MAX_MINOR_UNITS {
            // Never reached: inputs and upstream amounts are capped so that
            // every sum stays in range. Logged, not hidden, if it ever is.
            tracing::error!(amount = self.0, "an amount beyond 2^53 - 1 reached the API");
        }
        async_graphql::Value::Number(self.0.into())
    }
}

/// A point in time as the API carries it (stored as RFC 3339 text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub chrono::DateTime<chrono::Utc>);

impl From<chrono::DateTime<chrono::Utc>> for Timestamp {
    fn from(at: chrono::DateTime<chrono::Utc>) -> Self {
        Self(at)
    }
}

/// A point in time as RFC 3339 text, e.g. `2026-11-22T10:00:00Z`. Inputs
/// may carry any offset; outputs are in UTC.
#[async_graphql::Scalar(name = "DateTime")]
impl async_graphql::ScalarType for Timestamp {
    fn parse(value: async_graphql::Value) -> async_graphql::InputValueResult<Self> {
        match &value {
            async_graphql::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                .map(|at| Timestamp(at.with_timezone(&chrono::Utc)))
                .map_err(|_| {
                    async_graphql::InputValueError::custom(
                        "expected an RFC 3339 date and time such as 2026-11-22T10:00:00Z",
                    )
                }),
            _ => Err(async_graphql::InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> async_graphql::Value {
        async_graphql::Value::String(self.0.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
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
