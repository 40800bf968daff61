//! The budget a chat template renders under. A template is code from the model file, so it is
//! untrusted: two nested `range(100000)` loops would run for hours, a string doubled thirty times
//! takes gigabytes, `tojson(indent=10**11)` asks for a 100 GB allocation. Every render is bounded
//! in time, memory and output, and a breach is an [`Error::ChatTemplate`] naming the limit.
//!
//! - **Time**: minijinja's fuel (one unit per VM instruction, [`TemplateLimits::fuel`]) makes the
//!   number of instructions finite and deterministic; a wall-clock deadline
//!   ([`TemplateLimits::time_ms`]) is the backstop for instructions that are slow on their own
//!   (a comparison of two long strings in a loop).
//! - **Memory**: minijinja cannot be asked how much a render allocates, and `~` (string
//!   concatenation) has no limit in it. So the compiled template is *instrumented*: before
//!   every `~`, `+` and `*` a check of the operands' sizes runs (the result may be at most
//!   [`TemplateLimits::max_string`] bytes or [`TemplateLimits::max_items`] items), after every
//!   filter, function, method call and slice its result is charged to a running total of bytes
//!   produced ([`TemplateLimits::max_bytes`]), and before every emit the text is charged to the
//!   output ([`TemplateLimits::max_output`], captures included). No value can grow more than
//!   one step past a limit, so peak memory stays within a few times `max_bytes`.
//! - **Arguments** that size an allocation by themselves are capped in the filters that take
//!   them (`indent` and `tojson` widths, `format` widths, `batch`/`slice` counts) and in
//!   `replace` / `join`, whose output size is known before they build it.
//!
//! The instrumentation uses minijinja's `unstable_machinery` (the compiler and VM), which is
//! why the crate is pinned to one exact version in the workspace `Cargo.toml`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use minijinja::machinery::{Instruction, Instructions};
use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{Error as MjError, ErrorKind, State};

/// Which budget a template ran out of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TemplateLimit {
    /// VM instructions ([`TemplateLimits::fuel`]).
    Fuel,
    /// Nested macro calls / recursive loops ([`TemplateLimits::recursion`]).
    Recursion,
    /// Wall-clock time ([`TemplateLimits::time_ms`]).
    Time,
    /// Length of the template source ([`TemplateLimits::max_source`]).
    Source,
    /// Rendered text, captures included ([`TemplateLimits::max_output`]).
    Output,
    /// Length of one string value ([`TemplateLimits::max_string`]).
    String,
    /// Bytes produced by all operations of one render ([`TemplateLimits::max_bytes`]).
    Bytes,
    /// Items of one sequence ([`TemplateLimits::max_items`]).
    Items,
    /// An indent, padding width or repeat count ([`TemplateLimits::max_width`]).
    Width,
}

impl TemplateLimit {
    /// Plain name with its unit, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            TemplateLimit::Fuel => "fuel limit (instructions)",
            TemplateLimit::Recursion => "recursion limit (nested calls)",
            TemplateLimit::Time => "time limit (ms)",
            TemplateLimit::Source => "source size limit (bytes)",
            TemplateLimit::Output => "output size limit (bytes)",
            TemplateLimit::String => "string size limit (bytes)",
            TemplateLimit::Bytes => "memory limit (bytes produced)",
            TemplateLimit::Items => "sequence length limit (items)",
            TemplateLimit::Width => "width limit",
        }
    }
}

impl fmt::Display for TemplateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Most VM instructions one render may run. SmolLM2's and Gemma's templates spend 53 and 68
/// (instrumentation included) on the golden one-turn conversations, a few dozen more per
/// message, so thousands of messages fit; two nested `range(100000)` loops stop in ~0.2 s.
pub const TEMPLATE_FUEL: u64 = 2_000_000;
/// Deepest nesting of macro calls and recursive loops (minijinja's own default is 500).
pub const TEMPLATE_RECURSION: usize = 200;
/// Wall-clock backstop for one render.
pub const TEMPLATE_TIME_MS: f64 = 5_000.0;
/// Longest template source (real templates are a few KiB; tool-calling ones up to ~50 KiB).
pub const MAX_TEMPLATE_SOURCE: usize = 256 << 10;
/// Smallest output cap, whatever the context.
pub const MIN_TEMPLATE_OUTPUT: usize = 256 << 10;
/// Output bytes allowed per context token: four times a context's worth of text (~4 bytes a
/// token).
pub const TEMPLATE_OUTPUT_PER_TOKEN: usize = 16;
/// Most items in one sequence (minijinja's `range` stops at 100 000 too).
pub const MAX_TEMPLATE_ITEMS: usize = 100_000;
/// Widest indent, padding or JSON indent.
pub const MAX_TEMPLATE_WIDTH: usize = 1_024;
/// Bytes a render may produce in all, as a multiple of the output cap (never below 64 MiB).
pub const TEMPLATE_BYTES_PER_OUTPUT: usize = 16;
/// Context size the default limits assume.
pub const DEFAULT_TEMPLATE_CTX: usize = 32_768;

/// Bounds on one render.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TemplateLimits {
    pub fuel: u64,
    pub recursion: usize,
    pub time_ms: f64,
    pub max_source: usize,
    pub max_output: usize,
    pub max_string: usize,
    pub max_bytes: usize,
    pub max_items: usize,
    pub max_width: usize,
}

impl Default for TemplateLimits {
    fn default() -> Self {
        Self::for_context(DEFAULT_TEMPLATE_CTX)
    }
}

impl TemplateLimits {
    /// The limits for a prompt that must fit `n_ctx` tokens: output up to
    /// [`TEMPLATE_OUTPUT_PER_TOKEN`] bytes a token (at least [`MIN_TEMPLATE_OUTPUT`]).
    pub fn for_context(n_ctx: usize) -> Self {
        let max_output = n_ctx
            .saturating_mul(TEMPLATE_OUTPUT_PER_TOKEN)
            .max(MIN_TEMPLATE_OUTPUT);
        Self {
            fuel: TEMPLATE_FUEL,
            recursion: TEMPLATE_RECURSION,
            time_ms: TEMPLATE_TIME_MS,
            max_source: MAX_TEMPLATE_SOURCE,
            max_output,
            max_string: max_output,
            max_bytes: max_output
                .saturating_mul(TEMPLATE_BYTES_PER_OUTPUT)
                .max(64 << 20),
            max_items: MAX_TEMPLATE_ITEMS,
            max_width: MAX_TEMPLATE_WIDTH,
        }
    }

    fn value_of(&self, l: TemplateLimit) -> u64 {
        match l {
            TemplateLimit::Fuel => self.fuel,
            TemplateLimit::Recursion => self.recursion as u64,
            TemplateLimit::Time => self.time_ms as u64,
            TemplateLimit::Source => self.max_source as u64,
            TemplateLimit::Output => self.max_output as u64,
            TemplateLimit::String => self.max_string as u64,
            TemplateLimit::Bytes => self.max_bytes as u64,
            TemplateLimit::Items => self.max_items as u64,
            TemplateLimit::Width => self.max_width as u64,
        }
    }
}

/// What one render has used so far.
struct Meter {
    limits: TemplateLimits,
    start_ms: f64,
    output: usize,
    bytes: usize,
    breach: Option<(TemplateLimit, String)>,
}

thread_local! {
    static METER: RefCell<Option<Meter>> = const { RefCell::new(None) };
}

fn now_ms() -> f64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        use std::time::Instant;
        static T0: OnceLock<Instant> = OnceLock::new();
        T0.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
    }
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now()
    }
}

/// The meter of the render running on this thread; dropped (and the meter cleared) when the
/// render ends.
pub(super) struct Metered(());

impl Metered {
    pub(super) fn start(limits: TemplateLimits) -> Self {
        METER.with(|m| {
            *m.borrow_mut() = Some(Meter {
                limits,
                start_ms: now_ms(),
                output: 0,
                bytes: 0,
                breach: None,
            })
        });
        Metered(())
    }

    /// (bytes produced, output bytes) so far.
    pub(super) fn usage(&self) -> (usize, usize) {
        METER.with(|m| m.borrow().as_ref().map_or((0, 0), |m| (m.bytes, m.output)))
    }

    /// The limit the render broke, with what broke it.
    pub(super) fn breach(&self) -> Option<(TemplateLimit, String)> {
        METER.with(|m| m.borrow().as_ref().and_then(|m| m.breach.clone()))
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        METER.with(|m| *m.borrow_mut() = None);
    }
}

/// Run `f` on this thread's meter (a fresh default one when called outside a render, e.g. a
/// filter evaluated by a test).
fn metered<R>(f: impl FnOnce(&mut Meter) -> Result<R, MjError>) -> Result<R, MjError> {
    METER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let m = slot.get_or_insert_with(|| Meter {
            limits: TemplateLimits::default(),
            start_ms: now_ms(),
            output: 0,
            bytes: 0,
            breach: None,
        });
        f(m)
    })
}

impl Meter {
    /// Record a breach of `limit` by `what` and return the error that ends the render.
    fn over(&mut self, limit: TemplateLimit, what: String) -> MjError {
        let msg = format!(
            "{what} exceeds the template's {} of {}",
            limit.describe(),
            self.limits.value_of(limit)
        );
        self.breach.get_or_insert((limit, msg.clone()));
        MjError::new(ErrorKind::InvalidOperation, msg)
    }

    fn tick(&mut self) -> Result<(), MjError> {
        let t = now_ms() - self.start_ms;
        if t > self.limits.time_ms {
            return Err(self.over(TemplateLimit::Time, format!("rendering for {t:.0} ms")));
        }
        Ok(())
    }

    fn string(&mut self, len: usize, what: &str) -> Result<(), MjError> {
        if len > self.limits.max_string {
            return Err(self.over(TemplateLimit::String, format!("{what} of {len} bytes")));
        }
        Ok(())
    }

    fn items(&mut self, n: usize, what: &str) -> Result<(), MjError> {
        if n > self.limits.max_items {
            return Err(self.over(TemplateLimit::Items, format!("{what} of {n} items")));
        }
        Ok(())
    }

    fn width(&mut self, w: usize, what: &str) -> Result<(), MjError> {
        if w > self.limits.max_width {
            return Err(self.over(TemplateLimit::Width, format!("{what} {w}")));
        }
        Ok(())
    }

    /// Add `n` bytes to what this render has produced.
    fn charge(&mut self, n: usize) -> Result<(), MjError> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limits.max_bytes {
            let b = self.bytes;
            return Err(self.over(TemplateLimit::Bytes, format!("producing {b} bytes")));
        }
        self.tick()
    }

    /// Add `n` bytes of text to the output (or a capture).
    fn emit(&mut self, n: usize) -> Result<(), MjError> {
        self.output = self.output.saturating_add(n);
        if self.output > self.limits.max_output {
            let o = self.output;
            return Err(self.over(TemplateLimit::Output, format!("an output of {o} bytes")));
        }
        self.charge(n)
    }
}

/// Counts the bytes a value's text would take, failing past `cap` (so a huge value is never
/// formatted in full).
struct CountingWriter {
    n: usize,
    cap: usize,
}

impl fmt::Write for CountingWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.n += s.len();
        if self.n > self.cap {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// Length of `v` as text (what `~` and `{{ }}` write), or `None` past `cap`.
fn text_len(v: &Value, cap: usize) -> Option<usize> {
    if let Some(s) = v.as_str() {
        return (s.len() <= cap).then_some(s.len());
    }
    if let Some(n) = v.len().filter(|_| is_seq_or_map(v)) {
        // Each item takes at least a separator: a cheap bound before formatting.
        if n > cap {
            return None;
        }
    }
    let mut w = CountingWriter { n: 0, cap };
    write!(w, "{v}").ok().map(|_| w.n)
}

fn is_seq_or_map(v: &Value) -> bool {
    matches!(
        v.kind(),
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
    )
}

/// Bytes a value newly holds, for the running total: its text for strings, a word per item
/// for sequences and maps (their items are shared, not copied).
fn size_of(v: &Value) -> usize {
    match v.kind() {
        ValueKind::String | ValueKind::Bytes => v.as_str().map_or(0, str::len),
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => {
            v.len().unwrap_or(0).saturating_mul(16)
        }
        _ => 0,
    }
}

/// Name prefix of the instrumentation's functions; a template may not use it.
const RESERVED: &str = "__slm_";
const PRE_CONCAT: &str = "__slm_pre_concat";
const PRE_ADD: &str = "__slm_pre_add";
const PRE_MUL: &str = "__slm_pre_mul";
const CHARGE: &str = "__slm_charge";
const EMIT: &str = "__slm_emit";
const EMIT_RAW: &str = "__slm_emit_raw";
const TICK: &str = "__slm_tick";

/// The two operands back, in the order `UnpackList(2)` restores them.
fn operands(a: Value, b: Value) -> Value {
    Value::from(vec![b, a])
}

fn pre_concat(a: Value, b: Value) -> Result<Value, MjError> {
    metered(|m| {
        let cap = m.limits.max_string;
        let len = match (text_len(&a, cap), text_len(&b, cap)) {
            (Some(x), Some(y)) => x + y,
            _ => cap.saturating_add(1),
        };
        m.string(len, "a concatenated string")?;
        m.charge(len)
    })?;
    Ok(operands(a, b))
}

fn pre_add(a: Value, b: Value) -> Result<Value, MjError> {
    metered(|m| {
        if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
            let len = x.len() + y.len();
            m.string(len, "a concatenated string")?;
            return m.charge(len);
        }
        if is_seq_or_map(&a) && is_seq_or_map(&b) {
            let n = a.len().unwrap_or(0).saturating_add(b.len().unwrap_or(0));
            m.items(n, "a joined sequence")?;
            return m.charge(n.saturating_mul(16));
        }
        m.tick()
    })?;
    Ok(operands(a, b))
}

fn pre_mul(a: Value, b: Value) -> Result<Value, MjError> {
    metered(|m| {
        let (x, n) = if a.as_str().is_some() || is_seq_or_map(&a) {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let Some(n) = n.as_usize() else {
            return m.tick();
        };
        if let Some(s) = x.as_str() {
            let len = s.len().saturating_mul(n);
            m.string(len, "a repeated string")?;
            m.charge(len)
        } else if is_seq_or_map(x) {
            let items = x.len().unwrap_or(0).saturating_mul(n);
            m.items(items, "a repeated sequence")?;
            m.charge(items.saturating_mul(16))
        } else {
            m.tick()
        }
    })?;
    Ok(operands(a, b))
}

fn charge(v: Value) -> Result<Value, MjError> {
    metered(|m| {
        if let Some(s) = v.as_str() {
            m.string(s.len(), "a string")?;
        } else if is_seq_or_map(&v) {
            m.items(v.len().unwrap_or(0), "a sequence")?;
        }
        m.charge(size_of(&v))
    })?;
    Ok(v)
}

fn emit(v: Value) -> Result<Value, MjError> {
    metered(|m| {
        let cap = m.limits.max_output.saturating_sub(m.output);
        let n = text_len(&v, cap).unwrap_or(cap.saturating_add(1));
        m.emit(n)
    })?;
    Ok(v)
}

fn emit_raw(n: usize) -> Result<(), MjError> {
    metered(|m| m.emit(n))
}

fn tick() -> Result<(), MjError> {
    metered(|m| m.tick())
}

/// Register the instrumentation's functions and the capped filters on `env`.
pub(super) fn install(env: &mut minijinja::Environment<'_>) {
    env.add_function(PRE_CONCAT, pre_concat);
    env.add_function(PRE_ADD, pre_add);
    env.add_function(PRE_MUL, pre_mul);
    env.add_function(CHARGE, charge);
    env.add_function(EMIT, emit);
    env.add_function(EMIT_RAW, emit_raw);
    env.add_function(TICK, tick);
    env.add_filter("indent", indent);
    env.add_filter("replace", replace_filter);
    env.add_filter("join", join_filter);
    env.add_filter("batch", batch);
    env.add_filter("slice", slice);
    env.add_filter("format", format);
}

/// Whether a name belongs to the instrumentation.
fn reserved(name: &str) -> bool {
    name.starts_with(RESERVED)
}

/// The instructions of `ins` with the budget checks inserted (see the module docs). Jump
/// targets move with the code they point at.
///
/// Errors: a template that names one of the instrumentation's functions.
pub(super) fn instrument<'s>(ins: &Instructions<'s>) -> Result<Instructions<'s>, MjError> {
    use Instruction as I;
    let n = ins.len() as u32;
    // Instructions inserted before / after each original one.
    let extra = |i: &I<'_>| -> (u32, u32) {
        match i {
            I::StringConcat | I::Add | I::Mul => (2, 0),
            I::Emit => (1, 0),
            I::EmitRaw(_) => (3, 0),
            I::Iterate(_) => (2, 0),
            I::ApplyFilter(..) | I::CallMethod(..) | I::CallFunction(..) | I::CallObject(_) => {
                (0, 1)
            }
            I::Slice => (0, 1),
            _ => (0, 0),
        }
    };
    // New index of each old instruction's group (its first inserted instruction).
    let mut start = Vec::with_capacity(n as usize + 1);
    let mut at = 0u32;
    for idx in 0..n {
        let i = ins.get(idx).expect("index below len");
        start.push(at);
        let (before, after) = extra(i);
        at += before + 1 + after;
    }
    start.push(at);
    let map = |t: u32| -> u32 { start.get(t as usize).copied().unwrap_or(at) };

    let mut out = Instructions::new(ins.name(), ins.source());
    for idx in 0..n {
        let i = ins.get(idx).expect("index below len");
        let line = ins.get_line(idx).map(|l| l as u16);
        let mut add = |x: I<'s>| match line {
            Some(l) => out.add_with_line(x, l),
            None => out.add(x),
        };
        if let I::Lookup(name)
        | I::StoreLocal(name)
        | I::CallFunction(name, _)
        | I::BuildMacro(name, _, _)
        | I::Enclose(name) = i
        {
            if reserved(name) {
                return Err(reserved_err(name));
            }
        }
        match i {
            I::StringConcat => {
                add(I::CallFunction(PRE_CONCAT, Some(2)));
                add(I::UnpackList(2));
            }
            I::Add => {
                add(I::CallFunction(PRE_ADD, Some(2)));
                add(I::UnpackList(2));
            }
            I::Mul => {
                add(I::CallFunction(PRE_MUL, Some(2)));
                add(I::UnpackList(2));
            }
            I::Emit => {
                add(I::CallFunction(EMIT, Some(1)));
            }
            I::EmitRaw(s) => {
                add(I::LoadConst(Value::from(s.len())));
                add(I::CallFunction(EMIT_RAW, Some(1)));
                add(I::DiscardTop);
            }
            I::Iterate(_) => {
                add(I::CallFunction(TICK, Some(0)));
                add(I::DiscardTop);
            }
            _ => {}
        }
        let moved = match i.clone() {
            I::Iterate(t) => I::Iterate(map(t)),
            I::Jump(t) => I::Jump(map(t)),
            I::JumpIfFalse(t) => I::JumpIfFalse(map(t)),
            I::JumpIfFalseOrPop(t) => I::JumpIfFalseOrPop(map(t)),
            I::JumpIfTrueOrPop(t) => I::JumpIfTrueOrPop(map(t)),
            I::BuildMacro(name, t, flags) => I::BuildMacro(name, map(t), flags),
            other => other,
        };
        add(moved);
        if extra(i).1 == 1 {
            add(I::CallFunction(CHARGE, Some(1)));
        }
    }
    Ok(out)
}

/// [`instrument`] for every block of a template.
pub(super) fn instrument_blocks<'s>(
    blocks: &BTreeMap<&'s str, Instructions<'s>>,
) -> Result<BTreeMap<&'s str, Instructions<'s>>, MjError> {
    blocks
        .iter()
        .map(|(k, v)| Ok((*k, instrument(v)?)))
        .collect()
}

fn reserved_err(name: &str) -> MjError {
    MjError::new(
        ErrorKind::InvalidOperation,
        format!("the name `{name}` is reserved"),
    )
}

// ---- Filters whose arguments size an allocation -------------------------------------------

/// `indent(width=4, first=false, blank=false)` with the width capped and the result size
/// checked before it is built.
fn indent(
    value: String,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, MjError> {
    let width = match width {
        Some(w) => w,
        None => kwargs.get::<Option<usize>>("width")?.unwrap_or(4),
    };
    let first = match first {
        Some(v) => v,
        None => kwargs.get::<Option<bool>>("first")?.unwrap_or(false),
    };
    let blank = match blank {
        Some(v) => v,
        None => kwargs.get::<Option<bool>>("blank")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let input = value.strip_suffix('\n').unwrap_or(&value);
    let input = input.strip_suffix('\r').unwrap_or(input);
    let lines = input.split('\n').count();
    metered(|m| {
        m.width(width, "indent width")?;
        m.string(input.len() + lines * (width + 1), "an indented string")
    })?;
    let pad = " ".repeat(width);
    let mut out = String::with_capacity(input.len() + lines * (width + 1));
    for (i, line) in input.split('\n').enumerate() {
        if i == 0 && !first {
            out.push_str(line);
        } else if line.is_empty() {
            if blank {
                out.push_str(&pad);
            }
        } else {
            out.push_str(&pad);
            out.push_str(line);
        }
        out.push('\n');
    }
    // Jinja drops the newline added after the last line.
    out.pop();
    Ok(Value::from(out))
}

/// `s.replace(old, new[, count])` with the result's size checked before it is built (an empty
/// `old` inserts `new` between every character).
pub(super) fn capped_replace(
    s: &str,
    old: &str,
    new: &str,
    count: Option<usize>,
) -> Result<String, MjError> {
    let found = if old.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(old).count()
    };
    let n = count.map_or(found, |c| c.min(found));
    let len = s.len() - n * old.len() + n.saturating_mul(new.len());
    metered(|m| m.string(len, "a replaced string"))?;
    Ok(match count {
        Some(c) => s.replacen(old, new, c),
        None => s.replace(old, new),
    })
}

fn replace_filter(s: String, old: String, new: String) -> Result<Value, MjError> {
    capped_replace(&s, &old, &new, None).map(Value::from)
}

/// `sep.join(items)`, stopping as soon as the result passes the string limit.
pub(super) fn capped_join(items: &Value, sep: &str) -> Result<String, MjError> {
    let cap = metered(|m| Ok(m.limits.max_string))?;
    let mut out = String::new();
    for (i, item) in items.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        match item.as_str() {
            Some(s) => out.push_str(s),
            None => {
                let room = cap.saturating_sub(out.len());
                let n = text_len(&item, room).unwrap_or(room.saturating_add(1));
                if out.len() + n > cap {
                    return metered(|m| {
                        Err(m.over(TemplateLimit::String, "a joined string".into()))
                    });
                }
                let _ = write!(out, "{item}");
            }
        }
        if out.len() > cap {
            let len = out.len();
            return metered(|m| {
                Err(m.over(
                    TemplateLimit::String,
                    format!("a joined string of over {len} bytes"),
                ))
            });
        }
    }
    Ok(out)
}

fn join_filter(items: Value, sep: Option<String>) -> Result<Value, MjError> {
    if let Some(s) = items.as_str() {
        // Jinja joins the characters of a string.
        let sep = sep.unwrap_or_default();
        let chars: Vec<Value> = s.chars().map(Value::from).collect();
        return capped_join(&Value::from(chars), &sep).map(Value::from);
    }
    capped_join(&items, sep.as_deref().unwrap_or("")).map(Value::from)
}

fn batch(state: &State, value: Value, count: usize, fill: Option<Value>) -> Result<Value, MjError> {
    metered(|m| m.items(count, "a batch size"))?;
    minijinja::filters::batch(state, value, count, fill)
}

fn slice(state: &State, value: Value, count: usize, fill: Option<Value>) -> Result<Value, MjError> {
    metered(|m| m.items(count, "a slice count"))?;
    minijinja::filters::slice(state, value, count, fill)
}

/// printf-style `format`, with every width and precision in the format string capped (a
/// `%1000000000s` would otherwise pad to a gigabyte).
fn format(state: &State, fmt: &Value, args: Rest<Value>) -> Result<Value, MjError> {
    if let Some(f) = fmt.as_str() {
        let mut chars = f.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                continue;
            }
            let mut num = 0usize;
            while let Some(&d) = chars.peek() {
                if let Some(v) = d.to_digit(10) {
                    num = num.saturating_mul(10).saturating_add(v as usize);
                } else if d == '*' {
                    num = usize::MAX;
                } else if !"-+ #0.".contains(d) {
                    break;
                } else {
                    metered(|m| m.width(num, "a format width"))?;
                    num = 0;
                }
                chars.next();
            }
            metered(|m| m.width(num, "a format width"))?;
            chars.next();
        }
    }
    minijinja::filters::format(state, fmt, args)
}

/// The JSON indent `tojson` was given, capped.
pub(super) fn check_width(w: usize, what: &str) -> Result<(), MjError> {
    metered(|m| m.width(w, what))
}

/// The running JSON text of `tojson`, checked against the string limit.
pub(super) fn check_string(len: usize, what: &str) -> Result<(), MjError> {
    metered(|m| m.string(len, what))
}

// ---- Constant folding -----------------------------------------------------------------------

/// Upper bounds on a constant expression's value, computed without building it.
#[derive(Clone, Copy)]
struct ConstSize {
    /// Bytes of its text.
    len: u128,
    /// Items, if a sequence.
    items: u128,
    /// Its value, if an integer.
    int: Option<i128>,
}

/// minijinja's compiler evaluates constant expressions (`'x' * 99999999 ~ 'x' * 99999999`)
/// while it compiles, before any budget check can run. This walks the syntax tree first and
/// refuses a template whose constants would exceed the string or item limit.
pub(super) fn check_constants(
    stmt: &minijinja::machinery::ast::Stmt<'_>,
    limits: &TemplateLimits,
) -> Result<(), (TemplateLimit, String)> {
    ConstWalk { limits }.stmt(stmt)
}

struct ConstWalk<'l> {
    limits: &'l TemplateLimits,
}

type WalkResult = Result<(), (TemplateLimit, String)>;

impl ConstWalk<'_> {
    fn stmts(&self, v: &[minijinja::machinery::ast::Stmt<'_>]) -> WalkResult {
        v.iter().try_for_each(|s| self.stmt(s))
    }

    fn stmt(&self, s: &minijinja::machinery::ast::Stmt<'_>) -> WalkResult {
        use minijinja::machinery::ast::Stmt as S;
        match s {
            S::Template(t) => self.stmts(&t.children),
            S::EmitExpr(e) => self.expr(&e.expr),
            S::EmitRaw(_) | S::Continue(_) | S::Break(_) => Ok(()),
            S::ForLoop(f) => {
                self.expr(&f.target)?;
                self.expr(&f.iter)?;
                if let Some(e) = &f.filter_expr {
                    self.expr(e)?;
                }
                self.stmts(&f.body)?;
                self.stmts(&f.else_body)
            }
            S::IfCond(c) => {
                self.expr(&c.expr)?;
                self.stmts(&c.true_body)?;
                self.stmts(&c.false_body)
            }
            S::WithBlock(w) => {
                for (a, b) in &w.assignments {
                    self.expr(a)?;
                    self.expr(b)?;
                }
                self.stmts(&w.body)
            }
            S::Set(x) => {
                self.expr(&x.target)?;
                self.expr(&x.expr)
            }
            S::SetBlock(x) => {
                self.expr(&x.target)?;
                if let Some(e) = &x.filter {
                    self.expr(e)?;
                }
                self.stmts(&x.body)
            }
            S::AutoEscape(a) => {
                self.expr(&a.enabled)?;
                self.stmts(&a.body)
            }
            S::FilterBlock(f) => {
                self.expr(&f.filter)?;
                self.stmts(&f.body)
            }
            S::Block(b) => self.stmts(&b.body),
            S::Import(i) => {
                self.expr(&i.expr)?;
                self.expr(&i.name)
            }
            S::FromImport(i) => {
                self.expr(&i.expr)?;
                for (a, b) in &i.names {
                    self.expr(a)?;
                    if let Some(b) = b {
                        self.expr(b)?;
                    }
                }
                Ok(())
            }
            S::Extends(e) => self.expr(&e.name),
            S::Include(i) => self.expr(&i.name),
            S::Macro(m) => {
                m.args.iter().try_for_each(|e| self.expr(e))?;
                m.defaults.iter().try_for_each(|e| self.expr(e))?;
                self.stmts(&m.body)
            }
            S::CallBlock(c) => {
                self.call(&c.call)?;
                let m = &c.macro_decl;
                m.args.iter().try_for_each(|e| self.expr(e))?;
                m.defaults.iter().try_for_each(|e| self.expr(e))?;
                self.stmts(&m.body)
            }
            S::Do(d) => self.call(&d.call),
        }
    }

    fn call(&self, c: &minijinja::machinery::ast::Call<'_>) -> WalkResult {
        self.expr(&c.expr)?;
        self.args(&c.args)
    }

    fn args(&self, args: &[minijinja::machinery::ast::CallArg<'_>]) -> WalkResult {
        use minijinja::machinery::ast::CallArg as A;
        for a in args {
            match a {
                A::Pos(e) | A::Kwarg(_, e) | A::PosSplat(e) | A::KwargSplat(e) => self.expr(e)?,
            }
        }
        Ok(())
    }

    fn expr(&self, e: &minijinja::machinery::ast::Expr<'_>) -> WalkResult {
        use minijinja::machinery::ast::Expr as E;
        // A foldable subtree is checked as a whole (bottom-up, once).
        if foldable(e) {
            return self.size(e).map(|_| ());
        }
        match e {
            E::Var(_) | E::Const(_) => Ok(()),
            E::Slice(s) => {
                self.expr(&s.expr)?;
                for x in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(x)?;
                }
                Ok(())
            }
            E::UnaryOp(u) => self.expr(&u.expr),
            E::BinOp(b) => {
                self.expr(&b.left)?;
                self.expr(&b.right)
            }
            E::Compare(c) => {
                self.expr(&c.expr)?;
                c.ops.iter().try_for_each(|o| self.expr(&o.expr))
            }
            E::IfExpr(i) => {
                self.expr(&i.test_expr)?;
                self.expr(&i.true_expr)?;
                i.false_expr.as_ref().map_or(Ok(()), |f| self.expr(f))
            }
            E::Filter(f) => {
                if let Some(x) = &f.expr {
                    self.expr(x)?;
                }
                self.args(&f.args)
            }
            E::Test(t) => {
                self.expr(&t.expr)?;
                self.args(&t.args)
            }
            E::GetAttr(g) => self.expr(&g.expr),
            E::GetItem(g) => {
                self.expr(&g.expr)?;
                self.expr(&g.subscript_expr)
            }
            E::Call(c) => self.call(c),
            E::List(l) => l.items.iter().try_for_each(|x| self.expr(x)),
            E::Map(m) => {
                m.keys.iter().try_for_each(|x| self.expr(x))?;
                m.values.iter().try_for_each(|x| self.expr(x))
            }
        }
    }

    /// Size bounds of a foldable expression; an error past the limits.
    fn size(
        &self,
        e: &minijinja::machinery::ast::Expr<'_>,
    ) -> Result<ConstSize, (TemplateLimit, String)> {
        use minijinja::machinery::ast::{BinOpKind as K, Expr as E};
        let s = match e {
            E::Const(c) => const_size(&c.value),
            E::List(l) => {
                let mut len = 2u128;
                for x in &l.items {
                    len += self.size(x)?.len + 2;
                }
                ConstSize {
                    len,
                    items: l.items.len() as u128,
                    int: None,
                }
            }
            E::Map(m) => {
                let mut len = 2u128;
                for x in m.keys.iter().chain(&m.values) {
                    len += self.size(x)?.len + 2;
                }
                ConstSize {
                    len,
                    items: m.keys.len() as u128,
                    int: None,
                }
            }
            E::UnaryOp(u) => {
                let x = self.size(&u.expr)?;
                ConstSize {
                    len: x.len + 1,
                    items: 0,
                    int: x.int.and_then(i128::checked_neg),
                }
            }
            E::Compare(c) => {
                self.size(&c.expr)?;
                for o in &c.ops {
                    self.size(&o.expr)?;
                }
                ConstSize {
                    len: 5,
                    items: 0,
                    int: None,
                }
            }
            E::BinOp(b) => {
                let (l, r) = (self.size(&b.left)?, self.size(&b.right)?);
                let ints = l.int.zip(r.int);
                let int = |f: fn(i128, i128) -> Option<i128>| ints.and_then(|(a, b)| f(a, b));
                let number = |v: Option<i128>| ConstSize {
                    len: 48,
                    items: 0,
                    int: v,
                };
                match b.op {
                    K::Concat => ConstSize {
                        len: l.len + r.len,
                        items: 0,
                        int: None,
                    },
                    K::Add if ints.is_some() => number(int(i128::checked_add)),
                    K::Add => ConstSize {
                        len: l.len + r.len,
                        items: l.items + r.items,
                        int: None,
                    },
                    K::Mul if ints.is_some() => number(int(i128::checked_mul)),
                    K::Mul => {
                        // A string or sequence times a count (an unknown count: assume the
                        // worst, minijinja's own string cap of 10^8).
                        let (x, n) = if l.int.is_some() {
                            (r, l.int)
                        } else {
                            (l, r.int)
                        };
                        let n = n.map_or(100_000_000u128, |n| n.max(0) as u128);
                        ConstSize {
                            len: x.len.saturating_mul(n),
                            items: x.items.saturating_mul(n),
                            int: None,
                        }
                    }
                    K::Sub => number(int(i128::checked_sub)),
                    K::FloorDiv => number(int(i128::checked_div_euclid)),
                    K::Rem => number(int(i128::checked_rem_euclid)),
                    K::Pow => number(int(|a, b| {
                        u32::try_from(b).ok().and_then(|b| a.checked_pow(b))
                    })),
                    _ => number(None),
                }
            }
            _ => ConstSize {
                len: 0,
                items: 0,
                int: None,
            },
        };
        if s.len > self.limits.max_string as u128 {
            return Err((
                TemplateLimit::String,
                format!(
                    "a constant expression of {} bytes exceeds the template's {} of {}",
                    s.len,
                    TemplateLimit::String.describe(),
                    self.limits.max_string
                ),
            ));
        }
        if s.items > self.limits.max_items as u128 {
            return Err((
                TemplateLimit::Items,
                format!(
                    "a constant sequence of {} items exceeds the template's {} of {}",
                    s.items,
                    TemplateLimit::Items.describe(),
                    self.limits.max_items
                ),
            ));
        }
        Ok(s)
    }
}

/// Whether minijinja's compiler may evaluate `e` as a constant (`ast::Expr::as_const`).
fn foldable(e: &minijinja::machinery::ast::Expr<'_>) -> bool {
    use minijinja::machinery::ast::Expr as E;
    match e {
        E::Const(_) => true,
        E::List(l) => l.items.iter().all(|x| matches!(x, E::Const(_))),
        E::Map(m) => m
            .keys
            .iter()
            .chain(&m.values)
            .all(|x| matches!(x, E::Const(_))),
        E::UnaryOp(u) => foldable(&u.expr),
        E::BinOp(b) => foldable(&b.left) && foldable(&b.right),
        E::Compare(c) => foldable(&c.expr) && c.ops.iter().all(|o| foldable(&o.expr)),
        _ => false,
    }
}

fn const_size(v: &Value) -> ConstSize {
    if let Some(s) = v.as_str() {
        return ConstSize {
            len: s.len() as u128,
            items: 0,
            int: None,
        };
    }
    let int = if v.is_integer() {
        i128::try_from(v.clone()).ok()
    } else {
        None
    };
    // A literal's text is bounded by the source it was written in.
    ConstSize {
        len: v.to_string().len() as u128,
        items: v.len().unwrap_or(0) as u128,
        int,
    }
}
