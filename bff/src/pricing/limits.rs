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
