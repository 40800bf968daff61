//! Chat templates: renders `tokenizer.chat_template` (Jinja) with `minijinja`, configured like
//! Hugging Face's `apply_chat_template` (`trim_blocks`, `lstrip_blocks`, loop controls,
//! `raise_exception`, `strftime_now`, Python-style `tojson` and string/dict methods), with
//! built-in fallbacks for models that carry none (Gemma turn format, ChatML). Every render runs
//! under a budget ([`budget`]): the template comes from the model file and is untrusted.

mod budget;

use minijinja::machinery::{self, CodeGenerator, WhitespaceConfig};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, State};

pub use budget::{
    TemplateLimit, TemplateLimits, MAX_TEMPLATE_ITEMS, MAX_TEMPLATE_SOURCE, MAX_TEMPLATE_WIDTH,
    TEMPLATE_FUEL, TEMPLATE_RECURSION,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, MetaValue};
use crate::tokenizer::Tokenizer;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Built-in template for Gemma models without one: `<start_of_turn>role\n...<end_of_turn>\n`,
/// `assistant` shown as `model`, a system message folded into the first turn, contents trimmed.
pub const GEMMA_TEMPLATE: &str = "{{- bos_token -}}\
{%- set turns = messages -%}\
{%- set first_prefix = '' -%}\
{%- if messages and messages[0]['role'] == 'system' -%}\
{%- set first_prefix = messages[0]['content'] ~ '\\n\\n' -%}\
{%- set turns = messages[1:] -%}\
{%- endif -%}\
{%- for m in turns -%}\
{{- '<start_of_turn>' ~ ('model' if m['role'] == 'assistant' else m['role']) ~ '\\n' -}}\
{{- (first_prefix if loop.first else '') ~ (m['content'] | trim) ~ '<end_of_turn>\\n' -}}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}";

/// Built-in ChatML template (`<|im_start|>role\n...<|im_end|>\n`) for other models without one.
pub const CHATML_TEMPLATE: &str = "{%- for m in messages -%}\
{{- '<|im_start|>' ~ m['role'] ~ '\\n' ~ m['content'] ~ '<|im_end|>\\n' -}}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";

const NAME: &str = "chat";

/// What one render used of its [`TemplateLimits`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenderUsage {
    /// VM instructions run.
    pub fuel: u64,
    /// Bytes produced by the operations the budget charges.
    pub bytes: usize,
    /// Bytes of output, captures included.
    pub output: usize,
}

/// A compiled chat template plus the BOS/EOS text it is rendered with and the limits it renders
/// under.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    limits: TemplateLimits,
    /// Whether this is a built-in template chosen by [`ChatTemplate::builtin`].
    builtin: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

/// A minijinja error as [`Error::ChatTemplate`]; `breach` is the budget's own record of a
/// limit it enforced.
fn cterr(
    e: minijinja::Error,
    breach: Option<(TemplateLimit, String)>,
    limits: &TemplateLimits,
) -> Error {
    if let Some((limit, what)) = breach {
        return Error::ChatTemplate {
            limit: Some(limit),
            what,
        };
    }
    let limit = match e.kind() {
        ErrorKind::OutOfFuel => Some(TemplateLimit::Fuel),
        _ if e.to_string().contains("recursion limit exceeded") => Some(TemplateLimit::Recursion),
        _ => None,
    };
    let what = match limit {
        Some(TemplateLimit::Fuel) => format!(
            "rendering exceeds the template's {} of {}",
            TemplateLimit::Fuel.describe(),
            limits.fuel
        ),
        Some(l) => format!(
            "rendering exceeds the template's {} of {}",
            l.describe(),
            limits.recursion
        ),
        None => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        }
    };
    Error::ChatTemplate { limit, what }
}

/// Parse and compile `source` into instrumented VM code ([`budget::instrument`]).
fn compile<'s>(
    source: &'s str,
    limits: &TemplateLimits,
) -> Result<(
    machinery::Instructions<'s>,
    std::collections::BTreeMap<&'s str, machinery::Instructions<'s>>,
)> {
    compile_inner(source, limits).map_err(|e| match e {
        Ok(e) => cterr(e, None, limits),
        Err((limit, what)) => Error::ChatTemplate {
            limit: Some(limit),
            what,
        },
    })
}

#[allow(clippy::type_complexity)]
fn compile_inner<'s>(
    source: &'s str,
    limits: &TemplateLimits,
) -> std::result::Result<
    (
        machinery::Instructions<'s>,
        std::collections::BTreeMap<&'s str, machinery::Instructions<'s>>,
    ),
    std::result::Result<minijinja::Error, (TemplateLimit, String)>,
> {
    let ws = WhitespaceConfig {
        keep_trailing_newline: false,
        lstrip_blocks: true,
        trim_blocks: true,
    };
    let ast = machinery::parse(source, NAME, Default::default(), ws).map_err(Ok)?;
    budget::check_constants(&ast, limits).map_err(Err)?;
    let mut g = CodeGenerator::new(NAME, source);
    g.compile_stmt(&ast);
    let (ins, blocks) = g.finish();
    Ok((
        budget::instrument(&ins).map_err(Ok)?,
        budget::instrument_blocks(&blocks).map_err(Ok)?,
    ))
}

impl ChatTemplate {
    /// From `tokenizer.chat_template`; when absent, a built-in template chosen from the
    /// architecture ([`GEMMA_TEMPLATE`] for `gemma*`, else [`CHATML_TEMPLATE`]). BOS/EOS token
    /// text comes from the tokenizer.
    ///
    /// Errors: [`Error::ChatTemplate`] if the template does not compile.
    pub fn from_gguf(gguf: &GgufFile, tokenizer: &Tokenizer) -> Result<Self> {
        match gguf
            .get("tokenizer.chat_template")
            .and_then(MetaValue::as_str)
        {
            Some(s) if !s.trim().is_empty() => {
                let (bos, eos) = bos_eos(tokenizer);
                Self::from_source(s, &bos, &eos)
            }
            _ => Self::builtin(gguf, tokenizer),
        }
    }

    /// The built-in template for this model's family ([`GEMMA_TEMPLATE`] for `gemma*`, else
    /// [`CHATML_TEMPLATE`]), whatever the file carries: the explicit fallback for a file whose
    /// own template fails (`slm --template-fallback`, the app's "use the built-in format").
    ///
    /// Errors: none in practice (the built-in templates compile).
    pub fn builtin(gguf: &GgufFile, tokenizer: &Tokenizer) -> Result<Self> {
        let arch = gguf.architecture().unwrap_or("");
        let source = if arch.starts_with("gemma") {
            GEMMA_TEMPLATE
        } else {
            CHATML_TEMPLATE
        };
        let (bos, eos) = bos_eos(tokenizer);
        let mut t = Self::from_source(source, &bos, &eos)?;
        t.builtin = true;
        Ok(t)
    }

    /// [`ChatTemplate::from_gguf`] followed by [`ChatTemplate::check`]: the file's template, or
    /// its error. With `fallback`, a template that fails either step is replaced by
    /// [`ChatTemplate::builtin`] and the error is returned beside it, for the caller to
    /// report (the fallback is never silent).
    ///
    /// Errors: [`Error::ChatTemplate`] when the template fails and `fallback` is false.
    pub fn load(
        gguf: &GgufFile,
        tokenizer: &Tokenizer,
        limits: TemplateLimits,
        fallback: bool,
    ) -> Result<(Self, Option<Error>)> {
        let own = Self::from_gguf(gguf, tokenizer).and_then(|mut t| {
            t.set_limits(limits);
            t.check()?;
            Ok(t)
        });
        match own {
            Ok(t) => Ok((t, None)),
            Err(e @ Error::ChatTemplate { .. }) if fallback => {
                let mut t = Self::builtin(gguf, tokenizer)?;
                t.set_limits(limits);
                Ok((t, Some(e)))
            }
            Err(e) => Err(e),
        }
    }

    /// Compile a Jinja chat template rendered with these BOS/EOS texts, under the default
    /// [`TemplateLimits`].
    ///
    /// Errors: [`Error::ChatTemplate`] with minijinja's message if it does not compile, or
    /// naming [`TemplateLimit::Source`] when it is longer than [`MAX_TEMPLATE_SOURCE`].
    pub fn from_source(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let limits = TemplateLimits::default();
        if source.len() > limits.max_source {
            return Err(Error::ChatTemplate {
                limit: Some(TemplateLimit::Source),
                what: format!(
                    "a source of {} bytes exceeds the template's {} of {}",
                    source.len(),
                    TemplateLimit::Source.describe(),
                    limits.max_source
                ),
            });
        }
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.set_unknown_method_callback(py_method);
        budget::install(&mut env);
        let mut t = ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            limits,
            builtin: false,
        };
        t.set_limits(limits);
        compile(source, &limits)?;
        Ok(t)
    }

    /// Render under `limits` from now on (e.g. [`TemplateLimits::for_context`] of the loaded
    /// model's context).
    pub fn set_limits(&mut self, limits: TemplateLimits) {
        self.env.set_fuel(Some(limits.fuel));
        self.env.set_recursion_limit(limits.recursion);
        self.limits = limits;
    }

    /// The limits renders run under.
    pub fn limits(&self) -> &TemplateLimits {
        &self.limits
    }

    /// Whether this is a built-in template ([`ChatTemplate::builtin`]).
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// Render a short sample conversation (system, user, assistant, user), so a template that
    /// cannot render a plain chat within its limits is reported when the model loads, not at
    /// the first message. A template may refuse system messages (`raise_exception`): then the
    /// sample is tried without one.
    ///
    /// Errors: [`Error::ChatTemplate`] from the render.
    pub fn check(&self) -> Result<()> {
        let with_system = [
            ChatMessage::new("system", "You are a helpful assistant."),
            ChatMessage::new("user", "Hello!"),
            ChatMessage::new("assistant", "Hi! How can I help?"),
            ChatMessage::new("user", "What is 2 + 2?"),
        ];
        match self.render(&with_system, true) {
            Ok(_) => Ok(()),
            Err(Error::ChatTemplate { limit: None, .. }) => {
                self.render(&with_system[1..], true).map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Render the conversation; `add_generation_prompt` appends the opening of the assistant's
    /// turn.
    ///
    /// Errors: [`Error::ChatTemplate`] (e.g. the template's own `raise_exception`), with `limit`
    /// set when the render broke one of its [`TemplateLimits`].
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_measured(messages, add_generation_prompt)
            .map(|(text, _)| text)
    }

    /// [`ChatTemplate::render`], also returning what the render used of its budget.
    ///
    /// Errors: as [`ChatTemplate::render`].
    pub fn render_measured(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<(String, RenderUsage)> {
        let (ins, blocks) = compile(&self.source, &self.limits)?;
        let meter = budget::Metered::start(self.limits);
        let root = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        let mut text = String::new();
        let vm = machinery::Vm::new(&self.env);
        let r = vm.eval(
            &ins,
            root,
            &blocks,
            &mut machinery::make_string_output(&mut text),
            AutoEscape::None,
        );
        match r {
            Ok((_, state)) => {
                let fuel = state.fuel_levels().map_or(0, |(used, _)| used);
                drop(state);
                let (bytes, output) = meter.usage();
                Ok((
                    text,
                    RenderUsage {
                        fuel,
                        bytes,
                        output,
                    },
                ))
            }
            Err(e) => Err(cterr(e, meter.breach(), &self.limits)),
        }
    }

    /// The Jinja source in use.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The BOS and EOS token texts (empty when the vocabulary has none).
fn bos_eos(tokenizer: &Tokenizer) -> (String, String) {
    let text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_text(i))
            .unwrap_or("")
            .to_string()
    };
    (text(tokenizer.bos_id()), text(tokenizer.eos_id()))
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month 1-12, day 1-31) → days since 1970-01-01, proleptic Gregorian.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the Unix epoch. On `wasm32-unknown-unknown` there is no clock without
/// JavaScript, so a fixed date (2025-01-01) is used there.
fn unix_now() -> i64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
    #[cfg(target_arch = "wasm32")]
    {
        1_735_689_600
    }
}

/// `strftime_now(format)`: the current UTC time formatted with the common strftime fields
/// (`%Y %y %m %d %e %B %b %A %a %H %I %M %S %p %j %%`).
fn strftime_now(fmt: String) -> String {
    format_time(unix_now(), &fmt)
}

fn format_time(secs: i64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, sod / 60 % 60, sod % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let wd = (days + 3).rem_euclid(7) as usize;
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let month = MONTHS[(m as usize).saturating_sub(1).min(11)];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('B') => out.push_str(month),
            Some('b') | Some('h') => out.push_str(&month[..3]),
            Some('A') => out.push_str(DAYS[wd]),
            Some('a') => out.push_str(&DAYS[wd][..3]),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hh + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// `tojson` as Hugging Face defines it: Python's `json.dumps(x, ensure_ascii=False)` (separators
/// `", "` and `": "`, or newlines with `indent`), keys in insertion order unless `sort_keys`.
fn tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => {
                budget::check_width(s.len(), "a tojson indent of length")?;
                Some(s.to_string())
            }
            None => {
                let w = usize::try_from(v.clone()).map_err(|_| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("tojson: indent {v} is not a width"),
                    )
                })?;
                budget::check_width(w, "a tojson indent")?;
                Some(" ".repeat(w))
            }
        },
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let _ = kwargs.get::<Option<Value>>("ensure_ascii")?;
    let (item_sep, key_sep) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(v) if v.len() == 2 => (v[0].clone(), v[1].clone()),
        _ => (
            if indent.is_some() {
                ",".to_string()
            } else {
                ", ".to_string()
            },
            ": ".to_string(),
        ),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    let opts = JsonOpts {
        indent: indent.as_deref(),
        item_sep: &item_sep,
        key_sep: &key_sep,
        sort_keys,
    };
    write_json(&mut out, value, &opts, 0, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts<'a> {
    indent: Option<&'a str>,
    item_sep: &'a str,
    key_sep: &'a str,
    sort_keys: bool,
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(
    out: &mut String,
    v: &Value,
    o: &JsonOpts,
    level: usize,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    if depth > 128 {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    budget::check_string(out.len(), "tojson output")?;
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else {
                    out.push_str(&format!("{f:?}"));
                }
            }
        }
        ValueKind::String => json_str(out, v.as_str().unwrap_or("")),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(o.item_sep);
                }
                newline(out, level + 1);
                match k.as_str() {
                    Some(s) => json_str(out, s),
                    None => json_str(out, &k.to_string()),
                }
                out.push_str(o.key_sep);
                write_json(out, &v.get_item(k)?, o, level + 1, depth + 1)?;
            }
            newline(out, level);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(o.item_sep);
                }
                newline(out, level + 1);
                write_json(out, item, o, level + 1, depth + 1)?;
            }
            newline(out, level);
            out.push(']');
        }
        _ => json_str(out, &v.to_string()),
    }
    Ok(())
}

fn arg_str(args: &[Value], i: usize) -> Option<&str> {
    args.get(i).and_then(Value::as_str)
}

/// `None` or a string of characters to strip.
fn strip_set(args: &[Value]) -> Option<Vec<char>> {
    arg_str(args, 0).map(|s| s.chars().collect())
}

fn py_split(s: &str, sep: Option<&str>, maxsplit: i64) -> Vec<Value> {
    let max = if maxsplit < 0 {
        usize::MAX
    } else {
        maxsplit as usize
    };
    match sep {
        Some(sep) if !sep.is_empty() => {
            if max == usize::MAX {
                s.split(sep).map(Value::from).collect()
            } else {
                s.splitn(max.saturating_add(1), sep)
                    .map(Value::from)
                    .collect()
            }
        }
        _ => {
            // Runs of whitespace; no empty strings.
            let mut out = Vec::new();
            let mut rest = s.trim_start();
            while !rest.is_empty() {
                if out.len() == max {
                    out.push(Value::from(rest));
                    break;
                }
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                out.push(Value::from(&rest[..end]));
                rest = rest[end..].trim_start();
            }
            out
        }
    }
}

fn prefix_match(
    s: &str,
    arg: Option<&Value>,
    f: impl Fn(&str, &str) -> bool,
) -> std::result::Result<bool, minijinja::Error> {
    let Some(a) = arg else {
        return Err(minijinja::Error::new(
            ErrorKind::MissingArgument,
            "expected a prefix or suffix",
        ));
    };
    if let Some(p) = a.as_str() {
        return Ok(f(s, p));
    }
    for item in a.try_iter()? {
        if item.as_str().is_some_and(|p| f(s, p)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Python string and dict methods that templates call (`.strip()`, `.split()`,
/// `.startswith()`, `.items()`, `.get()`, ...).
fn py_method(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    if let Some(s) = value.as_str() {
        let v = match method {
            "strip" => match strip_set(args) {
                Some(set) => s.trim_matches(&set[..]).into(),
                None => s.trim().into(),
            },
            "lstrip" => match strip_set(args) {
                Some(set) => s.trim_start_matches(&set[..]).into(),
                None => s.trim_start().into(),
            },
            "rstrip" => match strip_set(args) {
                Some(set) => s.trim_end_matches(&set[..]).into(),
                None => s.trim_end().into(),
            },
            "upper" => s.to_uppercase().into(),
            "lower" => s.to_lowercase().into(),
            "capitalize" => {
                let mut c = s.chars();
                match c.next() {
                    Some(f) => {
                        (f.to_uppercase().collect::<String>() + &c.as_str().to_lowercase()).into()
                    }
                    None => "".into(),
                }
            }
            "title" => {
                let mut out = String::with_capacity(s.len());
                let mut prev_letter = false;
                for c in s.chars() {
                    if c.is_alphabetic() {
                        if prev_letter {
                            out.extend(c.to_lowercase());
                        } else {
                            out.extend(c.to_uppercase());
                        }
                        prev_letter = true;
                    } else {
                        out.push(c);
                        prev_letter = false;
                    }
                }
                out.into()
            }
            "split" => {
                let max = args.get(1).and_then(Value::as_i64).unwrap_or(-1);
                Value::from(py_split(s, arg_str(args, 0), max))
            }
            "splitlines" => Value::from(s.lines().map(Value::from).collect::<Vec<_>>()),
            "replace" => {
                let (Some(a), Some(b)) = (arg_str(args, 0), arg_str(args, 1)) else {
                    return Err(minijinja::Error::new(
                        ErrorKind::MissingArgument,
                        "replace(old, new)",
                    ));
                };
                let count = match args.get(2).and_then(Value::as_i64) {
                    Some(n) if n >= 0 => Some(n as usize),
                    _ => None,
                };
                budget::capped_replace(s, a, b, count)?.into()
            }
            "find" | "rfind" | "count" => {
                let Some(sub) = arg_str(args, 0) else {
                    return Err(minijinja::Error::new(
                        ErrorKind::MissingArgument,
                        "expected a substring",
                    ));
                };
                let char_index = |byte: usize| s[..byte].chars().count() as i64;
                match method {
                    "find" => s.find(sub).map(char_index).unwrap_or(-1).into(),
                    "rfind" => s.rfind(sub).map(char_index).unwrap_or(-1).into(),
                    _ => (s.matches(sub).count() as i64).into(),
                }
            }
            "startswith" => prefix_match(s, args.first(), |s, p| s.starts_with(p))?.into(),
            "endswith" => prefix_match(s, args.first(), |s, p| s.ends_with(p))?.into(),
            "isdigit" | "isnumeric" => (!s.is_empty() && s.chars().all(|c| c.is_numeric())).into(),
            "isalpha" => (!s.is_empty() && s.chars().all(char::is_alphabetic)).into(),
            "isalnum" => (!s.is_empty() && s.chars().all(char::is_alphanumeric)).into(),
            "isspace" => (!s.is_empty() && s.chars().all(char::is_whitespace)).into(),
            "islower" => {
                (s.chars().any(char::is_lowercase) && !s.chars().any(char::is_uppercase)).into()
            }
            "isupper" => {
                (s.chars().any(char::is_uppercase) && !s.chars().any(char::is_lowercase)).into()
            }
            "join" => {
                let Some(items) = args.first() else {
                    return Err(minijinja::Error::new(
                        ErrorKind::MissingArgument,
                        "join(iterable)",
                    ));
                };
                budget::capped_join(items, s)?.into()
            }
            _ => return Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        };
        return Ok(v);
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => {
                let vals = value
                    .try_iter()?
                    .map(|k| value.get_item(&k))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(Value::from(vals))
            }
            "items" => {
                let items = value
                    .try_iter()?
                    .map(|k| Ok(Value::from(vec![k.clone(), value.get_item(&k)?])))
                    .collect::<std::result::Result<Vec<_>, minijinja::Error>>()?;
                Ok(Value::from(items))
            }
            "get" => {
                let Some(key) = args.first() else {
                    return Err(minijinja::Error::new(
                        ErrorKind::MissingArgument,
                        "get(key[, default])",
                    ));
                };
                let v = value.get_item(key)?;
                if v.is_undefined() {
                    Ok(args.get(1).cloned().unwrap_or(Value::from(())))
                } else {
                    Ok(v)
                }
            }
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        };
    }
    Err(minijinja::Error::from(ErrorKind::UnknownMethod))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, msgs: &[ChatMessage]) -> Result<String> {
        ChatTemplate::from_source(src, "<s>", "</s>")?.render(msgs, true)
    }

    #[test]
    fn python_methods() {
        let m = [ChatMessage::new("user", "  Hi there  ")];
        let out = render(
            "{% for m in messages %}[{{ m.content.strip() }}|{{ m.content.lstrip() }}|\
             {{ m.content.split()|join(',') }}|{{ m.role.upper() }}|{{ m.role.startswith(('x','us')) }}|\
             {{ m.content.strip().replace('Hi', 'Yo') }}|{{ m.items()|length }}|{{ m.get('nope', 'd') }}]{% endfor %}",
            &m,
        )
        .unwrap();
        assert_eq!(out, "[Hi there|Hi there  |Hi,there|USER|True|Yo there|2|d]");
    }

    #[test]
    fn tojson_is_python_style() {
        let out = render(
            "{{ {'a': 1, 'b': [true, none, 'x\"<'], 'c': 1.5}|tojson }}|{{ [1,2]|tojson(indent=2) }}",
            &[],
        )
        .unwrap();
        assert_eq!(
            out,
            "{\"a\": 1, \"b\": [true, null, \"x\\\"<\"], \"c\": 1.5}|[\n  1,\n  2\n]"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        for d in [-800_000, -1, 0, 59, 365, 19_723, 20_000, 2_000_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        // 2024-07-26 12:34:56 UTC, a Friday, day 208 of a leap year.
        let t = 1_721_997_296;
        assert_eq!(
            format_time(t, "%d %b %Y %A %H:%M:%S %j %B %a %y %% %I%p"),
            "26 Jul 2024 Friday 12:34:56 208 July Fri 24 % 12PM"
        );
        let now = strftime_now("%Y-%m-%d".into());
        assert_eq!(now.len(), 10);
    }

    #[test]
    fn raise_exception_is_a_typed_error() {
        let err = render("{{ raise_exception('roles must alternate') }}", &[]).unwrap_err();
        match err {
            Error::ChatTemplate { what: m, .. } => {
                assert!(m.contains("roles must alternate"), "{m}")
            }
            e => panic!("wrong error {e:?}"),
        }
        assert!(matches!(
            ChatTemplate::from_source("{% for %}", "", ""),
            Err(Error::ChatTemplate { .. })
        ));
    }

    #[test]
    fn loop_controls_and_trim_blocks() {
        let m = [
            ChatMessage::new("user", "a"),
            ChatMessage::new("assistant", "b"),
            ChatMessage::new("user", "c"),
        ];
        let out = render(
            "{% for m in messages %}\n  {% if m.role == 'assistant' %}{% continue %}{% endif %}\n{{ m.content }}\n{% endfor %}",
            &m,
        )
        .unwrap();
        assert_eq!(out, "a\nc\n");
    }

    #[test]
    fn builtin_templates() {
        let m = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", " Hi "),
            ChatMessage::new("assistant", "Hello!"),
            ChatMessage::new("user", "Bye"),
        ];
        let g = ChatTemplate::from_source(GEMMA_TEMPLATE, "<bos>", "<eos>")
            .unwrap()
            .render(&m, true)
            .unwrap();
        assert_eq!(
            g,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        let c = ChatTemplate::from_source(CHATML_TEMPLATE, "", "")
            .unwrap()
            .render(&m[..2], false)
            .unwrap();
        assert_eq!(
            c,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n"
        );
    }

    /// Templates an attacker would put in a model file: each ends quickly in a typed error
    /// naming the limit it broke, never a hang, a huge allocation or a panic.
    #[test]
    fn hostile_templates_hit_named_limits() {
        use TemplateLimit as L;
        let cases: &[(&str, &str, L)] = &[
            (
                "nested loops",
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                L::Fuel,
            ),
            (
                "doubling with ~",
                "{% set ns = namespace(s='abcdef') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
                L::String,
            ),
            (
                "doubling with +",
                "{% set ns = namespace(s='abcdef') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
                L::String,
            ),
            (
                "doubling with *",
                "{% set ns = namespace(s='abcdef') %}{% for i in range(40) %}{% set ns.s = ns.s * 2 %}{% endfor %}",
                L::String,
            ),
            (
                "doubling by macro recursion",
                "{% macro d(s, n) %}{% if n > 0 %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}{{ d('abcdef', 25) }}",
                L::String,
            ),
            (
                "doubling by captures",
                "{% macro d(s, n) %}{% if n > 0 %}{% set c %}{{ s }}{{ s }}{% endset %}{{ d(c, n - 1) }}\
                 {% else %}{{ s|length }}{% endif %}{% endmacro %}{{ d('abcdef', 25) }}",
                L::Output,
            ),
            ("tojson indent", "{{ [1, 2]|tojson(indent=100000000000) }}", L::Width),
            ("tojson indent 2**63", "{{ [1, 2]|tojson(indent=2**63) }}", L::Width),
            ("minijinja indent", "{{ 'a\nb'|indent(100000000000) }}", L::Width),
            ("string repetition", "{{ 'x' * 100000000 }}", L::String),
            (
                "folded constants",
                "{{ 'x' * 99999999 ~ 'x' * 99999999 ~ 'x' * 99999999 }}",
                L::String,
            ),
            ("string repetition at run time", "{{ 'x' * (messages|length * 10**8) }}", L::String),
            ("sequence repetition", "{{ (range(100000) * 100000000)|join }}", L::Items),
            ("batch", "{{ [1]|batch(100000000000, 'x')|list }}", L::Items),
            ("slice", "{{ [1]|slice(100000000000)|list }}", L::Items),
            ("format width", "{{ '%100000000000s'|format('x') }}", L::Width),
            (
                "replace blowup",
                "{% set s = 'x' * 200000 %}{{ s.replace('x', s) }}",
                L::String,
            ),
            (
                "join blowup",
                "{% set s = 'x' * 200000 %}{{ [s, s, s, s, s, s, s, s, s, s]|join }}",
                L::String,
            ),
            (
                "list growth",
                "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = ns.l + [i ~ 'xxxxxxxxxxxxxxxxxxxx'] %}{% endfor %}",
                L::Bytes,
            ),
            (
                "infinite recursion",
                "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
                L::Recursion,
            ),
        ];
        for (name, src, want) in cases {
            let t0 = std::time::Instant::now();
            let r = ChatTemplate::from_source(src, "<s>", "</s>")
                .and_then(|t| t.render(&[ChatMessage::new("user", "hi")], true));
            let e = match r {
                Ok(out) => panic!("{name}: rendered {} bytes", out.len()),
                Err(e) => e,
            };
            let secs = t0.elapsed().as_secs_f64();
            match &e {
                Error::ChatTemplate { limit, what } => {
                    assert_eq!(limit.as_ref(), Some(want), "{name}: {what}");
                }
                e => panic!("{name}: {e:?}"),
            }
            assert!(secs < 2.0, "{name} took {secs:.2} s");
            eprintln!("{name}: {e} ({secs:.3} s)");
        }
    }

    #[test]
    fn reserved_names_and_long_sources_are_refused() {
        let e = ChatTemplate::from_source("{% set __slm_charge = 1 %}{{ 'a' ~ 'b' }}", "", "");
        assert!(
            matches!(&e, Err(Error::ChatTemplate { what, .. }) if what.contains("reserved")),
            "{e:?}"
        );
        let long = "x".repeat(MAX_TEMPLATE_SOURCE + 1);
        assert!(matches!(
            ChatTemplate::from_source(&long, "", ""),
            Err(Error::ChatTemplate {
                limit: Some(TemplateLimit::Source),
                ..
            })
        ));
    }

    #[test]
    fn capped_filters_keep_jinja_semantics() {
        let out = render(
            "{{ 'a\nb\n\nc'|indent(2) }}|{{ 'a\nb'|indent(2, true) }}|{{ 'aXbX'|replace('X', '-') }}|\
             {{ [1, 'b', none]|join(',') }}|{{ 'abc'|join('.') }}|{{ '%s=%03d'|format('x', 7) }}|\
             {{ [1,2,3]|batch(2, 0)|list }}|{{ [1,2,3]|slice(2)|list }}|{{ 'ab' ~ 1 }}|{{ 2 + 3 }}|{{ [1] + [2] }}|\
             {{ 'ab' * 2 }}|{{ 3 * 2 }}|{{ 'x'.join(['a', 'b']) }}|{{ 'aaa'.replace('a', 'b', 2) }}",
            &[],
        )
        .unwrap();
        assert_eq!(
            out,
            "a\n  b\n\n  c|  a\n  b|a-b-|1,b,None|a.b.c|x=007|[[1, 2], [3, 0]]|[[1, 2], [3]]|ab1|5|[1, 2]|abab|6|axb|bba"
        );
    }
}
