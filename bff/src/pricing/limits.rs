//! The limits of a cart, one set for `quote` and `checkout`: a cart the
//! quote prices is a cart the checkout accepts, and the other way round.

/// Most lines in one cart.
pub const MAX_CART_LINES: usize = 100;
/// Most units of one line.
pub const MAX_QUANTITY: i32 = 999;
/// Largest bill amount, in minor units (¥100,000,000): larger than 32 bits,
/// which the `MinorUnits` scalar carries exactly.
pub const MAX_BILL: i64 = 10_000_000_000;
/// Most coupons on one cart.
pub const MAX_COUPONS: usize = 10;
/// Largest subtotal of one cart, in minor units (¥10,000,000,000): every
/// sum and discount of a quote stays far below
/// [`crate::domain::MAX_MINOR_UNITS`].
pub const MAX_CART_TOTAL: i64 = 1_000_000_000_000;
