//! GraphQL of one-tap checkout — `checkout`, `cancelOrder` and `order` — a
//! thin layer over [`Checkout`].

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};

use super::model::{
    Cart, CartItem, CheckoutOutcome, CheckoutRequest, IdempotencyKey, OrderView, Payments,
};
use super::{Checkout, CheckoutError};
use crate::domain::{
    CouponId, MallId, MemberId, MinorUnits, Money, ProductId, StoreId, TenantId, Timestamp,
};
use crate::error::ApiError;
use crate::graphql::{RequestContext, request};
use crate::pricing::api::CartInput;
use crate::pricing::model::Channel;
use crate::store::checkout::{OrderId, OrderStatus as StoredStatus};

fn channel_name(channel: Channel) -> String {
    serde_json::to_value(channel)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "app".to_owned())
}

/// How the member pays the payable amount besides points.
#[derive(InputObject, Debug, Clone, Default)]
pub struct PaymentsInput {
    /// The part paid from the member's stored-value wallet, in minor units
    /// (default 0); the rest is paid through a payment provider.
    pub wallet: Option<MinorUnits>,
}

/// A one-tap checkout: what to buy and how to pay, under an idempotency
/// key.
#[derive(InputObject, Debug, Clone)]
pub struct CheckoutInput {
    /// The cart, exactly as the `quote` query takes it.
    pub cart: CartInput,
    /// How to pay (omitted: points from `cart.pointsToUse`, the rest
    /// through a payment provider).
    pub payments: Option<PaymentsInput>,
    /// The client's key for this checkout (1 to 128 letters, digits, `-`,
    /// `_`, `.` or `:`): a retry with the same key and cart answers the
    /// same order; an `Idempotency-Key` header, if sent, must be equal.
    pub idempotency_key: String,
}

/// Where an order is in its life.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "OrderStatus")]
pub enum OrderStatusValue {
    /// Recorded; nothing held yet.
    Created,
    /// Stock is reserved.
    Reserved,
    /// Points, wallet and coupons are frozen; the rest awaits payment.
    AwaitingPayment,
    /// Every part is paid.
    Paid,
    /// Paid and settled with the member service.
    Completed,
    /// Cancelled before payment; everything held was given back.
    Cancelled,
    /// Not paid in time; everything held was given back.
    Expired,
}

impl From<StoredStatus> for OrderStatusValue {
    fn from(status: StoredStatus) -> Self {
        match status {
            StoredStatus::Created => Self::Created,
            StoredStatus::Reserved => Self::Reserved,
            StoredStatus::AwaitingPayment => Self::AwaitingPayment,
            StoredStatus::Paid => Self::Paid,
            StoredStatus::Completed => Self::Completed,
            StoredStatus::Cancelled => Self::Cancelled,
            StoredStatus::Expired => Self::Expired,
        }
    }
}

/// A priced line of an order.
#[derive(SimpleObject, Debug, Clone)]
pub struct OrderLine {
    /// The product (SKU) bought.
    pub product_id: ID,
    /// Units bought.
    pub quantity: i32,
    /// What the line costs after line promotions.
    pub amount: Money,
}

/// A member's order.
#[derive(Debug, Clone)]
pub struct Order(OrderView);

fn timestamp(ms: i64) -> Timestamp {
    Timestamp(chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default())
}

fn points(points: i64) -> i32 {
    i32::try_from(points.max(0)).unwrap_or(i32::MAX)
}

/// A member's order: what was bought, what it costs, and where it is in
/// its life.
#[Object]
impl Order {
    /// The order's id.
    async fn id(&self) -> ID {
        ID(self.0.record.id.to_string())
    }
    /// Where the order is in its life.
    async fn status(&self) -> OrderStatusValue {
        self.0.status.into()
    }
    /// The mall the order was placed in.
    async fn mall_id(&self) -> ID {
        ID(self.0.record.mall.to_string())
    }
    /// The store of a pay-the-bill order.
    async fn store_id(&self) -> Option<ID> {
        self.0.record.store.as_ref().map(|s| ID(s.to_string()))
    }
    /// The priced lines (empty for pay-the-bill).
    async fn lines(&self) -> Vec<OrderLine> {
        self.0
            .record
            .lines
            .iter()
            .map(|l| OrderLine {
                product_id: ID(l.product.to_string()),
                quantity: i32::try_from(l.quantity).unwrap_or(i32::MAX),
                amount: l.amount,
            })
            .collect()
    }
    /// The price before discounts.
    async fn subtotal(&self) -> Money {
        self.0.record.subtotal
    }
    /// Every discount, points included.
    async fn discount(&self) -> Money {
        self.0.record.discount
    }
    /// What the member pays: the wallet part plus the external part.
    async fn payable(&self) -> Money {
        self.0.record.payable
    }
    /// Points spent on the order.
    async fn points_used(&self) -> i32 {
        points(self.0.record.points)
    }
    /// The part paid from the member's wallet.
    async fn wallet_amount(&self) -> Money {
        self.0.record.wallet
    }
    /// The part paid through a payment provider.
    async fn external_amount(&self) -> Money {
        self.0.record.external
    }
    /// The currency of every amount (ISO 4217).
    async fn currency(&self) -> &str {
        &self.0.record.currency
    }
    /// Coupons used by the order.
    async fn coupon_ids(&self) -> Vec<ID> {
        self.0
            .record
            .coupons
            .iter()
            .map(|c| ID(c.to_string()))
            .collect()
    }
    /// When the order was made.
    async fn created_at(&self) -> Timestamp {
        timestamp(self.0.record.created_at_ms)
    }
    /// When an unpaid order expires.
    async fn pay_by(&self) -> Timestamp {
        timestamp(self.0.record.pay_by_ms)
    }
}

/// The answer to a checkout.
#[derive(SimpleObject, Debug, Clone)]
pub struct CheckoutPayload {
    /// The order made (or, for a retry, the one made before).
    pub order: Order,
    /// Points frozen for the order.
    pub frozen_points: i32,
    /// Wallet amount frozen for the order.
    pub frozen_wallet: Money,
    /// Coupons held for the order.
    pub held_coupon_ids: Vec<ID>,
    /// What remains to pay through a payment provider now.
    pub pay_externally: Money,
}

impl From<CheckoutOutcome> for CheckoutPayload {
    fn from(outcome: CheckoutOutcome) -> Self {
        Self {
            frozen_points: points(outcome.frozen_points),
            frozen_wallet: outcome.frozen_wallet,
            held_coupon_ids: outcome
                .held_coupons
                .iter()
                .map(|c| ID(c.to_string()))
                .collect(),
            pay_externally: outcome.pay_externally,
            order: Order(outcome.order),
        }
    }
}

/// The asking member and the checkout service.
fn member_of(req: &RequestContext) -> Result<(TenantId, MemberId, &Checkout), ApiError> {
    let member = req
        .principal
        .member()
        .cloned()
        .ok_or(ApiError::Unauthenticated)?;
    let checkout = req.checkout.as_ref().ok_or_else(|| {
        tracing::error!("checkout service missing from the request context");
        ApiError::Coded {
            code: crate::error::code::INTERNAL_SERVER_ERROR,
            message: "internal error".into(),
        }
    })?;
    Ok((req.principal.tenant().clone(), member, checkout))
}

fn order_id(id: &ID) -> Result<OrderId, ApiError> {
    OrderId::parse(id.0.clone()).map_err(ApiError::from)
}

/// Parses the GraphQL input into the checkout's request.
fn checkout_request(
    req: &RequestContext,
    tenant: TenantId,
    member: MemberId,
    input: CheckoutInput,
) -> Result<CheckoutRequest, CheckoutError> {
    if let Some(header) = &req.idempotency_key
        && header != &input.idempotency_key
    {
        return Err(CheckoutError::IdempotencyKeyMismatch);
    }
    let idempotency_key = IdempotencyKey::parse(input.idempotency_key)?;
    let cart = input.cart;
    let items = cart
        .items
        .unwrap_or_default()
        .into_iter()
        .map(|i| {
            Ok(CartItem {
                product: ProductId::parse(i.product_id.0)?,
                quantity: u32::try_from(i.quantity).map_err(|_| {
                    CheckoutError::BadInput(format!(
                        "quantity must be between 1 and {}",
                        crate::pricing::limits::MAX_QUANTITY
                    ))
                })?,
            })
        })
        .collect::<Result<Vec<_>, CheckoutError>>()?;
    let coupons = cart
        .coupon_ids
        .unwrap_or_default()
        .into_iter()
        .map(|c| CouponId::parse(c.0))
        .collect::<Result<Vec<_>, _>>()?;
    let bill_amount = cart
        .bill_amount
        .map(|m| {
            Money::from_minor(m.0).map_err(|_| {
                CheckoutError::BadInput("billAmount must be between 1 and 10000000000".into())
            })
        })
        .transpose()?;
    let payments = match input.payments.and_then(|p| p.wallet) {
        Some(wallet) => Some(Payments {
            wallet: Money::from_minor(wallet.0).map_err(|_| {
                CheckoutError::BadInput("payments.wallet must not be negative".into())
            })?,
        }),
        None => None,
    };
    Ok(CheckoutRequest {
        tenant,
        member,
        cart: Cart {
            mall: MallId::parse(cart.mall_id.0)?,
            store: cart.store_id.map(|s| StoreId::parse(s.0)).transpose()?,
            items,
            bill_amount,
            coupons,
            points_to_use: i64::from(cart.points_to_use.unwrap_or(0)),
            channel: Some(channel_name(cart.channel.unwrap_or(req.channel))),
        },
        payments,
        idempotency_key,
    })
}

/// Order queries.
#[derive(Default)]
pub struct CheckoutQuery;

#[Object]
impl CheckoutQuery {
    /// One of the asking member's orders; null if the member has no order
    /// with this id. Needs a member token.
    async fn order(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The order's id, as `checkout` answered it.")] id: ID,
    ) -> Result<Option<Order>> {
        let req = request(ctx)?;
        let (tenant, member, checkout) = member_of(req)?;
        let id = order_id(&id)?;
        match checkout.order(&tenant, &member, &id).await {
            Ok(view) => Ok(Some(Order(view))),
            Err(CheckoutError::OrderNotFound(_)) => Ok(None),
            Err(e) => Err(ApiError::from(e).into()),
        }
    }
}

/// Checkout mutations.
#[derive(Default)]
pub struct CheckoutMutation;

#[Object]
impl CheckoutMutation {
    /// Checks out a cart in one tap: prices it exactly as `quote` does,
    /// reserves stock, freezes points, wallet and coupons, and makes an
    /// order awaiting the external payment. Idempotent by key. Needs a
    /// member token.
    async fn checkout(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The cart, how to pay, and the idempotency key.")] input: CheckoutInput,
    ) -> Result<CheckoutPayload> {
        let req = request(ctx)?;
        let (tenant, member, checkout) = member_of(req)?;
        let request = checkout_request(req, tenant, member, input).map_err(ApiError::from)?;
        let outcome = checkout.checkout(request).await.map_err(ApiError::from)?;
        Ok(outcome.into())
    }

    /// Cancels one of the asking member's unpaid orders; stock, points,
    /// wallet and coupons are given back. Needs a member token.
    async fn cancel_order(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The order's id, as `checkout` answered it.")] id: ID,
    ) -> Result<Order> {
        let req = request(ctx)?;
        let (tenant, member, checkout) = member_of(req)?;
        let id = order_id(&id)?;
        let view = checkout
            .cancel(&tenant, &member, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Order(view))
    }
}
