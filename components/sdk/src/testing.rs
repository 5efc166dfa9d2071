//! Builders for native unit tests of rules (feature `testing`).
//!
//! ```ignore
//! let mut c = cart(BatchKind::Cart, vec![line("l1", 1000, 2)]);
//! c.member = Some(member("gold", 0));
//! ```

use crate::{
    BatchKind, Cart, Channel, Coupon, CouponValue, FlashSale, Line, Member, Money, Timestamp,
};

/// The `now` used by [`cart`]: 2025-06-15T15:06:40Z.
pub const NOW: Timestamp = 1_750_000_000_000;

/// One minute in milliseconds.
pub const MINUTE: Timestamp = 60_000;

/// One hour in milliseconds.
pub const HOUR: Timestamp = 60 * MINUTE;

/// A line with `payable = unit_price * quantity`, category `"general"`, no
/// tags and no flash sale.
pub fn line(id: &str, unit_price: Money, quantity: u32) -> Line {
    Line {
        id: id.into(),
        sku: format!("sku-{id}"),
        store: "store-1".into(),
        category: "general".into(),
        tags: Vec::new(),
        unit_price,
        quantity,
        payable: unit_price * Money::from(quantity),
        flash_sale: None,
    }
}

/// A flash sale at `price` running from `starts_at` (inclusive) to `ends_at`
/// (exclusive).
pub fn flash_sale(price: Money, starts_at: Timestamp, ends_at: Timestamp) -> FlashSale {
    FlashSale {
        price,
        starts_at,
        ends_at,
    }
}

/// A batch of `kind` at [`NOW`] on the app channel, anonymous, with
/// `payable` = the sum of the line payables and no coupons or points.
pub fn cart(kind: BatchKind, lines: Vec<Line>) -> Cart {
    let payable = lines
        .iter()
        .map(|l| l.payable)
        .fold(0, Money::saturating_add);
    Cart {
        kind,
        tenant: "tenant-1".into(),
        mall: "mall-1".into(),
        channel: Channel::App,
        now: NOW,
        member: None,
        lines,
        payable,
        held_coupons: Vec::new(),
        chosen_coupons: Vec::new(),
        points_to_use: 0,
    }
}

/// A member at `level` with `points` and no tags.
pub fn member(level: &str, points: i64) -> Member {
    Member {
        id: "member-1".into(),
        level: level.into(),
        points,
        tags: Vec::new(),
    }
}

/// A coupon with no minimum spend expiring an hour after [`NOW`].
pub fn coupon(id: &str, title: &str, value: CouponValue) -> Coupon {
    Coupon {
        id: id.into(),
        title: title.into(),
        value,
        min_spend: 0,
        expires_at: NOW + HOUR,
    }
}
