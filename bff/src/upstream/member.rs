//! Client of the member service.

use std::collections::HashMap;

use chrono::DateTime;
use serde::Deserialize;

use super::{Endpoint, Items, UpstreamError, keep_valid};
use crate::domain::{CouponId, MemberId, Money, TenantId};
use crate::member::{Coupon, CouponKind, Member};

/// The member service's member record.
#[derive(Deserialize)]
struct MemberDto {
    member_id: String,
    nickname: String,
    level_code: String,
    points_balance: i64,
    wallet_balance_fen: i64,
    #[serde(default)]
    tags: Vec<String>,
    /// The member's coupons, when asked for with `include=coupons` and the
    /// service embeds them (an optional part of the contract).
    #[serde(default)]
    coupons: Option<Vec<CouponDto>>,
}

/// The member service's coupon record.
#[derive(Deserialize)]
struct CouponDto {
    coupon_id: String,
    template_name: String,
    coupon_type: String,
    face_value: i64,
    min_spend_fen: i64,
    expire_at: i64,
    status: String,
}

impl MemberDto {
    fn into_domain(self) -> Option<Member> {
        Some(Member {
            id: MemberId::parse(self.member_id).ok()?,
            nickname: self.nickname,
            level: self.level_code,
            // Points are an `Int` in the API: a balance beyond it breaks the
            // contract, and the record is refused like any other bad one.
            points: i64::from(i32::try_from(self.points_balance.max(0)).ok()?),
            wallet: Money::from_minor(self.wallet_balance_fen).ok()?,
            tags: self.tags,
        })
    }
}

impl CouponDto {
    /// Only unused coupons are the member's to use; unknown coupon types
    /// are dropped rather than shown wrongly.
    fn into_domain(self) -> Option<Coupon> {
        if self.status != "UNUSED" {
            return None;
        }
        let (kind, amount_off, percent_off) = match self.coupon_type.as_str() {
            "CASH" => (
                CouponKind::Cash,
                Some(Money::from_minor(self.face_value).ok()?),
                None,
            ),
            "DISCOUNT" if (1..=100).contains(&self.face_value) => {
                (CouponKind::PercentOff, None, Some(self.face_value as u32))
            }
            _ => return None,
        };
        Some(Coupon {
            id: CouponId::parse(self.coupon_id).ok()?,
            title: self.template_name,
            kind,
            amount_off,
            percent_off,
            min_spend: Money::from_minor(self.min_spend_fen).ok()?,
            expires_at: DateTime::from_timestamp(self.expire_at, 0)?,
        })
    }
}

/// A member and their coupons, read in one call.
#[derive(Debug, Clone)]
pub struct MemberRecord {
    /// The member; `None` if there is no such member.
    pub member: Option<Member>,
    /// Their usable coupons as the member service embedded them, with the
    /// meaning of [`MemberClient::coupons`]; `None` when it did not embed
    /// them (the coupons endpoint then has to be asked).
    pub coupons: Option<Option<Vec<Coupon>>>,
}

/// How long a tenant's member service is taken not to embed coupons once
/// it answered without them, before it is asked to again.
const WITHOUT_EMBEDDED_COUPONS: std::time::Duration = std::time::Duration::from_secs(600);

/// Members, coupons, points and wallet.
#[derive(Debug, Clone)]
pub struct MemberClient {
    endpoint: Endpoint,
    /// Tenants whose member service answered `include=coupons` without
    /// coupons: their coupons come from the coupons endpoint, asked
    /// alongside the member.
    no_embedded_coupons: moka::sync::Cache<TenantId, ()>,
}

impl MemberClient {
    pub(super) fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            no_embedded_coupons: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(WITHOUT_EMBEDDED_COUPONS)
                .build(),
        }
    }

    /// Whether `tenant`'s member service is taken to embed a member's
    /// coupons in the member record (it did, or was not asked yet).
    pub fn embeds_coupons(&self, tenant: &TenantId) -> bool {
        !self.no_embedded_coupons.contains_key(tenant)
    }

    /// A member and, when the member service embeds them, their coupons,
    /// in one call (`GET …/members?ids=…&include=coupons`). A service that
    /// ignores `include` answers the member alone; that is remembered for
    /// the tenant (see [`MemberClient::embeds_coupons`]).
    pub async fn member_with_coupons(
        &self,
        tenant: &TenantId,
        id: &MemberId,
    ) -> Result<MemberRecord, UpstreamError> {
        let path = ["tenants", tenant.as_str(), "members"];
        let items: Option<Items<MemberDto>> = self
            .endpoint
            .get(
                "members.batch",
                &path,
                &[("ids", id.as_str()), ("include", "coupons")],
            )
            .await?;
        let Some(mut dto) = items
            .map(|i| i.items)
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.member_id == id.as_str())
        else {
            // No such member: no coupons either.
            return Ok(MemberRecord {
                member: None,
                coupons: Some(None),
            });
        };
        let coupons = dto.coupons.take();
        let member = dto.into_domain();
        if member.is_none() {
            tracing::warn!(upstream = "member", "a malformed member record was dropped");
        }
        let coupons = match coupons {
            Some(coupons) => Some(member.as_ref().map(|_| usable(coupons))),
            None => {
                self.no_embedded_coupons.insert(tenant.clone(), ());
                tracing::info!(
                    tenant = %tenant,
                    "the member service does not embed coupons: asking its coupons endpoint"
                );
                None
            }
        };
        Ok(MemberRecord { member, coupons })
    }

    /// Whether the service answers its health check.
    pub async fn health(&self) -> Result<(), UpstreamError> {
        self.endpoint.health().await
    }

    /// Members by id; unknown ids are absent from the map.
    pub async fn members_by_ids(
        &self,
        tenant: &TenantId,
        ids: &[MemberId],
    ) -> Result<HashMap<MemberId, Member>, UpstreamError> {
        let path = ["tenants", tenant.as_str(), "members"];
        let ids: Vec<&str> = ids.iter().map(MemberId::as_str).collect();
        let items = self
            .endpoint
            .get_batch("members.batch", &path, "ids", &ids)
            .await?;
        Ok(keep_valid("member", items, MemberDto::into_domain)
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect())
    }

    /// The member's usable coupons; `None` if the member does not exist.
    pub async fn coupons(
        &self,
        tenant: &TenantId,
        member: &MemberId,
    ) -> Result<Option<Vec<Coupon>>, UpstreamError> {
        let path = [
            "tenants",
            tenant.as_str(),
            "members",
            member.as_str(),
            "coupons",
        ];
        let items: Option<Items<CouponDto>> = self.endpoint.get("coupons.list", &path, &[]).await?;
        Ok(items.map(|i| usable(i.items)))
    }
}

/// The usable coupons of a coupon list.
fn usable(records: Vec<CouponDto>) -> Vec<Coupon> {
    let total = records.len();
    let coupons: Vec<Coupon> = records
        .into_iter()
        .filter_map(CouponDto::into_domain)
        .collect();
    tracing::debug!(total, usable = coupons.len(), "coupons fetched");
    coupons
}

/// The member service's hold record.
#[derive(Deserialize)]
struct HoldDto {
    request_key: String,
    member_id: String,
    points: i64,
    wallet_fen: i64,
    #[serde(default)]
    coupon_ids: Vec<String>,
    status: String,
}

/// Where a hold is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    /// Points, wallet amount and coupons are frozen.
    Frozen,
    /// Consumed: the points and wallet amount are spent, the coupons used.
    Committed,
    /// Given back (or released before any freeze arrived).
    Released,
}

/// Points, a wallet amount and coupons frozen together under a request key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The request key.
    pub key: String,
    /// The member (`None` for a release that arrived before its freeze).
    pub member: Option<MemberId>,
    /// Points frozen.
    pub points: i64,
    /// Wallet amount frozen.
    pub wallet: Money,
    /// Coupons held.
    pub coupons: Vec<CouponId>,
    /// Its state.
    pub state: HoldState,
}

impl HoldDto {
    fn into_domain(self) -> Option<Hold> {
        Some(Hold {
            key: self.request_key,
            member: if self.member_id.is_empty() {
                None
            } else {
                Some(MemberId::parse(self.member_id).ok()?)
            },
            points: (self.points >= 0).then_some(self.points)?,
            wallet: Money::from_minor(self.wallet_fen).ok()?,
            coupons: self
                .coupon_ids
                .into_iter()
                .map(CouponId::parse)
                .collect::<Result<_, _>>()
                .ok()?,
            state: match self.status.as_str() {
                "FROZEN" => HoldState::Frozen,
                "COMMITTED" => HoldState::Committed,
                "RELEASED" => HoldState::Released,
                _ => return None,
            },
        })
    }
}

/// What to freeze.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRequest {
    /// Whose.
    pub member: MemberId,
    /// Points.
    pub points: i64,
    /// Wallet amount.
    pub wallet: Money,
    /// Coupons.
    pub coupons: Vec<CouponId>,
}

/// Why the member service refused a hold operation. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldRefusal {
    /// Fewer points available than asked for.
    InsufficientPoints,
    /// Less wallet balance available than asked for.
    InsufficientBalance,
    /// A coupon is not the member's, used, or held by another order.
    CouponUnavailable,
    /// The key was released (a freeze or commit arrived too late).
    Released,
    /// The key was committed (a release arrived too late).
    Committed,
    /// The key froze something else before.
    KeyReused,
    /// No such member or hold.
    NotFound,
}

impl HoldRefusal {
    fn from_code(code: &str) -> Self {
        match code {
            "INSUFFICIENT_POINTS" => HoldRefusal::InsufficientPoints,
            "INSUFFICIENT_BALANCE" => HoldRefusal::InsufficientBalance,
            "COUPON_UNAVAILABLE" => HoldRefusal::CouponUnavailable,
            "HOLD_RELEASED" => HoldRefusal::Released,
            "HOLD_COMMITTED" => HoldRefusal::Committed,
            "REQUEST_KEY_REUSED" => HoldRefusal::KeyReused,
            _ => HoldRefusal::NotFound,
        }
    }
}

impl MemberClient {
    fn hold_answer(
        &self,
        answer: super::Answer<HoldDto>,
    ) -> Result<Result<Hold, HoldRefusal>, UpstreamError> {
        match answer {
            super::Answer::Done(dto) => dto
                .into_domain()
                .map(Ok)
                .ok_or(UpstreamError::BadResponse("member")),
            super::Answer::Refused { code, .. } => Ok(Err(HoldRefusal::from_code(&code))),
        }
    }

    /// Freezes points, a wallet amount and coupons, all or nothing. The
    /// same key with the same request answers the same hold.
    pub async fn freeze(
        &self,
        tenant: &TenantId,
        key: &str,
        request: &HoldRequest,
    ) -> Result<Result<Hold, HoldRefusal>, UpstreamError> {
        let path = ["tenants", tenant.as_str(), "holds", key];
        let body = serde_json::json!({
            "member_id": request.member.as_str(),
            "points": request.points,
            "wallet_fen": request.wallet.minor(),
            "coupon_ids": request.coupons.iter().map(CouponId::as_str).collect::<Vec<_>>(),
        });
        let answer = self
            .endpoint
            .send("holds.freeze", reqwest::Method::PUT, &path, Some(&body))
            .await?;
        self.hold_answer(answer)
    }

    /// Gives a hold back (idempotent; releasing an unknown key makes a
    /// later freeze with it fail).
    pub async fn release(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> Result<Result<Hold, HoldRefusal>, UpstreamError> {
        let path = ["tenants", tenant.as_str(), "holds", key, "release"];
        let answer = self
            .endpoint
            .send("holds.release", reqwest::Method::POST, &path, None)
            .await?;
        self.hold_answer(answer)
    }

    /// Consumes a hold (idempotent).
    pub async fn commit(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> Result<Result<Hold, HoldRefusal>, UpstreamError> {
        let path = ["tenants", tenant.as_str(), "holds", key, "commit"];
        let answer = self
            .endpoint
            .send("holds.commit", reqwest::Method::POST, &path, None)
            .await?;
        self.hold_answer(answer)
    }

    /// A hold by key; `None` if the service never saw the key.
    pub async fn hold(&self, tenant: &TenantId, key: &str) -> Result<Option<Hold>, UpstreamError> {
        let dto: Option<HoldDto> = self
            .endpoint
            .get(
                "holds.get",
                &["tenants", tenant.as_str(), "holds", key],
                &[],
            )
            .await?;
        match dto {
            Some(dto) => dto
                .into_domain()
                .map(Some)
                .ok_or(UpstreamError::BadResponse("member")),
            None => Ok(None),
        }
    }
}
