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
            points: self.points_balance.max(0),
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

/// Members, coupons, points and wallet.
#[derive(Debug, Clone)]
pub struct MemberClient {
    endpoint: Endpoint,
}

impl MemberClient {
    pub(super) fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
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
        Ok(items.map(|i| {
            let total = i.items.len();
            let coupons: Vec<Coupon> = i
                .items
                .into_iter()
                .filter_map(CouponDto::into_domain)
                .collect();
            tracing::debug!(total, usable = coupons.len(), "coupons fetched");
            coupons
        }))
    }
}
