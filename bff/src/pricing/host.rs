//! The WebAssembly host: compiles rule components once, pre-links them, and runs
//! each evaluation in a fresh store from the pooling allocator, under a fuel
//! budget, a time limit in the rule's own CPU time (checked on every epoch
//! tick) and a memory cap. Everything the host copies out of a guest is
//! bounded before it is copied.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    ResourceLimiter, Store, StoreContextMut, Trap, UpdateDeadline,
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

    /// Longest text kept of a rule's error message or log entry; the rest
    /// is never copied out of the guest.
    pub const TEXT_BYTES: usize = 512;

    /// A string of the guest of which only the first [`TEXT_BYTES`] bytes
    /// are copied (whatever its length), cut at a character boundary.
    pub struct BoundedText {
        /// The kept prefix.
        pub text: String,
        /// Whether the guest's string was longer.
        pub truncated: bool,
    }

    // SAFETY: the same canonical-ABI shape as `str`.
    unsafe impl ComponentType for BoundedText {
        type Lower = <str as ComponentType>::Lower;
        const ABI: CanonicalAbiInfo = <str as ComponentType>::ABI;

        fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
            <str as ComponentType>::typecheck(ty, types)
        }
    }

    impl BoundedText {
        fn read(cx: &LiftContext<'_>, ptr: u32, len: u32) -> wasmtime::Result<Self> {
            let memory = cx.memory();
            let (ptr, len) = (ptr as usize, len as usize);
            if ptr.checked_add(len).is_none_or(|end| end > memory.len()) {
                wasmtime::bail!("string pointer or length out of bounds");
            }
            let take = len.min(TEXT_BYTES);
            let bytes = &memory[ptr..ptr + take];
            let text = match std::str::from_utf8(bytes) {
                Ok(t) => t.to_owned(),
                // Cut inside a character by the bound: keep what precedes it.
                Err(e) if e.error_len().is_none() => {
                    String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
                }
                Err(_) => String::from_utf8_lossy(bytes).into_owned(),
            };
            Ok(BoundedText {
                text,
                truncated: len > take,
            })
        }

        /// The text with a mark when it was cut.
        pub fn into_string(self) -> String {
            if self.truncated {
                format!("{}…", self.text)
            } else {
                self.text
            }
        }
    }

    // SAFETY: reads at most `TEXT_BYTES` bytes of the guest's memory, after
    // checking the whole string lies inside it (as the canonical ABI does).
    unsafe impl Lift for BoundedText {
        fn linear_lift_from_flat(
            cx: &mut LiftContext<'_>,
            _ty: InterfaceType,
            src: &Self::Lower,
        ) -> wasmtime::Result<Self> {
            let raw: &[ValRaw; 2] = src;
            BoundedText::read(cx, raw[0].get_u32(), raw[1].get_u32())
        }

        fn linear_lift_from_memory(
            cx: &mut LiftContext<'_>,
            _ty: InterfaceType,
            bytes: &[u8],
        ) -> wasmtime::Result<Self> {
            let word = |at: usize| {
                bytes
                    .get(at..at + 4)
                    .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            };
            BoundedText::read(cx, word(0), word(4))
        }
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

    /// A rule's error; its message is bounded to [`TEXT_BYTES`] whatever
    /// the rule returns.
    #[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
    #[component(variant)]
    pub enum RuleError {
        #[component(name = "invalid-config")]
        InvalidConfig(BoundedText),
        #[component(name = "failed")]
        Failed(BoundedText),
    }

    /// `evaluate` as the host calls it.
    pub type Evaluate<'a> =
        wasmtime::component::TypedFunc<(&'a str, &'a wit::Cart), (Result<Outcome, RuleError>,)>;

    /// `check-config` as the host calls it.
    pub type CheckConfig<'a> = wasmtime::component::TypedFunc<(&'a str,), (Result<(), RuleError>,)>;

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
                RuleError::InvalidConfig(m) => wit::RuleError::InvalidConfig(m.into_string()),
                RuleError::Failed(m) => wit::RuleError::Failed(m.into_string()),
            }
        }
    }
}

/// Largest component or core module accepted at publish.
pub const MAX_COMPONENT_BYTES: usize = 4 * 1024 * 1024;
/// Largest memory a deployment may ask for.
pub const MAX_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
/// How often the epoch advances.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Epochs between two checks of an evaluation's time limit: every tick, so
/// a rule stops within a tick of its limit, even at the smallest limit of
/// 1 ms (the check costs one read of the thread's CPU clock).
const CHECK_EVERY_TICKS: u64 = 1;
/// Fuel one call of the `log` import costs (the host's work is not
/// metered by instructions).
const LOG_CALL_FUEL: u64 = 200;

/// What an upload may declare, checked while parsing, before anything is
/// compiled: compile time and memory grow with these, not with the size
/// of the binary alone. Set so that the costliest module they accept
/// compiles in about a second on one thread (figures in the benchmark
/// doc), while the example rules use a tenth of each or less.
pub mod costs {
    /// Functions defined in all the modules of a component together.
    pub const MAX_FUNCTIONS: u64 = 5_000;
    /// Bytes of one function's body.
    pub const MAX_FUNCTION_BYTES: u32 = 64 * 1024;
    /// Locals of one function.
    pub const MAX_LOCALS: u64 = 1_000;
    /// Elements a table may start with.
    pub const MAX_TABLE_ELEMENTS: u64 = 20_000;
    /// Tables declared in all modules together.
    pub const MAX_TABLES: u64 = 16;
    /// Memories declared in all modules together.
    pub const MAX_MEMORIES: u64 = 8;
    /// Entries of any other section (types, imports, exports, globals,
    /// element and data segments).
    pub const MAX_ENTRIES: u64 = 20_000;
    /// Core modules and components nested in a component.
    pub const MAX_NESTED: u64 = 64;
    /// Loops nested in one another.
    pub const MAX_LOOP_DEPTH: u64 = 32;
    /// What all function bodies together may cost to compile, in units of
    /// about 2 µs of one thread (dev build; about 4× less in release): an
    /// instruction costs [`INSTRUCTION_COST`] (each target of a `br_table`
    /// too), a call [`CALL_COST`], and each access to a local
    /// [`LOOP_LOCAL_COST`] per loop around it (the compiler gives every
    /// loop a value for each local used inside it, so this is what grows
    /// faster than the code). The example rules cost 130,000 to 170,000.
    pub const MAX_COMPILE_COST: u64 = 500_000;
    /// Compile cost of an instruction.
    pub const INSTRUCTION_COST: u64 = 1;
    /// Compile cost of a call (on top of its instruction): every register
    /// is saved around it.
    pub const CALL_COST: u64 = 19;
    /// Compile cost of an access to a local, per loop around it.
    pub const LOOP_LOCAL_COST: u64 = 13;
}

/// What an upload declares, as counted by [`check_costs`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Costs {
    /// Functions defined.
    pub functions: u64,
    /// Instructions (and `br_table` targets).
    pub operators: u64,
    /// The largest function body, in bytes.
    pub max_function_bytes: u64,
    /// The most locals of one function.
    pub max_locals: u64,
    /// The deepest nesting of loops.
    pub max_loop_depth: u64,
    /// Accesses to locals weighted by the loops around them.
    pub loop_local_weight: u64,
    /// Calls.
    pub calls: u64,
}

impl Costs {
    /// What compiling the bodies costs, in the units of
    /// [`costs::MAX_COMPILE_COST`].
    pub fn compile_cost(&self) -> u64 {
        self.operators * costs::INSTRUCTION_COST
            + self.calls * costs::CALL_COST
            + self.loop_local_weight * costs::LOOP_LOCAL_COST
    }
}

/// One log entry a rule wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Severity.
    pub level: LogLevel,
    /// The message, truncated to the host's bound.
    pub message: String,
}

/// The time limit of one evaluation: the rule's own CPU time, with a
/// wall-clock backstop for a node that cannot give it the CPU.
#[derive(Debug, Clone, Copy)]
struct Clock {
    timeout: Duration,
    backstop: Duration,
    wall_start: Instant,
    cpu_start: Option<Duration>,
}

/// Why the clock stopped an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// The rule used its CPU time.
    Rule,
    /// The node did not run the rule for far longer than its limit.
    Host,
}

impl Clock {
    fn start(timeout_ms: u64) -> Self {
        let timeout = Duration::from_millis(timeout_ms.max(1));
        Clock {
            timeout,
            backstop: timeout * 4 + Duration::from_millis(50),
            wall_start: Instant::now(),
            cpu_start: thread_cpu_time(),
        }
    }

    fn check(&self) -> Option<Stopped> {
        let wall = self.wall_start.elapsed();
        let cpu = match (self.cpu_start, thread_cpu_time()) {
            (Some(start), Some(now)) => now.saturating_sub(start),
            _ => wall,
        };
        self.verdict(cpu, wall)
    }

    /// Whether a rule that has run for `cpu` (its own CPU time) over `wall`
    /// must stop.
    fn verdict(&self, cpu: Duration, wall: Duration) -> Option<Stopped> {
        if cpu >= self.timeout {
            Some(Stopped::Rule)
        } else if wall >= self.backstop {
            Some(Stopped::Host)
        } else {
            None
        }
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a
        // constant the platform defines.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        if rc == 0 {
            return Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
        }
        None
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Per-evaluation state inside a store.
struct Sandbox {
    memory_cap: usize,
    memory_cap_hit: bool,
    logs: Vec<LogEntry>,
    max_logs: usize,
    logs_dropped: u32,
    clock: Clock,
    stopped: Option<Stopped>,
}

impl Sandbox {
    fn new(limits: &Limits) -> Self {
        Sandbox {
            memory_cap: limits.memory_bytes.min(MAX_MEMORY_BYTES) as usize,
            memory_cap_hit: false,
            logs: Vec::new(),
            max_logs: limits.max_log_entries as usize,
            logs_dropped: 0,
            clock: Clock::start(limits.timeout_ms),
            stopped: None,
        }
    }

    fn log(&mut self, level: LogLevel, message: output::BoundedText) {
        if self.logs.len() >= self.max_logs {
            self.logs_dropped = self.logs_dropped.saturating_add(1);
            return;
        }
        // Escaped here: an entry may reach the node's own log lines.
        self.logs.push(LogEntry {
            level,
            message: sanitize(&message.into_string(), output::TEXT_BYTES),
        });
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
        Ok(desired <= costs::MAX_TABLE_ELEMENTS as usize)
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
    /// Declares more than the host compiles (refused before compiling).
    #[error("the component is too costly to compile: {0}")]
    TooComplex(String),
    /// Traps while it is instantiated, so it can never run.
    #[error("the component traps when it is instantiated ({0})")]
    StartTrapped(&'static str),
    /// The node had no room to test the component; retry.
    #[error("the rule engine is busy; retry shortly")]
    Busy,
}

impl CompileError {
    /// Stable code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            CompileError::Malformed(_) => crate::error::code::INVALID_COMPONENT,
            CompileError::WrongWorld(_) => crate::error::code::WRONG_WORLD,
            CompileError::TooLarge(_) => crate::error::code::COMPONENT_TOO_LARGE,
            CompileError::TooComplex(_) => crate::error::code::COMPONENT_TOO_COMPLEX,
            CompileError::StartTrapped(_) => crate::error::code::RULE_START_TRAPPED,
            CompileError::Busy => crate::error::code::ENGINE_BUSY,
        }
    }
}

/// Refuses, while parsing and before anything is compiled, a binary that
/// declares more than [`costs`] allows; answers what it declares. Reads
/// every instruction once (milliseconds per megabyte).
pub fn check_costs(bytes: &[u8]) -> Result<Costs, CompileError> {
    use wasmparser::{Parser, Payload};
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(CompileError::TooLarge(bytes.len()));
    }
    fn too<T>(what: String) -> Result<T, CompileError> {
        Err(CompileError::TooComplex(what))
    }
    let malformed =
        |e: wasmparser::BinaryReaderError| CompileError::Malformed(first_line(&e.to_string()));
    let entries = |what: &str, n: u32| {
        if u64::from(n) > costs::MAX_ENTRIES {
            too(format!("{n} {what}; the limit is {}", costs::MAX_ENTRIES))
        } else {
            Ok(())
        }
    };
    let (mut functions, mut tables, mut memories, mut nested) = (0u64, 0u64, 0u64, 0u64);
    let mut code = Costs::default();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(malformed)? {
            Payload::FunctionSection(r) => {
                functions += u64::from(r.count());
                if functions > costs::MAX_FUNCTIONS {
                    return too(format!("more than {} functions", costs::MAX_FUNCTIONS));
                }
            }
            Payload::CodeSectionStart { count, .. } if u64::from(count) > costs::MAX_FUNCTIONS => {
                return too(format!("{count} function bodies"));
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len();
                code.max_function_bytes = code.max_function_bytes.max(size as u64);
                if size > costs::MAX_FUNCTION_BYTES as usize {
                    return too(format!(
                        "a function body of {size} bytes; the limit is {}",
                        costs::MAX_FUNCTION_BYTES
                    ));
                }
                let mut locals = 0u64;
                for local in body.get_locals_reader().map_err(malformed)? {
                    let (count, _) = local.map_err(malformed)?;
                    locals += u64::from(count);
                    if locals > costs::MAX_LOCALS {
                        return too(format!(
                            "a function with more than {} locals",
                            costs::MAX_LOCALS
                        ));
                    }
                }
                code.max_locals = code.max_locals.max(locals);
                code.scan(&body).map_err(|e| match e {
                    CodeCost::Malformed(e) => malformed(e),
                    CodeCost::Over(what) => CompileError::TooComplex(what),
                })?;
            }
            Payload::TableSection(r) => {
                for table in r {
                    let table = table.map_err(malformed)?;
                    tables += 1;
                    if table.ty.initial > costs::MAX_TABLE_ELEMENTS || tables > costs::MAX_TABLES {
                        return too(format!(
                            "tables beyond {} of {} elements",
                            costs::MAX_TABLES,
                            costs::MAX_TABLE_ELEMENTS
                        ));
                    }
                }
            }
            Payload::MemorySection(r) => {
                for memory in r {
                    let memory = memory.map_err(malformed)?;
                    memories += 1;
                    let bytes = memory.initial.saturating_mul(1 << 16);
                    if memory.memory64 || bytes > MAX_MEMORY_BYTES || memories > costs::MAX_MEMORIES
                    {
                        return too(format!(
                            "memories beyond {} of {MAX_MEMORY_BYTES} bytes (32-bit)",
                            costs::MAX_MEMORIES
                        ));
                    }
                }
            }
            Payload::TypeSection(r) => entries("types", r.count())?,
            Payload::ImportSection(r) => entries("imports", r.count())?,
            Payload::ExportSection(r) => entries("exports", r.count())?,
            Payload::GlobalSection(r) => entries("globals", r.count())?,
            Payload::ElementSection(r) => entries("element segments", r.count())?,
            Payload::DataSection(r) => entries("data segments", r.count())?,
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => {
                nested += 1;
                if nested > costs::MAX_NESTED {
                    return too(format!("more than {} nested modules", costs::MAX_NESTED));
                }
            }
            _ => {}
        }
    }
    code.functions = functions;
    Ok(code)
}

enum CodeCost {
    Malformed(wasmparser::BinaryReaderError),
    Over(String),
}

impl Costs {
    /// Counts one function body's instructions.
    fn scan(&mut self, body: &wasmparser::FunctionBody<'_>) -> Result<(), CodeCost> {
        use wasmparser::Operator;
        let mut ops = body.get_operators_reader().map_err(CodeCost::Malformed)?;
        // Open blocks, and whether each is a loop.
        let mut frames: Vec<bool> = Vec::new();
        let mut loops = 0u64;
        while !ops.eof() {
            let op = ops.read().map_err(CodeCost::Malformed)?;
            self.operators += 1;
            match op {
                Operator::Loop { .. } => {
                    frames.push(true);
                    loops += 1;
                    self.max_loop_depth = self.max_loop_depth.max(loops);
                    if loops > costs::MAX_LOOP_DEPTH {
                        return Err(CodeCost::Over(format!(
                            "loops nested more than {} deep",
                            costs::MAX_LOOP_DEPTH
                        )));
                    }
                }
                Operator::Block { .. }
                | Operator::If { .. }
                | Operator::TryTable { .. }
                | Operator::Try { .. } => frames.push(false),
                Operator::End | Operator::Delegate { .. } => {
                    loops -= u64::from(frames.pop() == Some(true));
                }
                Operator::LocalGet { .. }
                | Operator::LocalSet { .. }
                | Operator::LocalTee { .. } => {
                    self.loop_local_weight += loops;
                }
                Operator::BrTable { targets } => {
                    self.operators += u64::from(targets.len());
                }
                Operator::Call { .. }
                | Operator::CallIndirect { .. }
                | Operator::CallRef { .. }
                | Operator::ReturnCall { .. }
                | Operator::ReturnCallIndirect { .. }
                | Operator::ReturnCallRef { .. } => self.calls += 1,
                _ => {}
            }
        }
        let cost = self.compile_cost();
        if cost > costs::MAX_COMPILE_COST {
            return Err(CodeCost::Over(format!(
                "compile cost {cost} or more; the limit is {} (instructions, calls, and \
                 uses of locals inside loops)",
                costs::MAX_COMPILE_COST
            )));
        }
        Ok(())
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
    check_config: ComponentExportIndex,
    evaluations: AtomicU64,
}

impl CompiledRule {
    /// How many times this process has called the rule's `evaluate`.
    pub fn evaluations(&self) -> u64 {
        self.evaluations.load(Ordering::Relaxed)
    }
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

impl Evaluation {
    /// An evaluation that did not run, for `reason`.
    pub fn skipped(reason: FailureReason) -> Self {
        Evaluation {
            result: Err(reason),
            fuel_used: 0,
            elapsed: Duration::ZERO,
            logs: Vec::new(),
            logs_dropped: 0,
        }
    }
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

/// The largest limits any deployment may have: uploads are test-
/// instantiated with these, so a rule that a deployment could run is never
/// refused for needing more than the defaults.
fn largest_limits() -> Limits {
    Limits {
        fuel: 1_000_000_000,
        memory_bytes: MAX_MEMORY_BYTES,
        timeout_ms: 1_000,
        ..Limits::default()
    }
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

    /// Whether the bytes with this sha256 are compiled already.
    pub fn is_compiled(&self, sha256: &str) -> bool {
        self.compiled.contains_key(sha256)
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
            .table_elements(costs::MAX_TABLE_ELEMENTS as usize)
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
            // Compiling runs on the rule pool thread that took the upload
            // (its priority, its tenant's slot), never on helper threads
            // beside it.
            .parallel_compilation(false)
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
        // The log import by hand: the message is read in place and only its
        // first bytes are copied, however long the rule made it.
        linker
            .root()
            .instance("mall:promotion/log@1.0.0")?
            .func_wrap(
                "write",
                |mut store: StoreContextMut<'_, Sandbox>,
                 (level, message): (LogLevel, output::BoundedText)| {
                    let fuel = store.get_fuel()?;
                    store.set_fuel(fuel.saturating_sub(LOG_CALL_FUEL))?;
                    store.data_mut().log(level, message);
                    Ok(())
                },
            )?;

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
    /// wit-bindgen), and checks that it targets the rule world and can be
    /// instantiated with the largest limits a deployment may have. What is
    /// too costly to compile is refused first ([`check_costs`]).
    pub fn compile(&self, bytes: &[u8]) -> Result<CompiledRule, CompileError> {
        check_costs(bytes)?;
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
            check_costs(&encoded)?;
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
        let export = |name: &str| {
            component
                .get_export_index(None, name)
                .ok_or_else(|| CompileError::WrongWorld(format!("no `{name}` export")))
        };
        let evaluate = export("evaluate")?;
        let check_config = export("check-config")?;
        // The output types the host reads lazily must match the component's;
        // checked once here so evaluations can skip the check.
        let (mut store, _) = self.store(&largest_limits());
        let instance =
            pre.instance_pre()
                .instantiate(&mut store)
                .map_err(|e| match classify(&store, e) {
                    FailureReason::EngineBusy | FailureReason::HostOverloaded => CompileError::Busy,
                    reason => CompileError::StartTrapped(reason.code()),
                })?;
        instance
            .get_typed_func::<(&str, &wit::Cart), (Result<output::Outcome, output::RuleError>,)>(
                &mut store, &evaluate,
            )
            .map_err(|e| CompileError::WrongWorld(first_line(&format!("{e:#}"))))?;
        instance
            .get_typed_func::<(&str,), (Result<(), output::RuleError>,)>(&mut store, &check_config)
            .map_err(|e| CompileError::WrongWorld(first_line(&format!("{e:#}"))))?;
        Ok(CompiledRule {
            sha256,
            size: bytes.len(),
            pre,
            evaluate,
            check_config,
            evaluations: AtomicU64::new(0),
        })
    }

    /// Runs `check-config` in a sandbox. The rule's message is bounded.
    pub fn check_config(
        &self,
        rule: &CompiledRule,
        limits: &Limits,
        config: &str,
    ) -> Result<Result<(), wit::RuleError>, FailureReason> {
        let (mut store, _) = self.store(limits);
        let instance = rule
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| classify(&store, e))?;
        let func = instance
            .get_func(&mut store, rule.check_config)
            .ok_or(FailureReason::Instantiation)?;
        // SAFETY: the signature was checked with `get_typed_func` when the
        // rule was compiled.
        let typed: output::CheckConfig<'_> =
            unsafe { wasmtime::component::TypedFunc::new_unchecked(func) };
        match typed.call(&mut store, (config,)) {
            Ok((Ok(()),)) => Ok(Ok(())),
            Ok((Err(error),)) => Ok(Err(error.into())),
            Err(e) => Err(classify(&store, e)),
        }
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
        let (mut store, fuel) = self.store(limits);
        let result = if input_size(cart) + config.len() > limits.max_input_bytes as usize {
            Err(FailureReason::InputTooLarge)
        } else {
            rule.evaluations.fetch_add(1, Ordering::Relaxed);
            match rule.pre.instance_pre().instantiate(&mut store) {
                Ok(instance) => match instance.get_func(&mut store, rule.evaluate) {
                    Some(func) => {
                        // SAFETY: the signature was checked with
                        // `get_typed_func` when the rule was compiled.
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
                    None => Err(FailureReason::Instantiation),
                },
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

    /// A fresh store with the limits armed: fuel, the memory cap, and the
    /// time limit checked every tick against the thread's CPU time (the
    /// clock starts now, on the thread that runs the rule: time spent
    /// waiting for it never counts).
    fn store(&self, limits: &Limits) -> (Store<Sandbox>, u64) {
        let mut store = Store::new(&self.engine, Sandbox::new(limits));
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        // Fuel is enabled on the engine, so this cannot fail.
        let _ = store.set_fuel(limits.fuel);
        store.set_epoch_deadline(CHECK_EVERY_TICKS);
        store.epoch_deadline_callback(|mut cx| {
            // A long-running job yields to other tenants' work here.
            super::pool::pause_point();
            let sandbox = cx.data_mut();
            match sandbox.clock.check() {
                None => Ok(UpdateDeadline::Continue(CHECK_EVERY_TICKS)),
                Some(stopped) => {
                    sandbox.stopped = Some(stopped);
                    Ok(UpdateDeadline::Interrupt)
                }
            }
        });
        (store, limits.fuel)
    }
}

/// Names what stopped an evaluation.
fn classify(store: &Store<Sandbox>, error: wasmtime::Error) -> FailureReason {
    let sandbox = store.data();
    if sandbox.memory_cap_hit {
        return FailureReason::OutOfMemory;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => FailureReason::OutOfFuel,
        Some(Trap::Interrupt) => match sandbox.stopped {
            Some(Stopped::Host) => FailureReason::HostOverloaded,
            _ => FailureReason::DeadlineExceeded,
        },
        Some(Trap::StackOverflow) => FailureReason::StackOverflow,
        Some(Trap::UnreachableCodeReached) => FailureReason::Panic,
        Some(_) => FailureReason::Trap,
        None if error.is::<wasmtime::PoolConcurrencyLimitError>()
            || format!("{error:#}").contains("concurrent limit") =>
        {
            FailureReason::EngineBusy
        }
        None => FailureReason::Trap,
    }
}

/// `text` made safe for a log line: control characters (newlines, ANSI
/// escapes) are escaped, and it is cut to `max` characters.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for (n, c) in text.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202e}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_time_limit_is_checked_every_millisecond_and_stops_at_one() {
        // The limit is looked at on every check: at least once per
        // millisecond of the rule's run.
        assert!(EPOCH_TICK * CHECK_EVERY_TICKS as u32 <= Duration::from_millis(1));
        let clock = Clock::start(1);
        let ms = Duration::from_millis;
        assert_eq!(clock.verdict(Duration::from_micros(999), ms(1)), None);
        assert_eq!(clock.verdict(ms(1), ms(1)), Some(Stopped::Rule));
        // Time the node did not give the rule is not the rule's: only the
        // wall-clock backstop stops it, as the host's failure.
        assert_eq!(clock.verdict(Duration::ZERO, ms(53)), None);
        assert_eq!(clock.verdict(Duration::ZERO, ms(54)), Some(Stopped::Host));
        // `timeoutMs: 0` is no limit-free rule: it is held to 1 ms too.
        assert_eq!(Clock::start(0).verdict(ms(1), ms(1)), Some(Stopped::Rule));
    }
}
