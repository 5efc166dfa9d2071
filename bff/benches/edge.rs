//! The cost of the GraphQL edge's document guards and response completion.
//!
//! `cargo bench -p bff --bench edge`
//!
//! For the home-card query and for the largest document the default limits
//! accept, the CPU time (p50 / p99, µs) of:
//!
//! * `parse only` — async-graphql's parser alone (what parsing cost before
//!   the guards);
//! * `scan` — the flat token scan that bounds nesting, tokens and
//!   directives before anything recursive runs;
//! * `guarded parse` — scan + parse + alias count + the memoised fragment
//!   expansion (what an uncached document costs now);
//! * `cached` — a document-cache hit (what a repeated query costs: client
//!   apps send the same few);
//! * `complete` — completing a real card response (captured from the app
//!   with the demo upstreams) as the GraphQL specification requires: every
//!   request pays this.
//!
//! Then the same figures as a share of one card request's server CPU
//! (measured in `homecard_load`: about 560 µs per card).
//!
//! Iterations: `BENCH_ITERS` (default 5000).

use std::hint::black_box;
use std::time::Instant;

use async_graphql::Variables;
use bff::config::{GraphqlSettings, Settings};
use bff::graphql::complete::Shape;
use bff::graphql::limits::{self, Limits};
use bff::graphql::{DocumentCache, guard};
use bff::startup::Application;
use hdrhistogram::Histogram;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CARD: &str = r#"query Card($mallId: ID!) {
  homeCard(mallId: $mallId) {
    mall { id name openingHours { opens closes } }
    member { id level points }
    coupons { id kind }
    flashSale { id name listPrice { amount } price { final { amount } } store { id name } }
    recommended { id name price { list { amount } final { amount } savings { amount } applied { ruleId } } store { id name } }
  }
}"#;

/// Server CPU of one card request, from `homecard_load` (µs).
const CARD_CPU_US: f64 = 560.0;

fn iters() -> u64 {
    std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
}

/// The largest document the default limits accept: a fragment spreading
/// just under `max_fields` fields (repeated fields with arguments, which
/// validation must compare pairwise to merge).
fn largest_accepted(settings: &GraphqlSettings) -> String {
    let mut fields = String::new();
    let mut n = 0;
    // `malls { id name ... }` selections, each `aN: malls { id }` would hit
    // the alias limit; plain repeated fields merge, so spread a fragment of
    // many small selections instead.
    // Each group is 5 fields; the operation adds one.
    while (n + 1) * 5 < settings.max_fields {
        fields.push_str("id name openingHours { opens closes } ");
        n += 1;
    }
    let text = format!("query Big {{ malls {{ ...M }} }} fragment M on Mall {{ {fields} }}");
    let limits = limits_of(settings);
    let scanned = guard::scan(&text, &limits.document).expect("within the token limit");
    println!(
        "largest accepted document: {n} field groups, {} tokens",
        scanned.tokens
    );
    limits::parse(&text, &limits).expect("accepted");
    text
}

fn limits_of(settings: &GraphqlSettings) -> Limits {
    Limits {
        document: guard::DocumentLimits {
            max_nesting: settings.max_nesting,
            max_tokens: settings.max_tokens,
            max_directives: settings.max_directives,
            max_fields: settings.max_fields,
        },
        max_aliases: settings.max_aliases,
        max_depth: settings.max_depth,
    }
}

fn measure(mut f: impl FnMut()) -> (f64, f64) {
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for _ in 0..iters() / 10 {
        f();
    }
    for _ in 0..iters() {
        let start = Instant::now();
        f();
        hist.record(start.elapsed().as_nanos() as u64).unwrap();
    }
    (
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

fn row(name: &str, what: &str, (p50, p99): (f64, f64)) {
    println!(
        "| {name} | {what} | {p50:.2} | {p99:.2} | {:.2} % |",
        p50 / CARD_CPU_US * 100.0
    );
}

#[tokio::main]
async fn main() {
    let settings = GraphqlSettings::default();
    let limits = limits_of(&settings);
    let big = largest_accepted(&settings);

    // A real card response from the app and its demo upstreams.
    let data_dir = tempfile::tempdir().unwrap();
    let mut app_settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Settings::default()
    };
    app_settings.store.data_dir = data_dir.path().to_path_buf();
    let app = Application::build(app_settings).await.expect("app builds");
    let url = format!("http://127.0.0.1:{}/graphql", app.port());
    let schema_sdl = app.state().schema().sdl();
    tokio::spawn(app.run_until_stopped());
    let body: serde_json::Value = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({ "query": CARD, "variables": { "mallId": "mall-1" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let card_data = async_graphql::Value::from_json(body["data"].clone()).unwrap();
    let shape = Shape::from_sdl(&schema_sdl).unwrap();
    let card_doc = async_graphql::parser::parse_query(CARD).unwrap();
    let mut vars = Variables::default();
    vars.insert(
        async_graphql::Name::new("mallId"),
        async_graphql::Value::String("mall-1".into()),
    );

    println!("| document | step | p50 µs | p99 µs | p50 / card CPU |");
    println!("|---|---|---|---|---|");
    for (name, text) in [("card", CARD), ("largest accepted", big.as_str())] {
        row(
            name,
            "parse only (before)",
            measure(|| {
                black_box(async_graphql::parser::parse_query(black_box(text)).unwrap());
            }),
        );
        row(
            name,
            "scan",
            measure(|| {
                black_box(guard::scan(black_box(text), &limits.document).unwrap());
            }),
        );
        row(
            name,
            "guarded parse (after)",
            measure(|| {
                black_box(limits::parse(black_box(text), &limits).unwrap());
            }),
        );
        let cache = DocumentCache::new(&settings);
        cache.prepare(text).unwrap();
        row(
            name,
            "cached",
            measure(|| {
                black_box(cache.prepare(black_box(text)).unwrap());
            }),
        );
    }
    row(
        "card",
        "complete the response (no errors: passed through)",
        measure(|| {
            black_box(shape.complete(card_data.clone(), &card_doc, None, &vars, &[]));
        }),
    );
    // With any error the whole answer is walked; the error's field is
    // present here, so the walk does all its work and changes nothing.
    let mut failed = async_graphql::ServerError::new("the member service is unavailable", None);
    failed.path = vec![
        async_graphql::PathSegment::Field("homeCard".into()),
        async_graphql::PathSegment::Field("member".into()),
    ];
    let errors = [failed];
    row(
        "card",
        "complete the response (one field error: full walk)",
        measure(|| {
            black_box(shape.complete(card_data.clone(), &card_doc, None, &vars, &errors));
        }),
    );
    row(
        "card",
        "clone the response (floor of complete)",
        measure(|| {
            black_box(card_data.clone());
        }),
    );
    println!(
        "\nlargest accepted document: {} bytes, card response: {} bytes",
        big.len(),
        body["data"].to_string().len()
    );
}
