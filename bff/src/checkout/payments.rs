//! Payments: an order's external part arrives (or an order with nothing
//! to pay externally is paid at once), the stock becomes sold, and the
//! member-service hold is consumed.

use super::model::{HoldProgress, RefundDue};
use super::{
    Checkout, CheckoutError, ExternalPayment, FaultPoint, PaymentEffect, decode, encode, now_ms,
};
use crate::store::checkout::{
    Due, OrderId, OrderStatus, Reservation, Scope, Step, StepOutcome, StockEffect,
};

impl Checkout {
    /// Records a payment: the order's external part (`None`: an order with
    /// nothing to pay externally). Paid orders are then settled.
    pub async fn settle_payment(
        &self,
        scope: &Scope,
        id: &OrderId,
        payment: Option<&ExternalPayment>,
    ) -> Result<PaymentEffect, CheckoutError> {
        loop {
            let stored = self
                .inner
                .store
                .order(scope, id)
                .await?
                .ok_or_else(|| CheckoutError::OrderNotFound(id.to_string()))?;
            let mut record = decode(&stored)?;
            if let Some(p) = payment
                && (p.amount != record.external || p.currency != record.currency)
            {
                return Err(CheckoutError::AmountMismatch);
            }
            let payment_key = payment.map(|p| format!("{}:{}", p.provider, p.payment_id));
            let step = match stored.status {
                OrderStatus::AwaitingPayment => {
                    record.payment_id = payment_key.clone();
                    Step {
                        expect_version: stored.version,
                        expect_status: stored.status,
                        to: OrderStatus::Paid,
                        body: encode(&record)?,
                        stock: if stored.reservation == Reservation::Held {
                            StockEffect::Sell
                        } else {
                            StockEffect::None
                        },
                        // Due now: the hold is consumed next (by us, or by
                        // the sweeper if we stop here).
                        due: Due::At(now_ms()),
                        payment_id: payment_key.clone(),
                        event: OrderStatus::Paid.event_kind(),
                    }
                }
                OrderStatus::Created | OrderStatus::Reserved => {
                    return Err(CheckoutError::InvalidTransition {
                        order: id.to_string(),
                        status: stored.status.as_str(),
                        action: "paid yet",
                    });
                }
                OrderStatus::Paid
                | OrderStatus::Completed
                | OrderStatus::Cancelled
                | OrderStatus::Expired => {
                    let Some(p) = payment else {
                        return Ok(PaymentEffect::Duplicate);
                    };
                    if record.payment_id == payment_key {
                        return Ok(PaymentEffect::Duplicate);
                    }
                    record.refunds.push(RefundDue {
                        provider: p.provider.clone(),
                        payment_id: p.payment_id.clone(),
                        amount: p.amount,
                    });
                    Step {
                        expect_version: stored.version,
                        expect_status: stored.status,
                        to: stored.status,
                        body: encode(&record)?,
                        stock: StockEffect::None,
                        due: Due::Keep,
                        payment_id: payment_key.clone(),
                        event: "payment.refund_required".into(),
                    }
                }
            };
            let paid_now = step.to == OrderStatus::Paid;
            match self.inner.store.apply(scope, id, &step).await? {
                StepOutcome::Applied(_) if paid_now => {
                    self.fault(FaultPoint::AfterPaid)?;
                    self.complete(scope, id).await?;
                    return Ok(PaymentEffect::Paid);
                }
                StepOutcome::Applied(_) => {
                    tracing::warn!(order = %id, "payment after the order closed: refund required");
                    return Ok(PaymentEffect::RefundRequired);
                }
                StepOutcome::DuplicatePayment => return Ok(PaymentEffect::Duplicate),
                StepOutcome::Missing => return Err(CheckoutError::OrderNotFound(id.to_string())),
                StepOutcome::Conflict => continue,
            }
        }
    }

    /// Consumes a paid order's hold and completes it.
    pub(super) async fn complete(
        &self,
        scope: &Scope,
        id: &OrderId,
    ) -> Result<bool, CheckoutError> {
        loop {
            let Some(stored) = self.inner.store.order(scope, id).await? else {
                return Ok(false);
            };
            if stored.status != OrderStatus::Paid {
                return Ok(false);
            }
            let mut record = decode(&stored)?;
            if matches!(record.hold, HoldProgress::Frozen | HoldProgress::Pending) {
                match self
                    .inner
                    .upstreams
                    .member
                    .commit(&record.tenant, &record.hold_key())
                    .await?
                {
                    Ok(_) => {}
                    Err(refusal) => {
                        tracing::error!(order = %id, ?refusal, "member service refused to consume a paid order's hold");
                        return Ok(false);
                    }
                }
                record.hold = HoldProgress::Committed;
            }
            let step = Step {
                expect_version: stored.version,
                expect_status: OrderStatus::Paid,
                to: OrderStatus::Completed,
                body: encode(&record)?,
                stock: StockEffect::None,
                due: Due::Clear,
                payment_id: None,
                event: OrderStatus::Completed.event_kind(),
            };
            match self.inner.store.apply(scope, id, &step).await? {
                StepOutcome::Applied(_) => return Ok(true),
                StepOutcome::Missing => return Ok(false),
                StepOutcome::Conflict | StepOutcome::DuplicatePayment => continue,
            }
        }
    }
}
