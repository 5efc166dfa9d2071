//! The checkout's domain operations on Redis: one Lua script per atomic
//! step (sent once, then called by SHA), every key of a script under the
//! scope's hash tag, and every script doing all its checks before its first
//! write (Redis does not roll a script back). The outbox is a Redis Stream
//! per scope read through consumer groups.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::Value;

use super::StoreError;
use super::checkout::{
    CheckoutStore, CreateRefusal, Due, IdempotencyBegin, IdempotencyRef, NewOrder, OrderId,
    OutboxEvent, Scope, StepOutcome, StockEffect, StockLevel, StoredOrder, check_lines,
    decode_lines, encode_lines, reservation_from, status_from,
};
use super::checkout::{OrderStatus, Reservation, Step};
use super::redis::RedisStore;
use crate::domain::{MallId, MemberId, ProductId, TenantId};

/// KEYS: order, due, outbox, then (stock, bought) per line.
/// ARGV: id, member, due_at, body, lines, n, qty per line, then `awaiting`
/// to go on to `AWAITING_PAYMENT` (due at `due_at`) in the same step, or
/// nothing.
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
local n = tonumber(ARGV[6])
for i = 1, n do
  local stock = KEYS[2 + 2 * i]
  local bought = KEYS[3 + 2 * i]
  local qty = tonumber(ARGV[6 + i])
  local row = redis.call('HMGET', stock, 'available', 'limit')
  if not row[1] then return {'unknown_sku', i} end
  if tonumber(row[1]) < qty then return {'sold_out', i} end
  local limit = tonumber(row[2] or '0')
  if limit > 0 then
    local had = tonumber(redis.call('HGET', bought, ARGV[2]) or '0')
    if had + qty > limit then return {'limit', i} end
  end
end
for i = 1, n do
  local qty = tonumber(ARGV[6 + i])
  redis.call('HINCRBY', KEYS[2 + 2 * i], 'available', -qty)
  redis.call('HINCRBY', KEYS[2 + 2 * i], 'reserved', qty)
  redis.call('HINCRBY', KEYS[3 + 2 * i], ARGV[2], qty)
end
local reservation = 'none'
if n > 0 then reservation = 'held' end
local awaiting = ARGV[7 + n] == 'awaiting'
local status, version = 'RESERVED', 2
if awaiting then status, version = 'AWAITING_PAYMENT', 3 end
redis.call('HSET', KEYS[1], 'status', status, 'version', version, 'member', ARGV[2],
  'lines', ARGV[5], 'reservation', reservation, 'body', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[3], '*', 'kind', 'order.created', 'order', ARGV[1],
  'status', 'CREATED', 'version', 1, 'body', ARGV[4])
redis.call('XADD', KEYS[3], '*', 'kind', 'order.reserved', 'order', ARGV[1],
  'status', 'RESERVED', 'version', 2, 'body', ARGV[4])
if awaiting then
  redis.call('XADD', KEYS[3], '*', 'kind', 'order.awaiting_payment', 'order', ARGV[1],
    'status', 'AWAITING_PAYMENT', 'version', 3, 'body', ARGV[4])
end
return {'created'}
"#;

/// KEYS: order, due, outbox, then (stock, bought) per line.
/// ARGV: version, status, to, body, stock effect, due mode, due at,
/// payment id, event kind, order id, member, n, qty per line, retention.
/// An order that reaches a final status with nothing left to do (its due
/// entry cleared) is kept for the retention time, then Redis drops it.
const APPLY: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'status', 'version', 'reservation')
if not cur[1] then return 'missing' end
if cur[1] ~= ARGV[2] or cur[2] ~= ARGV[1] then return 'conflict' end
if ARGV[5] ~= 'none' and cur[3] ~= 'held' then return 'conflict' end
if ARGV[8] ~= '' and redis.call('HEXISTS', KEYS[1], 'pay:' .. ARGV[8]) == 1 then
  return 'duplicate_payment'
end
local n = tonumber(ARGV[12])
local version = tonumber(cur[2]) + 1
for i = 1, n do
  local qty = tonumber(ARGV[12 + i])
  if ARGV[5] == 'release' then
    redis.call('HINCRBY', KEYS[2 + 2 * i], 'reserved', -qty)
    redis.call('HINCRBY', KEYS[2 + 2 * i], 'available', qty)
    redis.call('HINCRBY', KEYS[3 + 2 * i], ARGV[11], -qty)
  elseif ARGV[5] == 'sell' then
    redis.call('HINCRBY', KEYS[2 + 2 * i], 'reserved', -qty)
    redis.call('HINCRBY', KEYS[2 + 2 * i], 'sold', qty)
  end
end
if ARGV[5] == 'release' then redis.call('HSET', KEYS[1], 'reservation', 'released') end
if ARGV[5] == 'sell' then redis.call('HSET', KEYS[1], 'reservation', 'sold') end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'pay:' .. ARGV[8], 1) end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'version', version, 'body', ARGV[4])
if ARGV[6] == 'set' then redis.call('ZADD', KEYS[2], ARGV[7], ARGV[10]) end
if ARGV[6] == 'clear' then redis.call('ZREM', KEYS[2], ARGV[10]) end
redis.call('XADD', KEYS[3], '*', 'kind', ARGV[9], 'order', ARGV[10],
  'status', ARGV[3], 'version', version, 'body', ARGV[4])
local final = ARGV[3] == 'COMPLETED' or ARGV[3] == 'CANCELLED' or ARGV[3] == 'EXPIRED'
if final and ARGV[6] == 'clear' then redis.call('PEXPIRE', KEYS[1], ARGV[13 + n]) end
return 'applied:' .. version
"#;

/// KEYS: due. ARGV: now, lease, limit.
const CLAIM_DUE: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local next = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', next, id) end
return ids
"#;

/// KEYS: stock. ARGV: initial, limit.
const DEFINE_STOCK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'available', ARGV[1], 'reserved', 0, 'sold', 0, 'limit', ARGV[2])
return 1
"#;

/// KEYS: record. ARGV: fingerprint, lease.
const IDEM_BEGIN: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'fp', 'state', 'answer')
if r[1] then
  if r[1] ~= ARGV[1] then return {'reused'} end
  if r[2] == 'done' then return {'done', r[3]} end
  return {'running'}
end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'running')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'started'}
"#;

/// KEYS: record. ARGV: fingerprint, answer, ttl.
const IDEM_COMPLETE: &str = r#"
local fp = redis.call('HGET', KEYS[1], 'fp')
if fp and fp ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'done', 'answer', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// KEYS: record. ARGV: fingerprint.
const IDEM_ABANDON: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'fp', 'state')
if r[1] == ARGV[1] and r[2] == 'running' then redis.call('DEL', KEYS[1]) return 1 end
return 0
"#;

/// How long this node trusts that it wrote a scope into the scope list:
/// within it, steps of the scope skip the (idempotent) write; after it, the
/// next step writes it again, so a Redis that lost the list (a restart
/// without persistence, a failover) has it back within this time.
const SCOPE_NOTE_REFRESH: Duration = Duration::from_secs(60);

/// KEYS: the scope's outbox stream. ARGV: cutoff (ms). Removes entries
/// older than the cutoff that every group has read and acknowledged: the
/// floor is the smallest of each group's first pending id and the id after
/// its last delivered one. No group: nothing is removed. Returns how many
/// entries were removed.
const OUTBOX_TRIM: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(ams, aseq, bms, bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
local fms, fseq = tonumber(ARGV[1]), 0
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
for _, g in ipairs(groups) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  local ms, seq = parse(last)
  seq = seq + 1
  local pending = redis.call('XPENDING', KEYS[1], name)
  if pending[1] > 0 then
    local pms, pseq = parse(pending[2])
    if less(pms, pseq, ms, seq) then ms, seq = pms, pseq end
  end
  if less(ms, seq, fms, fseq) then fms, fseq = ms, seq end
end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%.0f-%.0f', fms, fseq))
"#;

/// The scripts, built once per store (each is sent to Redis once and then
/// called by its SHA), and the scopes this node wrote into the scope list
/// lately (see [`SCOPE_NOTE_REFRESH`]).
#[derive(Clone)]
pub(super) struct Scripts {
    create: redis::Script,
    apply: redis::Script,
    claim_due: redis::Script,
    define_stock: redis::Script,
    idem_begin: redis::Script,
    idem_complete: redis::Script,
    idem_abandon: redis::Script,
    noted: Arc<Mutex<HashMap<String, Instant>>>,
    outbox_trim: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            create: redis::Script::new(CREATE),
            apply: redis::Script::new(APPLY),
            claim_due: redis::Script::new(CLAIM_DUE),
            define_stock: redis::Script::new(DEFINE_STOCK),
            idem_begin: redis::Script::new(IDEM_BEGIN),
            idem_complete: redis::Script::new(IDEM_COMPLETE),
            idem_abandon: redis::Script::new(IDEM_ABANDON),
            noted: Arc::default(),
            outbox_trim: redis::Script::new(OUTBOX_TRIM),
        }
    }

    /// Whether `member` of the scope list was written by this node within
    /// [`SCOPE_NOTE_REFRESH`].
    fn noted_lately(&self, member: &str) -> bool {
        let noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        noted
            .get(member)
            .is_some_and(|at| at.elapsed() < SCOPE_NOTE_REFRESH)
    }

    fn mark_noted(&self, member: String) {
        let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        noted.insert(member, Instant::now());
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::from_display(e)
}

/// `<ns>:co:{tenant:mall}`: the prefix (and hash tag) of a scope's keys.
/// Braces in the namespace would become the hash tag, so they are replaced.
fn scope_prefix(namespace: &str, scope: &Scope) -> String {
    let namespace = namespace.replace(['{', '}'], "_");
    format!("{namespace}:co:{{{}:{}}}", scope.tenant, scope.mall)
}

/// The keys one order step may touch: order, due index, outbox, and the
/// stock and per-member counters of each SKU.
struct ScopeKeys(String);

impl ScopeKeys {
    fn order(&self, id: &OrderId) -> String {
        format!("{}:order:{id}", self.0)
    }
    fn stock(&self, sku: &ProductId) -> (String, String) {
        (
            format!("{}:stock:{sku}", self.0),
            format!("{}:bought:{sku}", self.0),
        )
    }
    fn due(&self) -> String {
        format!("{}:due", self.0)
    }
    fn outbox(&self) -> String {
        format!("{}:outbox", self.0)
    }
}

impl RedisStore {
    fn keys(&self, scope: &Scope) -> ScopeKeys {
        ScopeKeys(scope_prefix(self.namespace(), scope))
    }

    fn order_key(&self, scope: &Scope, id: &OrderId) -> String {
        self.keys(scope).order(id)
    }

    fn stock_keys(&self, scope: &Scope, sku: &ProductId) -> (String, String) {
        self.keys(scope).stock(sku)
    }

    fn due_key(&self, scope: &Scope) -> String {
        self.keys(scope).due()
    }

    fn outbox_key(&self, scope: &Scope) -> String {
        self.keys(scope).outbox()
    }

    fn scopes_key(&self) -> String {
        format!("{}:co:scopes", self.namespace())
    }

    fn idem_key(&self, key: &IdempotencyRef<'_>) -> String {
        format!(
            "{}:co:{{{}}}:idem:{}:{}",
            self.namespace().replace(['{', '}'], "_"),
            key.tenant,
            key.member,
            key.key
        )
    }

    /// Remembers a scope for the sweeper and the relay (idempotent; once a
    /// minute per scope and node, not on every step).
    async fn note_scope(&self, scope: &Scope) -> Result<(), StoreError> {
        let member = format!("{}\t{}", scope.tenant, scope.mall);
        if self.scripts().noted_lately(&member) {
            return Ok(());
        }
        let mut c = self.connection();
        let _: i64 = redis::cmd("SADD")
            .arg(self.scopes_key())
            .arg(&member)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        self.scripts().mark_noted(member);
        Ok(())
    }

    async fn ensure_group(&self, scope: &Scope, group: &str) -> Result<(), StoreError> {
        let mut c = self.connection();
        let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.outbox_key(scope))
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    /// Creates an order; with `awaiting`, moves it on to awaiting payment
    /// (due then) in the same script.
    async fn create(
        &self,
        scope: &Scope,
        order: &NewOrder,
        awaiting: Option<i64>,
    ) -> Result<Result<StoredOrder, CreateRefusal>, StoreError> {
        check_lines(&order.lines)?;
        self.note_scope(scope).await?;
        let mut invocation = self.scripts().create.prepare_invoke();
        invocation
            .key(self.order_key(scope, &order.id))
            .key(self.due_key(scope))
            .key(self.outbox_key(scope));
        for line in &order.lines {
            let (stock, bought) = self.stock_keys(scope, &line.sku);
            invocation.key(stock).key(bought);
        }
        invocation
            .arg(order.id.as_str())
            .arg(order.member.as_str())
            .arg(awaiting.unwrap_or(order.due_at_ms))
            .arg(&order.body)
            .arg(encode_lines(&order.lines))
            .arg(order.lines.len());
        for line in &order.lines {
            invocation.arg(line.quantity);
        }
        invocation.arg(if awaiting.is_some() { "awaiting" } else { "" });
        let mut c = self.connection();
        let answer: Vec<Value> = invocation.invoke_async(&mut c).await.map_err(err)?;
        let tag = answer.first().and_then(text).unwrap_or_default();
        let line = || {
            answer
                .get(1)
                .and_then(text)
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| order.lines.get(i.wrapping_sub(1)))
                .map(|l| l.sku.clone())
                .ok_or_else(|| StoreError("create script named no line".into()))
        };
        match tag.as_str() {
            "created" => Ok(Ok(StoredOrder {
                id: order.id.clone(),
                member: order.member.clone(),
                status: if awaiting.is_some() {
                    OrderStatus::AwaitingPayment
                } else {
                    OrderStatus::Reserved
                },
                version: if awaiting.is_some() { 3 } else { 2 },
                lines: order.lines.clone(),
                reservation: if order.lines.is_empty() {
                    Reservation::None
                } else {
                    Reservation::Held
                },
                body: order.body.clone(),
            })),
            "exists" => match self.read_order(scope, &order.id).await? {
                Some(existing) => Ok(Err(CreateRefusal::Exists(Box::new(existing)))),
                None => Err(StoreError("order vanished after it existed".into())),
            },
            "unknown_sku" => Ok(Err(CreateRefusal::UnknownSku(line()?))),
            "sold_out" => Ok(Err(CreateRefusal::SoldOut(line()?))),
            "limit" => Ok(Err(CreateRefusal::LimitExceeded(line()?))),
            other => Err(StoreError(format!("unexpected create answer {other:?}"))),
        }
    }

    async fn read_order(
        &self,
        scope: &Scope,
        id: &OrderId,
    ) -> Result<Option<StoredOrder>, StoreError> {
        let mut c = self.connection();
        let row: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.order_key(scope, id))
            .arg(&[
                "status",
                "version",
                "member",
                "lines",
                "reservation",
                "body",
            ])
            .query_async(&mut c)
            .await
            .map_err(err)?;
        let [
            Some(status),
            Some(version),
            Some(member),
            Some(lines),
            Some(reservation),
            Some(body),
        ] = <[Option<String>; 6]>::try_from(row).unwrap_or_default()
        else {
            return Ok(None);
        };
        Ok(Some(StoredOrder {
            id: id.clone(),
            member: MemberId::parse(member).map_err(err)?,
            status: status_from(&status)?,
            version: version.parse().map_err(err)?,
            lines: decode_lines(&lines)?,
            reservation: reservation_from(&reservation)?,
            body,
        }))
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// Decodes stream entries (`[[id, [field, value, …]], …]`); deleted
/// entries (nil fields) are skipped.
fn entries(v: &Value) -> Result<Vec<OutboxEvent>, StoreError> {
    let Value::Array(items) = v else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Array(pair) = item else { continue };
        let (Some(id), Some(Value::Array(fields))) = (pair.first().and_then(text), pair.get(1))
        else {
            continue;
        };
        // Stream ids are `<ms>-<seq>`, the ms being Redis' clock at XADD.
        let at_ms = id
            .split_once('-')
            .and_then(|(ms, _)| ms.parse().ok())
            .unwrap_or_default();
        let mut event = OutboxEvent {
            id,
            kind: String::new(),
            order: String::new(),
            status: String::new(),
            version: 0,
            body: String::new(),
            at_ms,
        };
        for kv in fields.chunks(2) {
            let (Some(k), Some(v)) = (kv.first().and_then(text), kv.get(1).and_then(text)) else {
                continue;
            };
            match k.as_str() {
                "kind" => event.kind = v,
                "order" => event.order = v,
                "status" => event.status = v,
                "version" => event.version = v.parse().map_err(err)?,
                "body" => event.body = v,
                _ => {}
            }
        }
        out.push(event);
    }
    Ok(out)
}

#[async_trait]
impl CheckoutStore for RedisStore {
    async fn define_stock(
        &self,
        scope: &Scope,
        sku: &ProductId,
        initial: u64,
        per_member_limit: u32,
    ) -> Result<bool, StoreError> {
        self.note_scope(scope).await?;
        let mut c = self.connection();
        let created: i64 = self
            .scripts()
            .define_stock
            .key(self.stock_keys(scope, sku).0)
            .arg(initial)
            .arg(per_member_limit)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(created == 1)
    }

    async fn stock(
        &self,
        scope: &Scope,
        sku: &ProductId,
    ) -> Result<Option<StockLevel>, StoreError> {
        let mut c = self.connection();
        let row: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(self.stock_keys(scope, sku).0)
            .arg(&["available", "reserved", "sold", "limit"])
            .query_async(&mut c)
            .await
            .map_err(err)?;
        match row.as_slice() {
            [Some(available), reserved, sold, limit] => Ok(Some(StockLevel {
                available: *available,
                reserved: reserved.unwrap_or(0),
                sold: sold.unwrap_or(0),
                per_member_limit: u32::try_from(limit.unwrap_or(0)).map_err(err)?,
            })),
            _ => Ok(None),
        }
    }

    async fn held_by_member(
        &self,
        scope: &Scope,
        sku: &ProductId,
        member: &MemberId,
    ) -> Result<u64, StoreError> {
        let mut c = self.connection();
        let held: Option<u64> = redis::cmd("HGET")
            .arg(self.stock_keys(scope, sku).1)
            .arg(member.as_str())
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(held.unwrap_or(0))
    }

    async fn create_order(
        &self,
        scope: &Scope,
        order: &NewOrder,
    ) -> Result<Result<StoredOrder, CreateRefusal>, StoreError> {
        self.create(scope, order, None).await
    }

    async fn create_awaiting_payment(
        &self,
        scope: &Scope,
        order: &NewOrder,
        pay_by_ms: i64,
    ) -> Result<Result<StoredOrder, CreateRefusal>, StoreError> {
        self.create(scope, order, Some(pay_by_ms)).await
    }

    async fn order(&self, scope: &Scope, id: &OrderId) -> Result<Option<StoredOrder>, StoreError> {
        self.read_order(scope, id).await
    }

    async fn apply(
        &self,
        scope: &Scope,
        id: &OrderId,
        step: &Step,
    ) -> Result<StepOutcome, StoreError> {
        // A step that moves stock names its keys from the stored lines (a
        // step cannot name other SKUs than the order reserved), so it reads
        // the order first; any other step is one script call, which itself
        // answers `missing` for an unknown order.
        let current = match step.stock {
            StockEffect::None => None,
            StockEffect::Release | StockEffect::Sell => match self.read_order(scope, id).await? {
                Some(current) => Some(current),
                None => return Ok(StepOutcome::Missing),
            },
        };
        let (member, lines) = match &current {
            Some(c) => (c.member.as_str(), c.lines.as_slice()),
            None => ("", &[][..]),
        };
        let mut invocation = self.scripts().apply.prepare_invoke();
        invocation
            .key(self.order_key(scope, id))
            .key(self.due_key(scope))
            .key(self.outbox_key(scope));
        for line in lines {
            let (stock, bought) = self.stock_keys(scope, &line.sku);
            invocation.key(stock).key(bought);
        }
        let (due_mode, due_at) = match step.due {
            Due::Keep => ("keep", 0),
            Due::At(at) => ("set", at),
            Due::Clear => ("clear", 0),
        };
        invocation
            .arg(step.expect_version)
            .arg(step.expect_status.as_str())
            .arg(step.to.as_str())
            .arg(&step.body)
            .arg(match step.stock {
                StockEffect::None => "none",
                StockEffect::Release => "release",
                StockEffect::Sell => "sell",
            })
            .arg(due_mode)
            .arg(due_at)
            .arg(step.payment_id.as_deref().unwrap_or(""))
            .arg(&step.event)
            .arg(id.as_str())
            .arg(member)
            .arg(lines.len());
        for line in lines {
            invocation.arg(line.quantity);
        }
        invocation.arg(self.order_retention_ms());
        let mut c = self.connection();
        let answer: String = invocation.invoke_async(&mut c).await.map_err(err)?;
        match answer.as_str() {
            "missing" => Ok(StepOutcome::Missing),
            "conflict" => Ok(StepOutcome::Conflict),
            "duplicate_payment" => Ok(StepOutcome::DuplicatePayment),
            other => match other.strip_prefix("applied:") {
                Some(v) => Ok(StepOutcome::Applied(v.parse().map_err(err)?)),
                None => Err(StoreError(format!("unexpected apply answer {other:?}"))),
            },
        }
    }

    async fn claim_due(
        &self,
        scope: &Scope,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<OrderId>, StoreError> {
        let mut c = self.connection();
        let ids: Vec<String> = self
            .scripts()
            .claim_due
            .key(self.due_key(scope))
            .arg(now_ms)
            .arg(lease_ms)
            .arg(limit)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        ids.into_iter()
            .map(|id| OrderId::parse(id).map_err(err))
            .collect()
    }

    async fn scopes(&self) -> Result<Vec<Scope>, StoreError> {
        let mut c = self.connection();
        let mut raw: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.scopes_key())
            .query_async(&mut c)
            .await
            .map_err(err)?;
        raw.sort();
        raw.into_iter()
            .map(|s| {
                let (t, m) = s
                    .split_once('\t')
                    .ok_or_else(|| StoreError(format!("bad scope {s:?}")))?;
                Ok(Scope::new(
                    TenantId::parse(t).map_err(err)?,
                    MallId::parse(m).map_err(err)?,
                ))
            })
            .collect()
    }

    async fn idempotency_begin(
        &self,
        key: &IdempotencyRef<'_>,
        fingerprint: &str,
        lease_ms: i64,
    ) -> Result<IdempotencyBegin, StoreError> {
        let mut c = self.connection();
        let answer: Vec<String> = self
            .scripts()
            .idem_begin
            .key(self.idem_key(key))
            .arg(fingerprint)
            .arg(lease_ms.max(1))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        match answer.first().map(String::as_str) {
            Some("started") => Ok(IdempotencyBegin::Started),
            Some("running") => Ok(IdempotencyBegin::InProgress),
            Some("reused") => Ok(IdempotencyBegin::Reused),
            Some("done") => Ok(IdempotencyBegin::Completed(
                answer.get(1).cloned().unwrap_or_default(),
            )),
            other => Err(StoreError(format!(
                "unexpected idempotency answer {other:?}"
            ))),
        }
    }

    async fn idempotency_complete(
        &self,
        key: &IdempotencyRef<'_>,
        fingerprint: &str,
        answer: &str,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.connection();
        let _: i64 = self
            .scripts()
            .idem_complete
            .key(self.idem_key(key))
            .arg(fingerprint)
            .arg(answer)
            .arg(ttl_ms.max(1))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn idempotency_abandon(
        &self,
        key: &IdempotencyRef<'_>,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        let mut c = self.connection();
        let _: i64 = self
            .scripts()
            .idem_abandon
            .key(self.idem_key(key))
            .arg(fingerprint)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn outbox_read(
        &self,
        scope: &Scope,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        self.ensure_group(scope, group).await?;
        let mut c = self.connection();
        let answer: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1))
            .arg("STREAMS")
            .arg(self.outbox_key(scope))
            .arg(">")
            .query_async(&mut c)
            .await
            .map_err(err)?;
        // [[stream, entries]] or nil.
        match answer {
            Value::Array(streams) => match streams.first() {
                Some(Value::Array(stream)) => stream.get(1).map(entries).unwrap_or(Ok(Vec::new())),
                _ => Ok(Vec::new()),
            },
            Value::Map(streams) => match streams.first() {
                Some((_, v)) => entries(v),
                None => Ok(Vec::new()),
            },
            _ => Ok(Vec::new()),
        }
    }

    async fn outbox_ack(
        &self,
        scope: &Scope,
        group: &str,
        ids: &[String],
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.connection();
        let _: i64 = redis::cmd("XACK")
            .arg(self.outbox_key(scope))
            .arg(group)
            .arg(ids)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn outbox_claim(
        &self,
        scope: &Scope,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        self.ensure_group(scope, group).await?;
        let mut c = self.connection();
        let answer: Value = redis::cmd("XAUTOCLAIM")
            .arg(self.outbox_key(scope))
            .arg(group)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut c)
            .await
            .map_err(err)?;
        // [next cursor, entries, deleted ids]
        match answer {
            Value::Array(parts) => parts.get(1).map(entries).unwrap_or(Ok(Vec::new())),
            _ => Ok(Vec::new()),
        }
    }

    async fn outbox_events(&self, scope: &Scope) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut c = self.connection();
        let answer: Value = redis::cmd("XRANGE")
            .arg(self.outbox_key(scope))
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .map_err(err)?;
        entries(&answer)
    }

    async fn outbox_trim(&self, scope: &Scope, before_ms: i64) -> Result<u64, StoreError> {
        let mut c = self.connection();
        let removed: u64 = self
            .scripts()
            .outbox_trim
            .key(self.outbox_key(scope))
            .arg(before_ms.max(0))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key one script touches must hash to one cluster slot: the
    /// scope's tag is the only braced part of each key.
    #[test]
    fn every_key_of_a_scope_carries_the_scope_tag() {
        let tag = |key: &str| {
            let open = key.find('{').unwrap_or(0);
            let close = key[open..].find('}').map(|c| c + open).unwrap_or(0);
            key[open..=close].to_owned()
        };
        let scope = Scope::new(
            TenantId::parse("demo").unwrap(),
            MallId::parse("mall-1").unwrap(),
        );
        let keys = ScopeKeys(scope_prefix("bff-test:{ns}", &scope));
        let sku = ProductId::parse("sku-flash-1").unwrap();
        let (stock, bought) = keys.stock(&sku);
        for key in [
            keys.order(&OrderId::parse("mall-1.0123456789abcdef").unwrap()),
            stock,
            bought,
            keys.due(),
            keys.outbox(),
        ] {
            assert_eq!(tag(&key), "{demo:mall-1}", "{key}");
        }
    }
}
