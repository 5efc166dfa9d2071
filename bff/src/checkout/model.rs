//! The checkout's vocabulary: what a client asks for (parsed once), what
//! the pricer answers, and the order record kept in the store and sent in
//! every outbox event.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::CheckoutError;
use crate::domain::{CouponId, MallId, MemberId, Money, ProductId, StoreId, TenantId};
use crate::store::checkout::{OrderId, OrderStatus};

/// The cart limits the quote applies too.
pub use crate::pricing::limits::{MAX_BILL, MAX_CART_LINES, MAX_COUPONS, MAX_QUANTITY};

/// A client's idempotency key: 1–128 characters of `A-Z a-z 0-9 - _ . :`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a client-supplied key.
    pub fn parse(raw: impl Into<String>) -> Result<Self, CheckoutError> {
        let raw = raw.into();
        let ok = !raw.is_empty()
            && raw.len() <= 128
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if ok {
            Ok(Self(raw))
        } else {
            Err(CheckoutError::BadInput(
                "idempotencyKey must be 1-128 letters, digits, '-', '_', '.' or ':'".into(),
            ))
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One cart line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CartItem {
    /// The SKU.
    pub product: ProductId,
    /// Units, 1–99.
    pub quantity: u32,
}

/// What the member buys: items, or a bill at a store. The same shape the
/// quote takes, so a checkout charges what the quote showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cart {
    /// The mall.
    pub mall: MallId,
    /// The store of a pay-the-bill order.
    pub store: Option<StoreId>,
    /// Items (empty for pay-the-bill).
    pub items: Vec<CartItem>,
    /// The bill amount (pay-the-bill only).
    pub bill_amount: Option<Money>,
    /// Coupons the member chose.
    pub coupons: Vec<CouponId>,
    /// Points the member wants to spend.
    pub points_to_use: i64,
    /// The sales channel, if the client named one.
    pub channel: Option<String>,
}

impl Cart {
    /// Checks what the types cannot: either items or a bill, sizes, no
    /// duplicate lines or coupons.
    pub fn validate(&self) -> Result<(), CheckoutError> {
        let bad = |m: &str| Err(CheckoutError::BadInput(m.to_owned()));
        match (&self.bill_amount, self.items.is_empty()) {
            (Some(_), false) => return bad("a cart has either items or a billAmount, not both"),
            (None, true) => return bad("a cart needs items or a billAmount"),
            (Some(bill), true) => {
                if self.store.is_none() {
                    return bad("a billAmount needs the storeId of the store");
                }
                if bill.minor() == 0 || bill.minor() > MAX_BILL {
                    return bad("billAmount must be between 1 and 10000000000");
                }
            }
            (None, false) => {}
        }
        if self.items.len() > MAX_CART_LINES {
            return bad(&format!("a cart has at most {MAX_CART_LINES} lines"));
        }
        if self.coupons.len() > MAX_COUPONS {
            return bad("a cart has at most 10 coupons");
        }
        let mut seen = std::collections::HashSet::new();
        for item in &self.items {
            if item.quantity == 0 || i64::from(item.quantity) > i64::from(MAX_QUANTITY) {
                return bad(&format!("quantity must be between 1 and {MAX_QUANTITY}"));
            }
            if !seen.insert(&item.product) {
                return bad("each product appears on one line only");
            }
        }
        let mut coupons = self.coupons.clone();
        coupons.sort();
        coupons.dedup();
        if coupons.len() != self.coupons.len() {
            return bad("a coupon can be used once");
        }
        if self.points_to_use < 0 {
            return bad("pointsToUse must not be negative");
        }
        Ok(())
    }
}

/// How the member pays the payable amount: `wallet` from the stored-value
/// balance, the rest externally. Points are part of the price (the
/// pricer offsets them), so the parts always sum to the payable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Payments {
    /// Paid from the wallet.
    pub wallet: Money,
}

/// A checkout request, parsed.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    /// The member's tenant.
    pub tenant: TenantId,
    /// The member.
    pub member: MemberId,
    /// What to buy.
    pub cart: Cart,
    /// How to pay (omitted: points from the cart, the rest externally).
    pub payments: Option<Payments>,
    /// The client's idempotency key.
    pub idempotency_key: IdempotencyKey,
}

/// A priced line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    /// The SKU.
    pub product: ProductId,
    /// Units.
    pub quantity: u32,
    /// What the line costs after line promotions.
    pub amount: Money,
}

/// A priced cart: what the quote shows for the same cart.
#[derive(Debug, Clone)]
pub struct PricedCart {
    /// Lines (empty for pay-the-bill).
    pub lines: Vec<PricedLine>,
    /// The products as the pricer read them (empty for pay-the-bill, or
    /// when the pricer does not pass them on): the checkout defines stock
    /// from this same read instead of asking the product service again.
    pub products: Vec<crate::product::Product>,
    /// Before discounts.
    pub subtotal: Money,
    /// Every discount, points included.
    pub discount: Money,
    /// Points spent.
    pub points_used: i64,
    /// What the member pays.
    pub payable: Money,
    /// Whether a rule was skipped: a degraded price is never charged.
    pub degraded: bool,
}

/// Prices a cart for a member with the promotion rules — the same path the
/// quote takes.
#[async_trait]
pub trait CartPricer: Send + Sync + 'static {
    /// Prices the cart.
    async fn price(
        &self,
        tenant: &TenantId,
        member: &MemberId,
        cart: &Cart,
    ) -> Result<PricedCart, CheckoutError>;
}

/// Where the order's member-service hold is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldProgress {
    /// Nothing to freeze.
    NotNeeded,
    /// Not frozen yet (or not known to be).
    Pending,
    /// Frozen.
    Frozen,
    /// Consumed.
    Committed,
    /// Given back.
    Released,
}

/// A refund the order needs (a payment that came too late, or twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundDue {
    /// The provider.
    pub provider: String,
    /// The provider's payment id.
    pub payment_id: String,
    /// The amount paid.
    pub amount: Money,
}

/// The checkout's record of an order: kept in the store, sent in every
/// event, answered to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// The order.
    pub id: OrderId,
    /// The tenant.
    pub tenant: TenantId,
    /// The buyer.
    pub member: MemberId,
    /// The mall.
    pub mall: MallId,
    /// The store of a pay-the-bill order.
    pub store: Option<StoreId>,
    /// Priced lines.
    pub lines: Vec<PricedLine>,
    /// Before discounts.
    pub subtotal: Money,
    /// Every discount.
    pub discount: Money,
    /// What the member pays (wallet + external).
    pub payable: Money,
    /// Points frozen, then spent.
    pub points: i64,
    /// Wallet amount frozen, then spent.
    pub wallet: Money,
    /// Coupons held, then used.
    pub coupons: Vec<CouponId>,
    /// What remains to pay through a payment provider.
    pub external: Money,
    /// ISO 4217 currency.
    pub currency: String,
    /// When the order was made (Unix ms).
    pub created_at_ms: i64,
    /// When an unpaid order expires (Unix ms).
    pub pay_by_ms: i64,
    /// The member-service hold.
    pub hold: HoldProgress,
    /// The external payment that paid the order.
    pub payment_id: Option<String>,
    /// Payments to give back.
    pub refunds: Vec<RefundDue>,
    /// Why the order was cancelled.
    pub cancel_reason: Option<String>,
}

impl OrderRecord {
    /// The hold key at the member service: derived from the order id, so
    /// every retry and every recovery uses the same one.
    pub fn hold_key(&self) -> String {
        format!("{}.hold", self.id)
    }
}

/// An order as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// Status now.
    pub status: OrderStatus,
    /// The record.
    pub record: OrderRecord,
}

/// The answer to a checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutOutcome {
    /// The order.
    pub order: OrderView,
    /// Points frozen for it.
    pub frozen_points: i64,
    /// Wallet amount frozen for it.
    pub frozen_wallet: Money,
    /// Coupons held for it.
    pub held_coupons: Vec<CouponId>,
    /// What remains to pay through a payment provider.
    pub pay_externally: Money,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cart() -> Cart {
        Cart {
            mall: MallId::parse("mall-1").unwrap(),
            store: None,
            items: vec![CartItem {
                product: ProductId::parse("sku-1").unwrap(),
                quantity: 1,
            }],
            bill_amount: None,
            coupons: vec![],
            points_to_use: 0,
            channel: None,
        }
    }

    #[test]
    fn carts_with_bad_quantities_duplicates_or_both_forms_are_refused() {
        assert!(cart().validate().is_ok());
        let mut zero = cart();
        zero.items[0].quantity = 0;
        assert!(zero.validate().is_err());
        let mut most = cart();
        most.items[0].quantity = MAX_QUANTITY as u32;
        assert!(most.validate().is_ok());
        let mut huge = cart();
        huge.items[0].quantity = MAX_QUANTITY as u32 + 1;
        assert!(huge.validate().is_err());
        let mut dup = cart();
        dup.items.push(dup.items[0].clone());
        assert!(dup.validate().is_err());
        let mut both = cart();
        both.bill_amount = Some(Money::from_minor(100).unwrap());
        assert!(both.validate().is_err());
        let mut bill = cart();
        bill.items.clear();
        bill.bill_amount = Some(Money::from_minor(100).unwrap());
        assert!(bill.validate().is_err(), "a bill needs a store");
        bill.store = Some(StoreId::parse("store-1").unwrap());
        assert!(bill.validate().is_ok());
        bill.bill_amount = Some(Money::ZERO);
        assert!(bill.validate().is_err());
        let mut points = cart();
        points.points_to_use = -1;
        assert!(points.validate().is_err());
        let coupon = CouponId::parse("coupon-1").unwrap();
        let mut coupons = cart();
        coupons.coupons = vec![coupon.clone(), coupon];
        assert!(coupons.validate().is_err());
    }

    #[test]
    fn idempotency_keys_are_bounded_and_plain() {
        assert!(IdempotencyKey::parse("checkout-1:abc").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("a".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("{tag}").is_err());
        assert!(IdempotencyKey::parse("a b").is_err());
    }
}
