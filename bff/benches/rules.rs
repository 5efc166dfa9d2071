//! Promotion rule benchmarks.
//!
//! `cargo bench -p bff --bench rules`
//!
//! 1. One evaluation (a fresh instance from the pool + `evaluate`) of each
//!    example rule on a 20-line cart, p50 and p99, beside the same rule
//!    compiled natively and called directly (the WASM/native ratio), and the
//!    fuel it used.
//! 2. The referee pricing a 20-line cart with 10 and with 100 active
//!    deployments (the five example rules repeated), p50 and p99.
//!
//! Figures are printed as Markdown; `bff/docs/benchmarks.md` records them.
//! Iterations: `BENCH_ITERS` (default 20000).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bff::pricing::engine::{ActiveRule, Observer, Referee};
use bff::pricing::host::{Evaluation, PoolSize, RuleHost, wit};
use bff::pricing::model::{FailurePolicy, FailureReason, Limits, Scope, Stage, Version};
use hdrhistogram::Histogram;

const DIR: &str = env!("PROMOTION_RULES_WASM_DIR");
const NOW: i64 = 1_780_000_000_000;

struct Quiet;
impl Observer for Quiet {
    fn observed(&self, _: &ActiveRule, _: &Evaluation, _: Option<&FailureReason>) {}
}

fn iters() -> u64 {
    std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn host_cart() -> wit::Cart {
    let categories = ["food", "fashion", "beauty", "kids", "sports"];
    let lines: Vec<wit::Line> = (0..20)
        .map(|i| {
            let unit = 1_000 + i64::from(i) * 750;
            wit::Line {
                id: format!("line-{i}"),
                sku: format!("sku-{i}"),
                store: format!("store-{}", i % 4),
                category: categories[i as usize % categories.len()].into(),
                tags: if i % 7 == 0 {
                    vec!["new".into()]
                } else {
                    vec![]
                },
                unit_price: unit,
                quantity: 1 + i % 3,
                payable: unit * i64::from(1 + i % 3),
                flash_sale: (i % 5 == 0).then_some(wit::FlashSale {
                    price: unit / 2,
                    starts_at: NOW - 3_600_000,
                    ends_at: NOW + 3_600_000,
                }),
            }
        })
        .collect();
    let payable = lines.iter().map(|l| l.payable).sum();
    wit::Cart {
        kind: wit::BatchKind::Cart,
        tenant: "demo".into(),
        mall: "mall-1".into(),
        channel: wit::Channel::App,
        now: NOW,
        member: Some(wit::Member {
            id: "member-1".into(),
            level: "gold".into(),
            points: 10_000,
            tags: vec!["coffee-lover".into()],
        }),
        lines,
        payable,
        held_coupons: vec![
            wit::Coupon {
                id: "c-1".into(),
                title: "¥20 off over ¥100".into(),
                value: wit::CouponValue::AmountOff(2_000),
                min_spend: 10_000,
                expires_at: NOW + 86_400_000,
            },
            wit::Coupon {
                id: "c-2".into(),
                title: "10% off".into(),
                value: wit::CouponValue::PercentOff(1_000),
                min_spend: 0,
                expires_at: NOW + 86_400_000,
            },
        ],
        chosen_coupons: vec!["c-1".into(), "c-2".into()],
        points_to_use: 3_000,
    }
}

/// The same cart in the guest SDK's types, for the native runs.
fn guest_cart(c: &wit::Cart) -> promotion_sdk::Cart {
    use promotion_sdk as g;
    g::Cart {
        kind: g::BatchKind::Cart,
        tenant: c.tenant.clone(),
        mall: c.mall.clone(),
        channel: g::Channel::App,
        now: c.now,
        member: c.member.as_ref().map(|m| g::Member {
            id: m.id.clone(),
            level: m.level.clone(),
            points: m.points,
            tags: m.tags.clone(),
        }),
        lines: c
            .lines
            .iter()
            .map(|l| g::Line {
                id: l.id.clone(),
                sku: l.sku.clone(),
                store: l.store.clone(),
                category: l.category.clone(),
                tags: l.tags.clone(),
                unit_price: l.unit_price,
                quantity: l.quantity,
                payable: l.payable,
                flash_sale: l.flash_sale.as_ref().map(|f| g::FlashSale {
                    price: f.price,
                    starts_at: f.starts_at,
                    ends_at: f.ends_at,
                }),
            })
            .collect(),
        payable: c.payable,
        held_coupons: c
            .held_coupons
            .iter()
            .map(|k| g::Coupon {
                id: k.id.clone(),
                title: k.title.clone(),
                value: match k.value {
                    wit::CouponValue::AmountOff(a) => g::CouponValue::AmountOff(a),
                    wit::CouponValue::PercentOff(p) => g::CouponValue::PercentOff(p),
                },
                min_spend: k.min_spend,
                expires_at: k.expires_at,
            })
            .collect(),
        chosen_coupons: c.chosen_coupons.clone(),
        points_to_use: c.points_to_use,
    }
}

type Native =
    fn(&str, promotion_sdk::Cart) -> Result<promotion_sdk::Outcome, promotion_sdk::RuleError>;

struct Example {
    name: &'static str,
    file: &'static str,
    stage: Stage,
    config: &'static str,
    native: Native,
}

const EXAMPLES: &[Example] = &[
    Example {
        name: "member-discount",
        file: "rule_member_discount",
        stage: Stage::Item,
        config: r#"{"levels":{"silver":200,"gold":500,"platinum":800}}"#,
        native: rule_member_discount::run,
    },
    Example {
        name: "flash-sale",
        file: "rule_flash_sale",
        stage: Stage::Item,
        config: r#"{"label":"Flash sale","limit_per_order":2}"#,
        native: rule_flash_sale::run,
    },
    Example {
        name: "spend-threshold",
        file: "rule_spend_threshold",
        stage: Stage::Order,
        config: r#"{"threshold":20000,"off":3000,"repeatable":true,"max_times":3}"#,
        native: rule_spend_threshold::run,
    },
    Example {
        name: "coupon",
        file: "rule_coupon",
        stage: Stage::Coupon,
        config: r#"{"max_per_order":1}"#,
        native: rule_coupon::run,
    },
    Example {
        name: "points-offset",
        file: "rule_points_offset",
        stage: Stage::Points,
        config: r#"{"points_per_yuan":100,"max_share_bp":3000}"#,
        native: rule_points_offset::run,
    },
];

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

fn measure(iterations: u64, mut f: impl FnMut()) -> Histogram<u64> {
    // Warm up.
    for _ in 0..(iterations / 10).max(100) {
        f();
    }
    let mut h = histogram();
    for _ in 0..iterations {
        let t = Instant::now();
        f();
        h.record(t.elapsed().as_nanos().max(1) as u64).ok();
    }
    h
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1_000.0
}

fn active(host: &RuleHost, e: &Example, name: String, priority: i32) -> ActiveRule {
    let bytes = std::fs::read(format!("{DIR}/{}.wasm", e.file)).expect("guest built by build.rs");
    ActiveRule {
        name,
        version: Arc::new(Version {
            version: 1,
            component: String::new(),
            config: e.config.into(),
            scope: Scope::default(),
            stage: e.stage,
            priority,
            stacking_group: None,
            limits: Limits::default(),
            failure_policy: FailurePolicy::Skip,
            published_at: chrono::Utc::now(),
            published_by: String::new(),
        }),
        compiled: host.compile_cached(&bytes).expect("example compiles"),
        revision: 1,
    }
}

fn main() {
    // Cargo passes `--bench`; nothing else is accepted.
    let n = iters();
    let host = RuleHost::shared(PoolSize { instances: 64 }).expect("host");
    let cart = host_cart();
    let limits = Limits::default();

    println!("## One evaluation, 20-line cart ({n} iterations)\n");
    println!(
        "| rule | WASM p50 µs | WASM p99 µs | native p50 µs | native p99 µs | ratio p50 | fuel |"
    );
    println!("|---|---|---|---|---|---|---|");
    for e in EXAMPLES {
        let rule = active(&host, e, e.name.into(), 0);
        let first = host.evaluate(&rule.compiled, &limits, e.config, &cart);
        assert!(
            matches!(first.result, Ok(Ok(_))),
            "{} fails: {:?}",
            e.name,
            first.result
        );
        let wasm = measure(n, || {
            let ev = host.evaluate(&rule.compiled, &limits, e.config, black_box(&cart));
            black_box(ev);
        });
        let guest = guest_cart(&cart);
        let native = measure(n, || {
            let out = (e.native)(black_box(e.config), black_box(guest.clone()));
            black_box(out).ok();
        });
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}× | {} |",
            e.name,
            us(&wasm, 0.5),
            us(&wasm, 0.99),
            us(&native, 0.5),
            us(&native, 0.99),
            us(&wasm, 0.5) / us(&native, 0.5).max(0.001),
            first.fuel_used
        );
    }

    // The fixed part: a fresh instance and a call with no cart.
    let rule = active(&host, &EXAMPLES[4], "points".into(), 0);
    let fixed = measure(n, || {
        black_box(host.check_config(&rule.compiled, &limits, EXAMPLES[4].config)).ok();
    });
    let empty = wit::Cart {
        lines: Vec::new(),
        held_coupons: Vec::new(),
        chosen_coupons: Vec::new(),
        payable: 0,
        ..cart.clone()
    };
    let no_lines = measure(n, || {
        black_box(host.evaluate(
            &rule.compiled,
            &limits,
            EXAMPLES[4].config,
            black_box(&empty),
        ));
    });
    println!(
        "\nFixed cost (points-offset): instantiate + `check-config` p50 {:.2} µs, p99 {:.2} µs; \
         instantiate + `evaluate` of an empty cart p50 {:.2} µs, p99 {:.2} µs.",
        us(&fixed, 0.5),
        us(&fixed, 0.99),
        us(&no_lines, 0.5),
        us(&no_lines, 0.99)
    );

    println!("\n## Quote: the referee over a 20-line cart\n");
    println!("| active deployments | p50 µs | p99 µs | per rule p50 µs |");
    println!("|---|---|---|---|");
    for count in [10usize, 100] {
        // Many item and order campaigns (item rules in one stacking group, as
        // member and flash prices are configured), one coupon and one points
        // deployment: a coupon or points are redeemed once per order.
        let mut rules: Vec<ActiveRule> = (0..count - 2)
            .map(|i| {
                let e = &EXAMPLES[i % 3];
                let mut rule = active(&host, e, format!("{}-{i}", e.name), i as i32);
                if e.stage == Stage::Item {
                    let mut v = (*rule.version).clone();
                    v.stacking_group = Some("item-price".into());
                    rule.version = Arc::new(v);
                }
                rule
            })
            .collect();
        rules.push(active(&host, &EXAMPLES[3], "coupon".into(), 0));
        rules.push(active(&host, &EXAMPLES[4], "points".into(), 0));
        let referee = Referee {
            host: &host,
            observer: &Quiet,
            budget: std::time::Duration::from_secs(5),
        };
        let mut check = cart.clone();
        let priced = referee.price(&rules, &mut check).expect("prices");
        assert!(priced.failures.is_empty(), "{:?}", priced.failures);
        let iterations = (n / count as u64).max(200);
        let h = measure(iterations, || {
            let mut c = cart.clone();
            black_box(referee.price(black_box(&rules), &mut c).ok());
        });
        println!(
            "| {count} | {:.1} | {:.1} | {:.2} |",
            us(&h, 0.5),
            us(&h, 0.99),
            us(&h, 0.5) / count as f64
        );
    }
}
