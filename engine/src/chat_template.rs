//! Chat templates: renders `tokenizer.chat_template` (Jinja) with `minijinja`, configured like
//! Hugging Face's `apply_chat_template` (`trim_blocks`, `lstrip_blocks`, loop controls,
//! `raise_exception`, `strftime_now`, Python-style `tojson` and string/dict methods), with
//! built-in fallbacks for models that carry none (Gemma turn format, ChatML).

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, State};
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

/// A compiled chat template plus the BOS/EOS text it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
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

fn cterr(e: minijinja::Error) -> Error {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Error::ChatTemplate(msg)
}

impl ChatTemplate {
    /// From `tokenizer.chat_template`; when absent, a built-in template chosen from the
    /// architecture ([`GEMMA_TEMPLATE`] for `gemma*`, else [`CHATML_TEMPLATE`]). BOS/EOS token
    /// text comes from the tokenizer.
    ///
    /// Errors: [`Error::ChatTemplate`] if the template does not compile.
    pub fn from_gguf(gguf: &GgufFile, tokenizer: &Tokenizer) -> Result<Self> {
        let text = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_text(i))
                .unwrap_or("")
                .to_string()
        };
        let bos = text(tokenizer.bos_id());
        let eos = text(tokenizer.eos_id());
        let source = match gguf
            .get("tokenizer.chat_template")
            .and_then(MetaValue::as_str)
        {
            Some(s) if !s.trim().is_empty() => s,
            _ => {
                let arch = gguf.architecture().unwrap_or("");
                if arch.starts_with("gemma") {
                    GEMMA_TEMPLATE
                } else {
                    CHATML_TEMPLATE
                }
            }
        };
        Self::from_source(source, &bos, &eos)
    }

    /// Compile a Jinja chat template rendered with these BOS/EOS texts.
    ///
    /// Errors: [`Error::ChatTemplate`] with minijinja's message if it does not compile.
    pub fn from_source(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.set_unknown_method_callback(py_method);
        env.add_template_owned(NAME, source.to_string())
            .map_err(cterr)?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Render the conversation; `add_generation_prompt` appends the opening of the assistant's
    /// turn.
    ///
    /// Errors: [`Error::ChatTemplate`] (e.g. the template's own `raise_exception`).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template(NAME).map_err(cterr)?;
        tmpl.render(minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(cterr)
    }

    /// The Jinja source in use.
    pub fn source(&self) -> &str {
        &self.source
    }
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
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(usize::try_from(v)?)),
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
                match args.get(2).and_then(Value::as_i64) {
                    Some(n) if n >= 0 => s.replacen(a, b, n as usize).into(),
                    _ => s.replace(a, b).into(),
                }
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
                let parts: Vec<String> = items.try_iter()?.map(|v| v.to_string()).collect();
                parts.join(s).into()
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
            Error::ChatTemplate(m) => assert!(m.contains("roles must alternate"), "{m}"),
            e => panic!("wrong error {e:?}"),
        }
        assert!(matches!(
            ChatTemplate::from_source("{% for %}", "", ""),
            Err(Error::ChatTemplate(_))
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
}
