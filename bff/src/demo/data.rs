//! The demo data set: generated deterministically from a seed, at a
//! configurable size, with the fixed ids that docs and tests rely on.
//!
//! These are the *upstream's* records, in the upstream's own wire shape
//! (snake_case, `_fen` amounts, level codes). The BFF's clients translate
//! them; nothing here is shared with the BFF's own types on purpose.

use std::collections::HashMap;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The demo tenant.
pub const DEMO_TENANT: &str = "demo";
/// Malls per size unit.
const MALLS: usize = 3;
/// Stores per mall.
const STORES_PER_MALL: usize = 20;
/// Products per mall.
const PRODUCTS_PER_MALL: usize = 1000;
/// Flash-sale products per mall.
const FLASH_PER_MALL: usize = 5;
/// Members per size unit.
const MEMBERS: usize = 1000;
/// Stock of every flash-sale SKU (DESIGN: `sku-flash-1` has 100).
pub const FLASH_STOCK: u32 = 100;
/// Units one member may buy in a flash sale unless the sale says otherwise.
pub const FLASH_PER_MEMBER_LIMIT: u32 = 1;
/// Sales with their own per-member limit (every other sale has
/// [`FLASH_PER_MEMBER_LIMIT`]).
pub const FLASH_LIMITS: &[(&str, u32)] = &[("sku-flash-4", 2), ("sku-flash-5", 3)];

/// The per-member limit of a flash-sale SKU.
pub fn flash_limit(sku: &str) -> u32 {
    FLASH_LIMITS
        .iter()
        .find(|(id, _)| *id == sku)
        .map_or(FLASH_PER_MEMBER_LIMIT, |(_, limit)| *limit)
}
/// 2026-01-01T00:00:00Z: flash windows open here.
const FLASH_OPEN: i64 = 1_767_225_600;
/// 2030-01-01T00:00:00Z: flash windows close here.
const FLASH_CLOSE: i64 = 1_893_456_000;
/// A sale announced but not open yet: its window opens at
/// [`UPCOMING_FLASH_OPEN`], so buying it now is `SALE_NOT_OPEN`.
pub const UPCOMING_FLASH: &str = "sku-flash-15";
/// 2029-06-01T00:00:00Z: the upcoming sale opens here.
const UPCOMING_FLASH_OPEN: i64 = 1_874_966_400;

/// A mall as the mall service sends it.
#[derive(Debug, Clone, Serialize)]
pub struct MallRecord {
    pub mall_id: String,
    pub mall_name: String,
    pub city: String,
    pub address: String,
    pub open_time: String,
    pub close_time: String,
    pub floor_count: u32,
}

/// A store as the mall service sends it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreRecord {
    pub store_id: String,
    pub mall_id: String,
    pub store_name: String,
    pub floor: String,
    pub category: String,
}

/// A member as the member service sends it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberRecord {
    pub member_id: String,
    pub nickname: String,
    pub level_code: String,
    pub points_balance: i64,
    pub wallet_balance_fen: i64,
    pub tags: Vec<String>,
}

/// A coupon as the member service sends it.
#[derive(Debug, Clone, Serialize)]
pub struct CouponRecord {
    pub coupon_id: String,
    pub template_name: String,
    /// `CASH` (face value in fen off) or `DISCOUNT` (face value = percent off).
    pub coupon_type: String,
    pub face_value: i64,
    pub min_spend_fen: i64,
    pub expire_at: i64,
    pub status: String,
}

/// A flash-sale window on a product.
#[derive(Debug, Clone, Serialize)]
pub struct FlashRecord {
    pub flash_price_fen: i64,
    pub start_at: i64,
    pub end_at: i64,
    pub flash_stock: u32,
    /// Most units one member may buy in the sale.
    pub per_member_limit: u32,
}

/// A product as the product service sends it.
#[derive(Debug, Clone, Serialize)]
pub struct ProductRecord {
    pub sku_id: String,
    pub spu_name: String,
    pub mall_id: String,
    pub store_id: String,
    pub category: String,
    pub tags: Vec<String>,
    pub list_price_fen: i64,
    pub stock: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flash: Option<FlashRecord>,
}

/// Everything one tenant has.
#[derive(Debug, Default)]
pub struct TenantData {
    pub malls: Vec<MallRecord>,
    pub stores: Vec<StoreRecord>,
    pub members: Vec<MemberRecord>,
    pub products: Vec<ProductRecord>,
    pub coupons: HashMap<String, Vec<CouponRecord>>,
    mall_index: HashMap<String, usize>,
    store_index: HashMap<String, usize>,
    member_index: HashMap<String, usize>,
    product_index: HashMap<String, usize>,
    /// Per mall: product indexes in listing ("recommended") order.
    listing: HashMap<String, Vec<usize>>,
    /// Per mall: flash-sale product indexes.
    flash: HashMap<String, Vec<usize>>,
    /// Per mall: store indexes.
    stores_by_mall: HashMap<String, Vec<usize>>,
}

impl TenantData {
    pub fn mall(&self, id: &str) -> Option<&MallRecord> {
        self.mall_index.get(id).map(|&i| &self.malls[i])
    }
    pub fn store(&self, id: &str) -> Option<&StoreRecord> {
        self.store_index.get(id).map(|&i| &self.stores[i])
    }
    pub fn member(&self, id: &str) -> Option<&MemberRecord> {
        self.member_index.get(id).map(|&i| &self.members[i])
    }
    pub fn product(&self, id: &str) -> Option<&ProductRecord> {
        self.product_index.get(id).map(|&i| &self.products[i])
    }
    pub fn stores_of_mall(&self, mall: &str) -> impl Iterator<Item = &StoreRecord> {
        self.stores_by_mall
            .get(mall)
            .into_iter()
            .flatten()
            .map(|&i| &self.stores[i])
    }
    /// The mall's listing, in order; `None` if the mall does not exist.
    pub fn listing(&self, mall: &str) -> Option<Vec<&ProductRecord>> {
        self.listing
            .get(mall)
            .map(|ids| ids.iter().map(|&i| &self.products[i]).collect())
    }
    /// The mall's flash-sale products; `None` if the mall does not exist.
    pub fn flash_sales(&self, mall: &str) -> Option<Vec<&ProductRecord>> {
        self.flash
            .get(mall)
            .map(|ids| ids.iter().map(|&i| &self.products[i]).collect())
    }
}

/// The demo data of every tenant.
#[derive(Debug, Default)]
pub struct DemoData {
    tenants: HashMap<String, TenantData>,
}

impl DemoData {
    /// A tenant's data; unknown tenants have none (and see nothing).
    pub fn tenant(&self, tenant: &str) -> Option<&TenantData> {
        self.tenants.get(tenant)
    }

    /// Generates the demo tenant. The same `seed` and `size` always give
    /// the same data.
    pub fn generate(seed: u64, size: u32) -> Self {
        let size = size.max(1) as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut t = TenantData::default();

        const CITIES: [&str; 6] = [
            "Shanghai", "Hangzhou", "Shenzhen", "Chengdu", "Beijing", "Nanjing",
        ];
        const STORE_KINDS: [(&str, &str); 10] = [
            ("Coffee", "food"),
            ("Noodle House", "food"),
            ("Bakery", "food"),
            ("Sportswear", "fashion"),
            ("Denim", "fashion"),
            ("Shoes", "fashion"),
            ("Cosmetics", "beauty"),
            ("Electronics", "digital"),
            ("Toys", "kids"),
            ("Books", "culture"),
        ];
        const BRANDS: [&str; 12] = [
            "Aurora", "Bamboo", "Cedar", "Dawn", "Ember", "Fjord", "Granite", "Harbor", "Iris",
            "Jade", "Koi", "Lotus",
        ];
        const ITEMS: [&str; 12] = [
            "Latte",
            "Beef Noodles",
            "Croissant",
            "Running Shoes",
            "Jeans",
            "Sneakers",
            "Lipstick",
            "Earbuds",
            "Building Blocks",
            "Notebook",
            "Hoodie",
            "Tea Set",
        ];
        const TAGS: [&str; 6] = ["new", "hot", "organic", "imported", "limited", "bestseller"];

        let mall_count = MALLS * size;
        let mut flash_no = 0usize;
        let mut product_no = 0usize;
        for m in 1..=mall_count {
            let mall_id = format!("mall-{m}");
            t.mall_index.insert(mall_id.clone(), t.malls.len());
            t.malls.push(MallRecord {
                mall_id: mall_id.clone(),
                mall_name: format!("{} Plaza {m}", BRANDS[(m - 1) % BRANDS.len()]),
                city: CITIES[(m - 1) % CITIES.len()].to_owned(),
                address: format!("{} Road No. {}", BRANDS[(m + 3) % BRANDS.len()], 100 + m),
                open_time: "10:00".to_owned(),
                close_time: if m % 2 == 0 { "22:30" } else { "22:00" }.to_owned(),
                floor_count: rng.random_range(4..=8),
            });

            let first_store = t.stores.len();
            for s in 0..STORES_PER_MALL {
                let n = first_store + s + 1;
                let store_id = format!("store-{n}");
                let (kind, category) = STORE_KINDS[s % STORE_KINDS.len()];
                t.store_index.insert(store_id.clone(), t.stores.len());
                t.stores_by_mall
                    .entry(mall_id.clone())
                    .or_default()
                    .push(t.stores.len());
                t.stores.push(StoreRecord {
                    store_id,
                    mall_id: mall_id.clone(),
                    store_name: format!("{} {kind}", BRANDS[n % BRANDS.len()]),
                    floor: format!("L{}", 1 + s % 5),
                    category: category.to_owned(),
                });
            }

            let mut listing = Vec::with_capacity(PRODUCTS_PER_MALL);
            let mut flash_items = Vec::with_capacity(FLASH_PER_MALL);
            for p in 0..PRODUCTS_PER_MALL {
                let is_flash = p < FLASH_PER_MALL;
                let sku_id = if is_flash {
                    flash_no += 1;
                    format!("sku-flash-{flash_no}")
                } else {
                    product_no += 1;
                    format!("sku-{product_no}")
                };
                // Spread products over the mall's stores so a page of the
                // listing touches many stores (the DataLoader's real job).
                let store = &t.stores[first_store + (p * 7 + m) % STORES_PER_MALL];
                let store_id = store.store_id.clone();
                let category = store.category.clone();
                let list_price_fen =
                    rng.random_range(5..=2000) * 100 - 10 * rng.random_range(0..=1);
                let tag = *TAGS.choose(&mut rng).unwrap_or(&"new");
                let flash = is_flash.then(|| FlashRecord {
                    flash_price_fen: list_price_fen / 2,
                    start_at: if sku_id == UPCOMING_FLASH {
                        UPCOMING_FLASH_OPEN
                    } else {
                        FLASH_OPEN
                    },
                    end_at: FLASH_CLOSE,
                    flash_stock: FLASH_STOCK,
                    per_member_limit: flash_limit(&sku_id),
                });
                let idx = t.products.len();
                t.product_index.insert(sku_id.clone(), idx);
                t.products.push(ProductRecord {
                    sku_id,
                    spu_name: format!(
                        "{} {}",
                        BRANDS[rng.random_range(0..BRANDS.len())],
                        ITEMS[rng.random_range(0..ITEMS.len())]
                    ),
                    mall_id: mall_id.clone(),
                    store_id,
                    category,
                    tags: vec![tag.to_owned()],
                    list_price_fen,
                    stock: if is_flash {
                        FLASH_STOCK
                    } else {
                        rng.random_range(0..=500)
                    },
                    flash,
                });
                if is_flash {
                    flash_items.push(idx);
                } else {
                    listing.push(idx);
                }
            }
            t.listing.insert(mall_id.clone(), listing);
            t.flash.insert(mall_id, flash_items);
        }

        const LEVELS: [&str; 4] = ["BASIC", "SILVER", "GOLD", "PLATINUM"];
        let mut coupon_no = 0usize;
        for n in 1..=MEMBERS * size {
            let member_id = format!("member-{n}");
            let (level, points) = match n {
                1 => ("GOLD", 10_000),
                2 => ("BASIC", 0),
                _ => (
                    *LEVELS.choose(&mut rng).unwrap_or(&"BASIC"),
                    rng.random_range(0..50_000),
                ),
            };
            t.member_index.insert(member_id.clone(), t.members.len());
            t.members.push(MemberRecord {
                member_id: member_id.clone(),
                nickname: format!("Shopper {n}"),
                level_code: level.to_owned(),
                points_balance: points,
                wallet_balance_fen: if n == 1 {
                    50_000
                } else {
                    rng.random_range(0..100) * 100
                },
                tags: if n == 1 {
                    vec!["coffee-lover".to_owned()]
                } else {
                    vec![]
                },
            });
            let coupon_count = match n {
                1 => 3,
                2 => 0,
                _ => rng.random_range(0..=3),
            };
            let mut coupons = Vec::new();
            for c in 0..coupon_count {
                coupon_no += 1;
                let cash = c % 2 == 0;
                coupons.push(CouponRecord {
                    coupon_id: format!("coupon-{coupon_no}"),
                    template_name: if cash {
                        format!("¥{} off over ¥{}", 10 * (c + 1), 100 * (c + 1))
                    } else {
                        "10% off storewide".to_owned()
                    },
                    coupon_type: if cash { "CASH" } else { "DISCOUNT" }.to_owned(),
                    face_value: if cash { 1000 * (c as i64 + 1) } else { 10 },
                    min_spend_fen: if cash { 10_000 * (c as i64 + 1) } else { 0 },
                    expire_at: FLASH_CLOSE,
                    status: "UNUSED".to_owned(),
                });
            }
            if !coupons.is_empty() {
                t.coupons.insert(member_id, coupons);
            }
        }

        let mut tenants = HashMap::new();
        tenants.insert(DEMO_TENANT.to_owned(), t);
        Self { tenants }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_ids_exist_with_their_promised_properties() {
        let data = DemoData::generate(42, 1);
        let t = data.tenant(DEMO_TENANT).unwrap();
        assert_eq!(t.malls.len(), 3);
        assert_eq!(t.stores.len(), 60);
        assert_eq!(t.products.len(), 3000);
        assert_eq!(t.members.len(), 1000);
        for mall in ["mall-1", "mall-2", "mall-3"] {
            assert!(t.mall(mall).is_some());
        }
        let m1 = t.member("member-1").unwrap();
        assert_eq!(
            (m1.level_code.as_str(), m1.points_balance),
            ("GOLD", 10_000)
        );
        assert!(m1.wallet_balance_fen > 0);
        assert!(t.coupons["member-1"].len() >= 2);
        assert_eq!(t.member("member-2").unwrap().level_code, "BASIC");
        assert!(!t.coupons.contains_key("member-2"));
        let flash = t.product("sku-flash-1").unwrap();
        assert_eq!((flash.mall_id.as_str(), flash.stock), ("mall-1", 100));
        assert_eq!(
            flash
                .flash
                .as_ref()
                .map(|f| (f.flash_stock, f.per_member_limit)),
            Some((100, 1))
        );
        let own_limit = t.product("sku-flash-4").unwrap().flash.as_ref().unwrap();
        assert_eq!(
            own_limit.per_member_limit, 2,
            "a sale can set its own limit"
        );
        assert_eq!(t.store("store-1").unwrap().mall_id, "mall-1");
    }

    #[test]
    fn the_same_seed_gives_the_same_data_and_size_scales_it() {
        let a = DemoData::generate(7, 1);
        let b = DemoData::generate(7, 1);
        let names = |d: &DemoData| {
            d.tenant(DEMO_TENANT)
                .unwrap()
                .products
                .iter()
                .map(|p| (p.spu_name.clone(), p.list_price_fen))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&a), names(&b));
        assert_ne!(names(&a), names(&DemoData::generate(8, 1)));
        let big = DemoData::generate(7, 3);
        assert_eq!(big.tenant(DEMO_TENANT).unwrap().products.len(), 9000);
    }
}
