//! [`QuotePricer`] prices a checkout with the quoter, the `quote` query's
//! own path, so a checkout charges exactly what the quote showed.

use std::sync::Arc;

use async_trait::async_trait;

use super::CheckoutError;
use super::model::{Cart, CartPricer, PricedCart, PricedLine};
use crate::domain::{MemberId, Money, TenantId};
use crate::pricing::Pricing;
use crate::pricing::model::Channel;
use crate::pricing::quoter::{QuoteError, QuoteItem, QuoteRequest, UpstreamSources};
use crate::upstream::Upstreams;

/// Prices checkout carts with the quoter — the `quote` query's own path —
/// as the member who checks out, reading the upstreams afresh and the rule
/// snapshot of the moment.
pub struct QuotePricer {
    upstreams: Arc<Upstreams>,
    pricing: Pricing,
}

impl QuotePricer {
    /// A pricer over the upstreams and the promotion engine.
    pub fn new(upstreams: Arc<Upstreams>, pricing: Pricing) -> Self {
        Self { upstreams, pricing }
    }
}

fn parse_channel(name: &str) -> Result<Channel, CheckoutError> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| CheckoutError::BadInput(format!("unknown channel `{name}`")))
}

fn refusal(err: QuoteError) -> CheckoutError {
    match err {
        QuoteError::BadInput(invalid) => CheckoutError::BadInput(invalid.to_string()),
        err @ QuoteError::NotFound { .. } => CheckoutError::BadInput(err.to_string()),
        QuoteError::Upstream(cause) => CheckoutError::Upstream(cause),
        // A fail-closed rule failed: nothing is charged on that price.
        QuoteError::RuleFailed(_) => CheckoutError::PriceDegraded,
        QuoteError::MemberRequired => {
            tracing::error!("the quoter refused a checkout cart without its member");
            CheckoutError::BadInput("the cart cannot be priced".into())
        }
    }
}

#[async_trait]
impl CartPricer for QuotePricer {
    async fn price(
        &self,
        tenant: &TenantId,
        member: &MemberId,
        cart: &Cart,
    ) -> Result<PricedCart, CheckoutError> {
        let channel = match &cart.channel {
            Some(name) => parse_channel(name)?,
            None => Channel::App,
        };
        let request = QuoteRequest {
            tenant: tenant.clone(),
            member: Some(member.clone()),
            mall: cart.mall.clone(),
            store: cart.store.clone(),
            items: (!cart.items.is_empty()).then(|| {
                cart.items
                    .iter()
                    .map(|i| QuoteItem {
                        product: i.product.clone(),
                        quantity: i64::from(i.quantity),
                    })
                    .collect()
            }),
            bill_amount: cart.bill_amount.map(Money::minor),
            coupons: cart.coupons.iter().map(|c| c.to_string()).collect(),
            points_to_use: cart.points_to_use,
            channel,
        };
        let sources = UpstreamSources {
            upstreams: &self.upstreams,
            tenant,
        };
        let quote = self
            .pricing
            .quote_cart(&sources, &request)
            .await
            .map_err(refusal)?;
        let (lines, products) = if cart.bill_amount.is_some() {
            (Vec::new(), Vec::new())
        } else {
            quote
                .lines
                .iter()
                .map(|line| {
                    let priced = PricedLine {
                        product: line.product.id.clone(),
                        quantity: line.quantity,
                        amount: line.payable,
                    };
                    (priced, line.product.clone())
                })
                .unzip()
        };
        let discount = Money::from_minor(quote.discount.minor() + quote.points_amount.minor())?;
        Ok(PricedCart {
            lines,
            products,
            subtotal: quote.subtotal,
            discount,
            points_used: quote.points_used,
            payable: quote.payable,
            // A rule skipped while pricing: the checkout refuses to charge
            // this price (`PRICE_DEGRADED`).
            degraded: quote.degraded,
        })
    }
}
