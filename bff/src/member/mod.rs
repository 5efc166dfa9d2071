//! Members and their coupons: types, queries and loaders.

use async_graphql::parser::types::Field;
use async_graphql::{Context, ContextSelectionSet, Enum, ID, Object, Result, Value};
use chrono::{DateTime, Utc};

use crate::auth::Principal;
use crate::domain::{CouponId, MemberId, Money};
use crate::error::ApiError;
use crate::graphql::plain::{PlainFields, plain_object, string};
use crate::graphql::request;

/// A member (shopper) of the tenant.
#[derive(Debug, Clone)]
pub struct Member {
    /// Id.
    pub id: MemberId,
    /// Display name.
    pub nickname: String,
    /// Level code, e.g. `GOLD`.
    pub level: String,
    /// Points balance.
    pub points: i64,
    /// Wallet balance.
    pub wallet: Money,
    /// Segmentation tags.
    pub tags: Vec<String>,
}

/// What a coupon takes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum CouponKind {
    /// A fixed amount off.
    Cash,
    /// A percentage off.
    PercentOff,
}

/// A coupon held by a member.
#[derive(Debug, Clone)]
pub struct Coupon {
    /// Id.
    pub id: CouponId,
    /// Display title.
    pub title: String,
    /// Cash or percentage.
    pub kind: CouponKind,
    /// Amount off (cash coupons).
    pub amount_off: Option<Money>,
    /// Percent off, 1..=100 (percentage coupons).
    pub percent_off: Option<u32>,
    /// Spend needed before the coupon applies.
    pub min_spend: Money,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// A member of the mall group's loyalty programme.
#[Object]
impl Member {
    /// The member's id.
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    /// Display name.
    async fn nickname(&self) -> &str {
        &self.nickname
    }
    /// Membership level code, e.g. `BASIC`, `SILVER`, `GOLD`, `PLATINUM`.
    async fn level(&self) -> &str {
        &self.level
    }
    /// Points balance.
    async fn points(&self) -> i32 {
        // Capped to `Int` by the member service client.
        i32::try_from(self.points).unwrap_or(i32::MAX)
    }
    /// Wallet (stored value) balance.
    async fn wallet(&self) -> Money {
        self.wallet
    }
    /// Coupons the member holds and can use. Null when the member service
    /// cannot be reached.
    async fn coupons(&self, ctx: &Context<'_>) -> Result<Option<Vec<Coupon>>> {
        let coupons = request(ctx)?
            .loaders
            .coupons_now(&self.id)
            .await
            .map_err(ApiError::from)?;
        Ok(Some(coupons.unwrap_or_default()))
    }
}

/// A coupon the member holds.
#[Object]
impl Coupon {
    /// The coupon's id.
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    /// Display title, e.g. "¥10 off over ¥100".
    async fn title(&self) -> &str {
        &self.title
    }
    /// Whether it takes a fixed amount or a percentage off.
    async fn kind(&self) -> CouponKind {
        self.kind
    }
    /// Amount off, for `CASH` coupons.
    async fn amount_off(&self) -> Option<Money> {
        self.amount_off
    }
    /// Percent off (1–100), for `PERCENT_OFF` coupons.
    async fn percent_off(&self) -> Option<u32> {
        self.percent_off
    }
    /// Spend needed before the coupon applies.
    async fn min_spend(&self) -> Money {
        self.min_spend
    }
    /// When the coupon expires.
    async fn expires_at(&self) -> crate::domain::Timestamp {
        crate::domain::Timestamp(self.expires_at)
    }
}

impl PlainFields for Member {
    const TYPE_NAME: &'static str = "Member";

    fn plain_field(&self, ctx: &ContextSelectionSet<'_>, field: &Field) -> Option<Value> {
        match field.name.node.as_str() {
            "id" => string(self.id.as_str()),
            "nickname" => string(&self.nickname),
            "level" => string(&self.level),
            "points" => Some(Value::from(i32::try_from(self.points).unwrap_or(i32::MAX))),
            "wallet" => plain_object(&self.wallet, ctx, &field.selection_set.node),
            // `coupons` may call the member service.
            _ => None,
        }
    }
}

impl PlainFields for Coupon {
    const TYPE_NAME: &'static str = "Coupon";

    fn plain_field(&self, ctx: &ContextSelectionSet<'_>, field: &Field) -> Option<Value> {
        let set = &field.selection_set.node;
        let money = |amount: Option<&Money>| match amount {
            Some(amount) => plain_object(amount, ctx, set),
            None => Some(Value::Null),
        };
        match field.name.node.as_str() {
            "id" => string(self.id.as_str()),
            "title" => string(&self.title),
            "kind" => Some(async_graphql::resolver_utils::enum_value(self.kind)),
            "amountOff" => money(self.amount_off.as_ref()),
            "percentOff" => Some(self.percent_off.map_or(Value::Null, Value::from)),
            "minSpend" => money(Some(&self.min_spend)),
            "expiresAt" => Some(async_graphql::ScalarType::to_value(
                &crate::domain::Timestamp(self.expires_at),
            )),
            _ => None,
        }
    }
}

/// Member queries.
#[derive(Default)]
pub struct MemberQuery;

#[Object]
impl MemberQuery {
    /// The member of the bearer token. `UNAUTHENTICATED` without a member
    /// token; null if the member does not exist in the token's tenant.
    async fn me(&self, ctx: &Context<'_>) -> Result<Option<Member>> {
        let req = request(ctx)?;
        let member = match &req.principal {
            Principal::Member { member, .. } => member.clone(),
            Principal::Anonymous { .. } => return Err(ApiError::Unauthenticated.into()),
            Principal::Staff { .. } => {
                return Err(ApiError::Forbidden("`me` is for member tokens").into());
            }
        };
        Ok(req
            .loaders
            .member_now(&member)
            .await
            .map_err(ApiError::from)?)
    }
}
