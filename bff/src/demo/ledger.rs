//! The demo member service's ledger: live points and wallet balances and
//! coupon states, and *holds* — points, a wallet amount and coupons frozen
//! together under a request key, then committed (consumed once) or released
//! (given back once).
//!
//! Every operation is idempotent by its request key, and a release that
//! arrives before its freeze (a checkout compensated while its freeze was
//! still in flight) leaves a tombstone, so the late freeze is refused
//! rather than freezing for ever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::data::DemoData;

/// Longest request key accepted.
const MAX_KEY: usize = 128;

#[derive(Debug, Clone, Copy, Default)]
struct Account {
    points: i64,
    wallet_fen: i64,
}

/// A hold as the member service sends it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HoldRecord {
    /// The caller's request key.
    pub request_key: String,
    /// The member (empty for a release that came first).
    pub member_id: String,
    /// Points frozen.
    pub points: i64,
    /// Wallet amount frozen, in fen.
    pub wallet_fen: i64,
    /// Coupons held.
    pub coupon_ids: Vec<String>,
    /// `FROZEN`, `COMMITTED` or `RELEASED`.
    pub status: &'static str,
}

#[derive(Default)]
struct Books {
    /// (tenant, member) → available balances, created from the demo data on
    /// first use.
    accounts: HashMap<(String, String), Account>,
    /// (tenant, coupon) → `HELD` or `USED` (absent: as in the demo data).
    coupons: HashMap<(String, String), &'static str>,
    /// (tenant, request key) → hold.
    holds: HashMap<(String, String), HoldRecord>,
}

/// Live balances and holds of every member. Cloning shares them.
#[derive(Clone)]
pub struct Ledger {
    data: Arc<DemoData>,
    books: Arc<Mutex<Books>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

/// A freeze request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeRequest {
    member_id: String,
    #[serde(default)]
    points: i64,
    #[serde(default)]
    wallet_fen: i64,
    #[serde(default)]
    coupon_ids: Vec<String>,
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

impl Ledger {
    /// A ledger over the demo data's opening balances.
    pub fn new(data: Arc<DemoData>) -> Self {
        Self {
            data,
            books: Arc::default(),
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The member's available (not frozen, not spent) points and wallet
    /// balance; `None` for an unknown member.
    pub fn balances(&self, tenant: &str, member: &str) -> Option<(i64, i64)> {
        let record = self.data.tenant(tenant)?.member(member)?;
        let books = self.books();
        Some(
            match books.accounts.get(&(tenant.to_owned(), member.to_owned())) {
                Some(a) => (a.points, a.wallet_fen),
                None => (record.points_balance, record.wallet_balance_fen),
            },
        )
    }

    /// A coupon's state: `UNUSED`, `HELD` or `USED`.
    pub fn coupon_status(&self, tenant: &str, coupon: &str) -> &'static str {
        self.books()
            .coupons
            .get(&(tenant.to_owned(), coupon.to_owned()))
            .copied()
            .unwrap_or("UNUSED")
    }

    /// A hold by request key.
    pub fn hold(&self, tenant: &str, key: &str) -> Option<HoldRecord> {
        self.books()
            .holds
            .get(&(tenant.to_owned(), key.to_owned()))
            .cloned()
    }

    fn freeze(&self, tenant: &str, key: &str, req: FreezeRequest) -> Response {
        if req.points < 0 || req.wallet_fen < 0 {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "amounts must not be negative",
            );
        }
        let Some(record) = self
            .data
            .tenant(tenant)
            .and_then(|t| t.member(&req.member_id))
        else {
            return refuse(StatusCode::NOT_FOUND, "NOT_FOUND", "no such member");
        };
        let owned: Vec<String> = self
            .data
            .tenant(tenant)
            .and_then(|t| t.coupons.get(&req.member_id))
            .map(|c| c.iter().map(|c| c.coupon_id.clone()).collect())
            .unwrap_or_default();
        let mut books = self.books();
        let hold_key = (tenant.to_owned(), key.to_owned());
        if let Some(existing) = books.holds.get(&hold_key) {
            if existing.status == "RELEASED" {
                return refuse(
                    StatusCode::CONFLICT,
                    "HOLD_RELEASED",
                    "this request key was released",
                );
            }
            let same = existing.member_id == req.member_id
                && existing.points == req.points
                && existing.wallet_fen == req.wallet_fen
                && existing.coupon_ids == req.coupon_ids;
            if !same {
                return refuse(
                    StatusCode::CONFLICT,
                    "REQUEST_KEY_REUSED",
                    "this request key froze something else",
                );
            }
            return Json(existing.clone()).into_response();
        }
        let account_key = (tenant.to_owned(), req.member_id.clone());
        let account = *books
            .accounts
            .entry(account_key.clone())
            .or_insert(Account {
                points: record.points_balance,
                wallet_fen: record.wallet_balance_fen,
            });
        // Every check before any change: the hold is all or nothing.
        if account.points < req.points {
            return refuse(
                StatusCode::CONFLICT,
                "INSUFFICIENT_POINTS",
                "not enough points",
            );
        }
        if account.wallet_fen < req.wallet_fen {
            return refuse(
                StatusCode::CONFLICT,
                "INSUFFICIENT_BALANCE",
                "not enough wallet balance",
            );
        }
        let mut distinct = req.coupon_ids.clone();
        distinct.sort();
        distinct.dedup();
        for coupon in &req.coupon_ids {
            let free = owned.contains(coupon)
                && !books
                    .coupons
                    .contains_key(&(tenant.to_owned(), coupon.clone()));
            if !free || distinct.len() != req.coupon_ids.len() {
                return refuse(
                    StatusCode::CONFLICT,
                    "COUPON_UNAVAILABLE",
                    "a coupon is not the member's to use",
                );
            }
        }
        books.accounts.insert(
            account_key,
            Account {
                points: account.points - req.points,
                wallet_fen: account.wallet_fen - req.wallet_fen,
            },
        );
        for coupon in &req.coupon_ids {
            books
                .coupons
                .insert((tenant.to_owned(), coupon.clone()), "HELD");
        }
        let hold = HoldRecord {
            request_key: key.to_owned(),
            member_id: req.member_id,
            points: req.points,
            wallet_fen: req.wallet_fen,
            coupon_ids: req.coupon_ids,
            status: "FROZEN",
        };
        books.holds.insert(hold_key, hold.clone());
        Json(hold).into_response()
    }

    fn release(&self, tenant: &str, key: &str) -> Response {
        let mut books = self.books();
        let hold_key = (tenant.to_owned(), key.to_owned());
        let Some(hold) = books.holds.get(&hold_key).cloned() else {
            // Released before it was frozen: remember, so a late freeze
            // with this key is refused.
            let tombstone = HoldRecord {
                request_key: key.to_owned(),
                member_id: String::new(),
                points: 0,
                wallet_fen: 0,
                coupon_ids: Vec::new(),
                status: "RELEASED",
            };
            books.holds.insert(hold_key, tombstone.clone());
            return Json(tombstone).into_response();
        };
        match hold.status {
            "RELEASED" => Json(hold).into_response(),
            "COMMITTED" => refuse(
                StatusCode::CONFLICT,
                "HOLD_COMMITTED",
                "this hold was committed",
            ),
            _ => {
                let account_key = (tenant.to_owned(), hold.member_id.clone());
                let account = books.accounts.entry(account_key).or_default();
                account.points += hold.points;
                account.wallet_fen += hold.wallet_fen;
                for coupon in &hold.coupon_ids {
                    books.coupons.remove(&(tenant.to_owned(), coupon.clone()));
                }
                let released = HoldRecord {
                    status: "RELEASED",
                    ..hold
                };
                books.holds.insert(hold_key, released.clone());
                Json(released).into_response()
            }
        }
    }

    fn commit(&self, tenant: &str, key: &str) -> Response {
        let mut books = self.books();
        let hold_key = (tenant.to_owned(), key.to_owned());
        let Some(hold) = books.holds.get(&hold_key).cloned() else {
            return refuse(StatusCode::NOT_FOUND, "NOT_FOUND", "no such hold");
        };
        match hold.status {
            "COMMITTED" => Json(hold).into_response(),
            "RELEASED" => refuse(
                StatusCode::CONFLICT,
                "HOLD_RELEASED",
                "this hold was released",
            ),
            _ => {
                for coupon in &hold.coupon_ids {
                    books
                        .coupons
                        .insert((tenant.to_owned(), coupon.clone()), "USED");
                }
                let committed = HoldRecord {
                    status: "COMMITTED",
                    ..hold
                };
                books.holds.insert(hold_key, committed.clone());
                Json(committed).into_response()
            }
        }
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn bad_key() -> Response {
    refuse(
        StatusCode::BAD_REQUEST,
        "BAD_REQUEST",
        "request keys are 1-128 letters, digits, '-', '_', '.', ':'",
    )
}

async fn put_hold(
    State(ledger): State<Ledger>,
    Path((tenant, key)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if !valid_key(&key) {
        return bad_key();
    }
    match serde_json::from_slice::<FreezeRequest>(&body) {
        Ok(req) => ledger.freeze(&tenant, &key, req),
        Err(_) => refuse(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "body must be {member_id, points, wallet_fen, coupon_ids}",
        ),
    }
}

async fn get_hold(
    State(ledger): State<Ledger>,
    Path((tenant, key)): Path<(String, String)>,
) -> Response {
    match ledger.hold(&tenant, &key) {
        Some(hold) => Json(hold).into_response(),
        None => refuse(StatusCode::NOT_FOUND, "NOT_FOUND", "no such hold"),
    }
}

async fn release_hold(
    State(ledger): State<Ledger>,
    Path((tenant, key)): Path<(String, String)>,
) -> Response {
    if !valid_key(&key) {
        return bad_key();
    }
    ledger.release(&tenant, &key)
}

async fn commit_hold(
    State(ledger): State<Ledger>,
    Path((tenant, key)): Path<(String, String)>,
) -> Response {
    if !valid_key(&key) {
        return bad_key();
    }
    ledger.commit(&tenant, &key)
}

/// The hold endpoints of the member service.
pub fn router<S: Clone + Send + Sync + 'static>(ledger: Ledger) -> Router<S> {
    Router::new()
        .route("/tenants/{tenant}/holds/{key}", get(get_hold).put(put_hold))
        .route("/tenants/{tenant}/holds/{key}/release", post(release_hold))
        .route("/tenants/{tenant}/holds/{key}/commit", post(commit_hold))
        .with_state(ledger)
}
