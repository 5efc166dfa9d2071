//! The WebAssembly host: compiles rule components once, pre-links them, and runs
//! each evaluation in a fresh store from the pooling allocator, under a fuel
//! budget, a wall-clock deadline (epoch interruption) and a memory cap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    ResourceLimiter, Store, Trap,
};

use super::model::{FailureReason, Limits};

wasmtime::component::bindgen!({
    path: "../components/wit",
    world: "rule",
});

pub use mall::promotion::log::Level as LogLevel;
pub use mall::promotion::types as wit;

/// The rule's answer as read from its memory. Every string is charged to the
/// evaluation's output budget *before* it is copied out, so a rule cannot make
/// the host allocate more than its output cap by pointing many records at one
/// large string.
mod output {
    use std::cell::Cell;

    use wasmtime::ValRaw;
    use wasmtime::component::__internal::{
        CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext,
    };
    use wasmtime::component::{ComponentType, Lift};

    use super::wit;

    thread_local! {
        /// Bytes the output may still take; `None` once exceeded.
        static BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Why lifting stopped.
    pub const OVER_BUDGET: &str = "rule output exceeds its size limit";

    /// Runs `f` with an output budget; reports whether it was exceeded.
    pub fn with_budget<R>(bytes: usize, f: impl FnOnce() -> R) -> (R, bool) {
        BUDGET.with(|b| b.set(Some(bytes)));
        let result = f();
        let exceeded = BUDGET.with(|b| b.replace(None)).is_none();
        (result, exceeded)
    }

    fn charge(bytes: usize) -> wasmtime::Result<()> {
        BUDGET.with(|b| match b.get() {
            Some(left) if left >= bytes => {
                b.set(Some(left - bytes));
                Ok(())
            }
            _ => {
                b.set(None);
                wasmtime::bail!(OVER_BUDGET)
            }
        })
    }

    /// A string of the rule's output.
    pub struct OutStr(pub String);

    // SAFETY: the same canonical-ABI shape as `str`, to which every item
    // defers.
    unsafe impl ComponentType for OutStr {
        type Lower = <str as ComponentType>::Lower;
        const ABI: CanonicalAbiInfo = <str as ComponentType>::ABI;

        fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
            <str as ComponentType>::typecheck(ty, types)
        }
    }

    // SAFETY: defers to `String`'s lifting after checking the length.
    unsafe impl Lift for OutStr {
        fn linear_lift_from_flat(
            cx: &mut LiftContext<'_>,
            ty: InterfaceType,
            src: &Self::Lower,
        ) -> wasmtime::Result<Self> {
            let raw: &[ValRaw; 2] = src;
            charge(raw[1].get_u32() as usize + 16)?;
            Ok(OutStr(<String as Lift>::linear_lift_from_flat(
                cx, ty, src,
            )?))
        }

        fn linear_lift_from_memory(
            cx: &mut LiftContext<'_>,
            ty: InterfaceType,
            bytes: &[u8],
        ) -> wasmtime::Result<Self> {
            let len = bytes
                .get(4..8)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            charge(len as usize + 16)?;
            Ok(OutStr(<String as Lift>::linear_lift_from_memory(
                cx, ty, bytes,
            )?))
        }
    }

    #[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
    #[component(record)]
    pub struct LineDiscount {
        #[component(name = "line-id")]
        line_id: OutStr,
        amount: i64,
        label: OutStr,
    }

    #[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
    #[component(record)]
    pub struct OrderDiscount {
        amount: i64,
        label: OutStr,
        #[component(name = "coupon-id")]
        coupon_id: Option<OutStr>,
    }

    #[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
    #[component(record)]
    pub struct PointsOffset {
        points: i64,
        amount: i64,
        label: OutStr,
    }

    #[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
    #[component(record)]
    pub struct Hint {
        code: OutStr,
        message: OutStr,
        shortfall: Option<i64>,
    }

    #[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
    #[component(record)]
    pub struct Outcome {
        #[component(name = "line-discounts")]
        line_discounts: Vec<LineDiscount>,
        #[component(name = "order-discounts")]
        order_discounts: Vec<OrderDiscount>,
        points: Option<PointsOffset>,
        hints: Vec<Hint>,
    }

    #[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
    #[component(variant)]
    pub enum RuleError {
        #[component(name = "invalid-config")]
        InvalidConfig(OutStr),
        #[component(name = "failed")]
        Failed(OutStr),
    }

    /// `evaluate` as the host calls it.
    pub type Evaluate<'a> =
        wasmtime::component::TypedFunc<(&'a str, &'a wit::Cart), (Result<Outcome, RuleError>,)>;

    impl From<Outcome> for wit::Outcome {
        fn from(o: Outcome) -> Self {
            wit::Outcome {
                line_discounts: o
                    .line_discounts
                    .into_iter()
                    .map(|d| wit::LineDiscount {
                        line_id: d.line_id.0,
                        amount: d.amount,
                        label: d.label.0,
                    })
                    .collect(),
                order_discounts: o
                    .order_discounts
                    .into_iter()
                    .map(|d| wit::OrderDiscount {
                        amount: d.amount,
                        label: d.label.0,
                        coupon_id: d.coupon_id.map(|c| c.0),
                    })
                    .collect(),
                points: o.points.map(|p| wit::PointsOffset {
                    points: p.points,
                    amount: p.amount,
                    label: p.label.0,
                }),
                hints: o
                    .hints
                    .into_iter()
                    .map(|h| wit::Hint {
                        code: h.code.0,
                        message: h.message.0,
                        shortfall: h.shortfall,
                    })
                    .collect(),
            }
        }
    }

    impl From<RuleError> for wit::RuleError {
        fn from(e: RuleError) -> Self {
            match e {
                RuleError::InvalidConfig(m) => wit::RuleError::InvalidConfig(m.0),
                RuleError::Failed(m) => wit::RuleError::Failed(m.0),
            }
        }
    }
}

/// Largest component or core module accepted at publish.
pub const MAX_COMPONENT_BYTES: usize = 4 * 1024 * 1024;
/// Longest log message kept; longer ones are truncated.
const LOG_MESSAGE_BYTES: usize = 512;
/// Largest memory a deployment may ask for.
pub const MAX_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
/// How often the wall-clock backstop ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// One log entry a rule wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Severity.
    pub level: LogLevel,
    /// The message, truncated to the host's bound.
    pub message: String,
}

/// Per-evaluation state inside a store.
struct Sandbox {
    memory_cap: usize,
    memory_cap_hit: bool,
    logs: Vec<LogEntry>,
    max_logs: usize,
    logs_dropped: u32,
}

impl Sandbox {
    fn new(limits: &Limits) -> Self {
        Sandbox {
            memory_cap: limits.memory_bytes.min(MAX_MEMORY_BYTES) as usize,
            memory_cap_hit: false,
            logs: Vec::new(),
            max_logs: limits.max_log_entries as usize,
            logs_dropped: 0,
        }
    }
}

impl ResourceLimiter for Sandbox {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_cap_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl mall::promotion::log::Host for Sandbox {
    fn write(&mut self, level: LogLevel, mut message: String) {
        if self.logs.len() >= self.max_logs {
            self.logs_dropped = self.logs_dropped.saturating_add(1);
            return;
        }
        if message.len() > LOG_MESSAGE_BYTES {
            let mut end = LOG_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        self.logs.push(LogEntry { level, message });
    }
}

impl mall::promotion::types::Host for Sandbox {}

/// Why a binary was refused.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Not WebAssembly, or a module that cannot be turned into a component.
    #[error("not a valid WebAssembly component or core module: {0}")]
    Malformed(String),
    /// Valid WebAssembly, but not a `mall:promotion/rule@1.x` component.
    #[error("the component does not implement the world mall:promotion/rule@1.0.0: {0}")]
    WrongWorld(String),
    /// Larger than the host accepts.
    #[error("the component is {0} bytes; the limit is {MAX_COMPONENT_BYTES}")]
    TooLarge(usize),
}

impl CompileError {
    /// Stable code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            CompileError::Malformed(_) => crate::error::code::INVALID_COMPONENT,
            CompileError::WrongWorld(_) => crate::error::code::WRONG_WORLD,
            CompileError::TooLarge(_) => crate::error::code::COMPONENT_TOO_LARGE,
        }
    }
}

/// A rule compiled and linked, ready to instantiate many times.
pub struct CompiledRule {
    /// Hex sha256 of the bytes as published (content address).
    pub sha256: String,
    /// Size of the published bytes.
    pub size: usize,
    pre: RulePre<Sandbox>,
    evaluate: ComponentExportIndex,
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule")
            .field("sha256", &self.sha256)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The result of running one rule once.
#[derive(Debug)]
pub struct Evaluation {
    /// The rule's answer, or why there is none.
    pub result: Result<Result<wit::Outcome, wit::RuleError>, FailureReason>,
    /// Fuel the evaluation consumed (instantiation included).
    pub fuel_used: u64,
    /// Wall-clock time of instantiate + evaluate.
    pub elapsed: Duration,
    /// Log entries, bounded.
    pub logs: Vec<LogEntry>,
    /// Log entries dropped over the bound.
    pub logs_dropped: u32,
}

/// The process-wide WebAssembly host: one engine, one linker.
pub struct RuleHost {
    engine: Engine,
    linker: Linker<Sandbox>,
    stop_ticker: Arc<AtomicBool>,
    /// Compiled rules by sha256, the most recently used kept (active rules
    /// also hold theirs, so eviction only costs a recompile).
    compiled: moka::sync::Cache<String, Arc<CompiledRule>>,
}

/// Compiled rules kept per process.
const COMPILED_KEPT: u64 = 256;

static SHARED: OnceLock<Arc<RuleHost>> = OnceLock::new();

impl std::fmt::Debug for RuleHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleHost").finish_non_exhaustive()
    }
}

impl Drop for RuleHost {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Sizing of the instance pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolSize {
    /// Concurrent rule instances.
    pub instances: u32,
}

impl RuleHost {
    /// The process's host, built on first use with `pool` (later calls
    /// share it: one engine, one linker, one cache of compiled rules per
    /// process).
    pub fn shared(pool: PoolSize) -> anyhow::Result<Arc<RuleHost>> {
        if let Some(host) = SHARED.get() {
            return Ok(host.clone());
        }
        let host = Arc::new(RuleHost::new(pool)?);
        Ok(SHARED.get_or_init(|| host).clone())
    }

    /// Like [`RuleHost::compile`], reusing an earlier compilation of the
    /// same bytes.
    pub fn compile_cached(&self, bytes: &[u8]) -> Result<Arc<CompiledRule>, CompileError> {
        let sha = sha256_hex(bytes);
        if let Some(c) = self.compiled.get(&sha) {
            return Ok(c);
        }
        let compiled = Arc::new(self.compile(bytes)?);
        self.compiled.insert(sha, compiled.clone());
        Ok(compiled)
    }

    /// Builds the engine (pooling allocator, fuel, epochs) and the linker, and
    /// starts the epoch ticker.
    pub fn new(pool: PoolSize) -> anyhow::Result<Self> {
        let instances = pool.instances.max(1);
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_component_instances(instances)
            .total_core_instances(instances * 4)
            .total_memories(instances)
            .total_tables(instances * 2)
            .max_core_instances_per_component(8)
            .max_memories_per_component(1)
            .max_tables_per_component(2)
            .max_memory_size(MAX_MEMORY_BYTES as usize)
            .table_elements(20_000)
            // Between evaluations, reset only the pages a rule dirtied
            // (PAGEMAP_SCAN, Linux 6.7+) and keep them mapped: no page
            // faults on the next instantiation of the slot.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 * 1024);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            // Rules are synchronous: no concurrent-execution state per store.
            .concurrency_support(false)
            .memory_init_cow(true)
            // A 4 GiB reservation with a guard region: loads and stores of
            // 32-bit memories need no bounds checks. Virtual address space
            // only; what is resident is what rules touch.
            .memory_reservation(1 << 32)
            .memory_guard_size(32 << 20)
            .memory_reservation_for_growth(0)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        mall::promotion::log::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |s| s)?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = stop_ticker.clone();
        thread::Builder::new()
            .name("rule-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        Ok(Self {
            engine,
            linker,
            stop_ticker,
            compiled: moka::sync::Cache::new(COMPILED_KEPT),
        })
    }

    /// Compiles a component, or a core module carrying its component type
    /// (as `cargo build --target wasm32-unknown-unknown` produces with
    /// wit-bindgen), and checks that it targets the rule world.
    pub fn compile(&self, bytes: &[u8]) -> Result<CompiledRule, CompileError> {
        if bytes.len() > MAX_COMPONENT_BYTES {
            return Err(CompileError::TooLarge(bytes.len()));
        }
        let sha256 = sha256_hex(bytes);
        let component_bytes = if wasmparser::Parser::is_component(bytes) {
            std::borrow::Cow::Borrowed(bytes)
        } else if wasmparser::Parser::is_core_wasm(bytes) {
            wasmparser::Validator::new()
                .validate_all(bytes)
                .map_err(|e| CompileError::Malformed(first_line(&e.to_string())))?;
            // The encoder reads custom sections written by the guest's
            // toolchain; a hostile one must not take the node down.
            let encoded = std::panic::catch_unwind(|| {
                wit_component::ComponentEncoder::default()
                    .module(bytes)
                    .and_then(|e| e.validate(true).encode())
            })
            .map_err(|_| {
                CompileError::Malformed("the module's component-type section is corrupt".into())
            })?
            .map_err(|e| CompileError::WrongWorld(first_line(&format!("{e:#}"))))?;
            std::borrow::Cow::Owned(encoded)
        } else {
            return Err(CompileError::Malformed(
                "the bytes do not start with the WebAssembly magic number".into(),
            ));
        };
        let component = Component::new(&self.engine, &component_bytes)
            .map_err(|e| CompileError::Malformed(first_line(&format!("{e:#}"))))?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| CompileError::WrongWorld(first_line(&format!("{e:#}"))))?;
        let pre = RulePre::new(instance_pre)
            .map_err(|e| CompileError::WrongWorld(first_line(&format!("{e:#}"))))?;
        let evaluate = component
            .get_export_index(None, "evaluate")
            .ok_or_else(|| CompileError::WrongWorld("no `evaluate` export".into()))?;
        // The output types the host reads lazily must match the component's;
        // checked once here so evaluations can skip the check.
        let mut store = Store::new(&self.engine, Sandbox::new(&Limits::default()));
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store
            .set_fuel(Limits::default().fuel)
            .map_err(|e| CompileError::Malformed(first_line(&format!("{e:#}"))))?;
        store.set_epoch_deadline(1_000);
        let instance = pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| CompileError::WrongWorld(first_line(&format!("{e:#}"))))?;
        instance
            .get_typed_func::<(&str, &wit::Cart), (Result<output::Outcome, output::RuleError>,)>(
                &mut store, &evaluate,
            )
            .map_err(|e| CompileError::WrongWorld(first_line(&format!("{e:#}"))))?;
        Ok(CompiledRule {
            sha256,
            size: bytes.len(),
            pre,
            evaluate,
        })
    }

    /// Runs `check-config` in a sandbox.
    pub fn check_config(
        &self,
        rule: &CompiledRule,
        limits: &Limits,
        config: &str,
    ) -> Result<Result<(), wit::RuleError>, FailureReason> {
        let (mut store, _) = self.store(limits)?;
        let instance = rule
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, e))?;
        instance
            .call_check_config(&mut store, config)
            .map_err(|e| classify(&store, e))
    }

    /// Instantiates the rule in a fresh store and evaluates one batch.
    pub fn evaluate(
        &self,
        rule: &CompiledRule,
        limits: &Limits,
        config: &str,
        cart: &wit::Cart,
    ) -> Evaluation {
        let started = Instant::now();
        let (mut store, fuel) = match self.store(limits) {
            Ok(s) => s,
            Err(reason) => {
                return Evaluation {
                    result: Err(reason),
                    fuel_used: 0,
                    elapsed: started.elapsed(),
                    logs: Vec::new(),
                    logs_dropped: 0,
                };
            }
        };
        let result = if input_size(cart) + config.len() > limits.max_input_bytes as usize {
            Err(FailureReason::InputTooLarge)
        } else {
            match rule.pre.instance_pre().instantiate(&mut store) {
                Ok(instance) => {
                    let func = instance
                        .get_func(&mut store, rule.evaluate)
                        .expect("checked at compile time");
                    // SAFETY: the signature was checked with `get_typed_func`
                    // when the rule was compiled.
                    let typed: output::Evaluate<'_> =
                        unsafe { wasmtime::component::TypedFunc::new_unchecked(func) };
                    let (called, over) =
                        output::with_budget(limits.max_output_bytes as usize, || {
                            typed.call(&mut store, (config, cart))
                        });
                    match called {
                        _ if over => Err(FailureReason::OutputTooLarge),
                        Ok((Ok(outcome),)) => {
                            let outcome = wit::Outcome::from(outcome);
                            if output_size(&outcome) > limits.max_output_bytes as usize {
                                Err(FailureReason::OutputTooLarge)
                            } else {
                                Ok(Ok(outcome))
                            }
                        }
                        Ok((Err(error),)) => Ok(Err(error.into())),
                        Err(e) => Err(classify(&store, e)),
                    }
                }
                Err(e) => Err(classify(&store, e)),
            }
        };
        let fuel_used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let sandbox = store.into_data();
        Evaluation {
            result,
            fuel_used,
            elapsed: started.elapsed(),
            logs: sandbox.logs,
            logs_dropped: sandbox.logs_dropped,
        }
    }

    fn store(&self, limits: &Limits) -> Result<(Store<Sandbox>, u64), FailureReason> {
        let mut store = Store::new(&self.engine, Sandbox::new(limits));
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store
            .set_fuel(limits.fuel)
            .map_err(|_| FailureReason::Instantiation)?;
        let ticks = limits
            .timeout_ms
            .div_ceil(EPOCH_TICK.as_millis() as u64)
            .max(1)
            + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        Ok((store, limits.fuel))
    }
}

/// Names what stopped an evaluation.
fn classify(store: &Store<Sandbox>, error: wasmtime::Error) -> FailureReason {
    if store.data().memory_cap_hit {
        return FailureReason::OutOfMemory;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => FailureReason::OutOfFuel,
        Some(Trap::Interrupt) => FailureReason::DeadlineExceeded,
        Some(_) => FailureReason::Trap,
        None => {
            let text = format!("{error:#}");
            if text.contains("pool") || text.contains("concurrency limit") {
                FailureReason::Instantiation
            } else {
                FailureReason::Trap
            }
        }
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(300).collect()
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn strings(items: &[String]) -> usize {
    items.iter().map(|s| s.len() + 8).sum()
}

/// A close upper bound of the canonical-ABI size of the input.
fn input_size(cart: &wit::Cart) -> usize {
    let member = cart
        .member
        .as_ref()
        .map_or(0, |m| m.id.len() + m.level.len() + strings(&m.tags) + 32);
    let lines: usize = cart
        .lines
        .iter()
        .map(|l| {
            l.id.len() + l.sku.len() + l.store.len() + l.category.len() + strings(&l.tags) + 96
        })
        .sum();
    let coupons: usize = cart
        .held_coupons
        .iter()
        .map(|c| c.id.len() + c.title.len() + 48)
        .sum();
    64 + cart.tenant.len()
        + cart.mall.len()
        + member
        + lines
        + coupons
        + strings(&cart.chosen_coupons)
}

/// A close upper bound of the canonical-ABI size of an outcome.
fn output_size(outcome: &wit::Outcome) -> usize {
    let lines: usize = outcome
        .line_discounts
        .iter()
        .map(|d| d.line_id.len() + d.label.len() + 24)
        .sum();
    let orders: usize = outcome
        .order_discounts
        .iter()
        .map(|d| d.label.len() + d.coupon_id.as_ref().map_or(0, String::len) + 32)
        .sum();
    let points = outcome.points.as_ref().map_or(0, |p| p.label.len() + 24);
    let hints: usize = outcome
        .hints
        .iter()
        .map(|h| h.code.len() + h.message.len() + 32)
        .sum();
    32 + lines + orders + points + hints
}
