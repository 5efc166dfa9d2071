//! The sweeper: finishes or compensates every due order (see the module
//! docs of [`crate::checkout`]).

use super::{Checkout, CheckoutError, SweepReport, decode};
use crate::store::checkout::{OrderId, OrderStatus, Scope};

impl Checkout {
    /// Finishes or compensates every due order of every scope (see the
    /// module docs). Safe on every node at once: each due order is leased
    /// to one sweeper, and every action is a compare-and-set or idempotent.
    pub async fn sweep(&self, now: i64) -> Result<SweepReport, CheckoutError> {
        let mut report = SweepReport::default();
        for scope in self.inner.store.scopes().await? {
            // An order tended once and due again in the same sweep (its
            // upstream failed) waits for the next sweep.
            let mut seen = std::collections::HashSet::new();
            loop {
                let due = self
                    .inner
                    .store
                    .claim_due(&scope, now, self.inner.settings.sweep_lease_ms, 100)
                    .await?;
                let fresh: Vec<OrderId> = due
                    .into_iter()
                    .filter(|id| seen.insert(id.clone()))
                    .collect();
                if fresh.is_empty() {
                    break;
                }
                for id in fresh {
                    if let Err(error) = self.tend(&scope, &id, now, &mut report).await {
                        // Left leased: another sweep retries after the lease.
                        tracing::warn!(order = %id, %error, "sweeper could not finish an order");
                    }
                }
            }
        }
        Ok(report)
    }

    async fn tend(
        &self,
        scope: &Scope,
        id: &OrderId,
        now: i64,
        report: &mut SweepReport,
    ) -> Result<(), CheckoutError> {
        let Some(stored) = self.inner.store.order(scope, id).await? else {
            return Ok(());
        };
        let record = decode(&stored)?;
        match stored.status {
            OrderStatus::Created | OrderStatus::Reserved => {
                self.compensate(
                    scope,
                    id,
                    OrderStatus::Cancelled,
                    "the checkout did not finish",
                )
                .await?;
                report.recovered += 1;
            }
            OrderStatus::AwaitingPayment if now >= record.pay_by_ms => {
                self.compensate(scope, id, OrderStatus::Expired, "not paid in time")
                    .await?;
                report.expired += 1;
            }
            OrderStatus::AwaitingPayment => {}
            OrderStatus::Cancelled | OrderStatus::Expired => {
                if self.release_hold(scope, stored).await? {
                    report.released += 1;
                }
            }
            OrderStatus::Paid => {
                if self.complete(scope, id).await? {
                    report.completed += 1;
                }
            }
            OrderStatus::Completed => {}
        }
        Ok(())
    }
}
