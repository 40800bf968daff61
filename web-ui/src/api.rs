//! The host-page API's messages (`public/embed.js` ⇄ `embed.html`): what a host page may ask the
//! widget's frame, parsed and checked here before anything acts on it, and the typed errors it
//! gets back. Every message is untrusted input from another site: one JSON string of at most
//! [`MAX_MESSAGE_BYTES`], an object with `slm: 1`, a request `id` (1 ..= 2^53 − 1) and a `type`;
//! each type's fields are exactly those listed (unknown fields are refused), and sizes and values
//! are bounded. Nothing a host sends is evaluated or rendered as markup.
//!
//! Host → frame (`type`): `hello` (the frame checks the sender's origin), `connect` {model,
//! backend?}, `models.list`, `chat` {messages, temperature?, top_p?, max_tokens?, seed?,
//! stream?}, `abort` {target} (no answer of its own: the target request ends with `aborted`).
//! Frame → host: `ready` (unsolicited, once the frame listens), then per request `progress`
//! {loaded, total, phase} or `chunk` {text}, ending with one `result` {result} or `error`
//! {error: {code, message}}.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::protocol::{GenSettings, Turn};

/// Largest message accepted (bytes of its JSON text), checked before parsing.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024;
/// Messages in one chat request.
pub const MAX_MESSAGES: usize = 256;
/// Bytes of one message's content.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// Bytes of all messages' content together.
pub const MAX_TOTAL_CONTENT_BYTES: usize = 256 * 1024;
/// Largest `max_tokens`.
pub const MAX_MAX_TOKENS: usize = 4096;
/// Requests one frame answers at a time (the rest are refused with `busy`).
pub const MAX_IN_FLIGHT: usize = 32;
/// Bytes of a model id.
pub const MAX_MODEL_ID: usize = 128;
/// Largest request id (JavaScript's largest exact integer).
pub const MAX_ID: u64 = (1 << 53) - 1;

/// A typed error for the host: `code` (stable, machine-readable) and a plain message.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new("bad_request", message)
    }
}

/// One chat message as the host sends it (OpenAI's shape, text content only).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiMessage {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub messages: Vec<ApiMessage>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectBody {
    model: String,
    #[serde(default)]
    backend: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortBody {
    target: u64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// A checked request from a host page.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Hello,
    /// Make `model` ready: download it into this browser if needed, then load it.
    Connect {
        model: String,
        backend: String,
    },
    ModelsList,
    Chat(ChatRequest),
    Abort {
        target: u64,
    },
}

/// Parse one message from a host page: `Ok((id, request))`, or the error to answer with the
/// request's id when one could be read (else 0).
pub fn parse(text: &str) -> Result<(u64, Request), (u64, ApiError)> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err((
            0,
            ApiError::bad(format!(
                "message of {} bytes; at most {MAX_MESSAGE_BYTES} are accepted",
                text.len()
            )),
        ));
    }
    let v: Value =
        serde_json::from_str(text).map_err(|e| (0, ApiError::bad(format!("not JSON: {e}"))))?;
    let Value::Object(mut obj) = v else {
        return Err((0, ApiError::bad("a message is a JSON object")));
    };
    let id = obj
        .remove("id")
        .and_then(|v| v.as_u64())
        .filter(|&i| (1..=MAX_ID).contains(&i))
        .ok_or_else(|| {
            (
                0,
                ApiError::bad("`id` must be an integer from 1 to 2^53 - 1"),
            )
        })?;
    let e = |m: String| (id, ApiError::bad(m));
    if obj.remove("slm").and_then(|v| v.as_u64()) != Some(1) {
        return Err(e("`slm` must be 1 (protocol version)".into()));
    }
    let ty = match obj.remove("type") {
        Some(Value::String(s)) => s,
        _ => return Err(e("`type` must be a string".into())),
    };
    let body = Value::Object(obj);
    fn fields<T: serde::de::DeserializeOwned>(ty: &str, body: Value) -> Result<T, String> {
        serde_json::from_value(body).map_err(|err| format!("`{ty}`: {err}"))
    }
    let req = match ty.as_str() {
        "hello" => fields::<Empty>(&ty, body).map(|_| Request::Hello),
        "models.list" => fields::<Empty>(&ty, body).map(|_| Request::ModelsList),
        "connect" => fields::<ConnectBody>(&ty, body).and_then(|b| {
            check_model_id(&b.model)?;
            let backend = b.backend.unwrap_or_else(|| "auto".into());
            if !["auto", "cpu", "gpu"].contains(&backend.as_str()) {
                return Err("`backend` is one of auto, cpu, gpu".into());
            }
            Ok(Request::Connect {
                model: b.model,
                backend,
            })
        }),
        "chat" => fields::<ChatRequest>(&ty, body).and_then(|c| {
            check_chat(&c)?;
            Ok(Request::Chat(c))
        }),
        "abort" => fields::<AbortBody>(&ty, body).map(|b| Request::Abort { target: b.target }),
        other => Err(format!(
            "unknown type `{}`",
            other.chars().take(40).collect::<String>()
        )),
    };
    req.map(|r| (id, r)).map_err(e)
}

/// A model id: 1 to [`MAX_MODEL_ID`] bytes of letters, digits and `. _ - :`.
pub fn check_model_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_MODEL_ID {
        return Err(format!("`model` must be 1 to {MAX_MODEL_ID} characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
    {
        return Err("`model` may hold only letters, digits and . _ - :".into());
    }
    Ok(())
}

fn check_chat(c: &ChatRequest) -> Result<(), String> {
    if c.messages.is_empty() || c.messages.len() > MAX_MESSAGES {
        return Err(format!("`messages` must hold 1 to {MAX_MESSAGES} messages"));
    }
    let mut total = 0usize;
    for (i, m) in c.messages.iter().enumerate() {
        if !["system", "user", "assistant"].contains(&m.role.as_str()) {
            return Err(format!(
                "messages[{i}].role must be system, user or assistant"
            ));
        }
        if m.content.len() > MAX_CONTENT_BYTES {
            return Err(format!(
                "messages[{i}].content is longer than {MAX_CONTENT_BYTES} bytes"
            ));
        }
        total += m.content.len();
    }
    if total > MAX_TOTAL_CONTENT_BYTES {
        return Err(format!(
            "the messages hold more than {MAX_TOTAL_CONTENT_BYTES} bytes"
        ));
    }
    if let Some(t) = c.temperature {
        if !(t.is_finite() && (0.0..=2.0).contains(&t)) {
            return Err("`temperature` must be from 0 to 2".into());
        }
    }
    if let Some(p) = c.top_p {
        if !(p.is_finite() && p > 0.0 && p <= 1.0) {
            return Err("`top_p` must be above 0 and at most 1".into());
        }
    }
    if let Some(n) = c.max_tokens {
        if n == 0 || n > MAX_MAX_TOKENS {
            return Err(format!("`max_tokens` must be from 1 to {MAX_MAX_TOKENS}"));
        }
    }
    Ok(())
}

impl ChatRequest {
    /// The engine's turns and settings for this request (defaults: temperature 0.7, top_p 0.95,
    /// 256 tokens).
    pub fn to_engine(&self) -> (Vec<Turn>, GenSettings) {
        let d = GenSettings::default();
        let turns = self
            .messages
            .iter()
            .map(|m| Turn {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect();
        let s = GenSettings {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            max_tokens: self.max_tokens.unwrap_or(d.max_tokens),
            seed: self.seed.unwrap_or(d.seed),
            ..d
        };
        (turns, s)
    }
}

/// OpenAI's `finish_reason` for the engine's stop reason; a cancelled reply is `aborted`.
pub fn finish_reason(stop_reason: &str) -> Result<&'static str, ApiError> {
    match stop_reason {
        "max_tokens" => Ok("length"),
        "cancelled" => Err(ApiError::new("aborted", "the request was aborted")),
        _ => Ok("stop"),
    }
}

/// The API error code for a failed worker request of `kind` (see `FromWorker::Error`).
pub fn worker_error_code(kind: &str) -> &'static str {
    match kind {
        "context_full" => "context_full",
        "gpu_lost" => "gpu_lost",
        "aborted" => "aborted",
        "template" | "load" => "load_failed",
        _ => "generation_failed",
    }
}

/// The id a message names, read leniently (to address an error about it), else 0.
pub fn lenient_id(text: &str) -> u64 {
    if text.len() > MAX_MESSAGE_BYTES {
        return 0;
    }
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("id")?.as_u64())
        .filter(|&i| i <= MAX_ID)
        .unwrap_or(0)
}

fn envelope(id: u64, ty: &str, mut fields: Map<String, Value>) -> String {
    fields.insert("slm".into(), json!(1));
    fields.insert("id".into(), json!(id));
    fields.insert("type".into(), json!(ty));
    Value::Object(fields).to_string()
}

/// Frame → host: the final answer of request `id`.
pub fn result_msg(id: u64, result: Value) -> String {
    let mut m = Map::new();
    m.insert("result".into(), result);
    envelope(id, "result", m)
}

/// Frame → host: request `id` failed.
pub fn error_msg(id: u64, e: &ApiError) -> String {
    let mut m = Map::new();
    m.insert(
        "error".into(),
        json!({ "code": e.code, "message": e.message }),
    );
    envelope(id, "error", m)
}

/// Frame → host: streamed text of request `id`.
pub fn chunk_msg(id: u64, text: &str) -> String {
    let mut m = Map::new();
    m.insert("text".into(), json!(text));
    envelope(id, "chunk", m)
}

/// Frame → host: progress of `connect` request `id`.
pub fn progress_msg(id: u64, phase: &str, loaded: f64, total: f64) -> String {
    let mut m = Map::new();
    m.insert("phase".into(), json!(phase));
    m.insert("loaded".into(), json!(loaded));
    m.insert("total".into(), json!(total));
    envelope(id, "progress", m)
}

/// Frame → host, unsolicited: the frame listens.
pub fn ready_msg() -> String {
    envelope(0, "ready", Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> (u64, &'static str) {
        let (id, e) = parse(text).unwrap_err();
        (id, e.code)
    }

    #[test]
    fn parses_each_request() {
        assert_eq!(
            parse(r#"{"slm":1,"id":1,"type":"hello"}"#).unwrap(),
            (1, Request::Hello)
        );
        assert_eq!(
            parse(r#"{"slm":1,"id":2,"type":"connect","model":"smollm2-135m-instruct-q4_1"}"#)
                .unwrap(),
            (
                2,
                Request::Connect {
                    model: "smollm2-135m-instruct-q4_1".into(),
                    backend: "auto".into()
                }
            )
        );
        assert_eq!(
            parse(r#"{"slm":1,"id":3,"type":"models.list"}"#).unwrap(),
            (3, Request::ModelsList)
        );
        assert_eq!(
            parse(r#"{"slm":1,"id":4,"type":"abort","target":3}"#).unwrap(),
            (4, Request::Abort { target: 3 })
        );
        let (id, r) = parse(
            r#"{"slm":1,"id":5,"type":"chat","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":8,"stream":true}"#,
        )
        .unwrap();
        assert_eq!(id, 5);
        let Request::Chat(c) = r else { panic!() };
        let (turns, s) = c.to_engine();
        assert_eq!(turns.len(), 1);
        assert_eq!((s.temperature, s.max_tokens), (0.0, 8));
        assert!(c.stream);
    }

    #[test]
    fn refuses_malformed_messages_with_a_typed_error() {
        assert_eq!(code("not json"), (0, "bad_request"));
        assert_eq!(code("[1,2]"), (0, "bad_request"));
        assert_eq!(code(r#"{"slm":1,"type":"hello"}"#), (0, "bad_request"));
        assert_eq!(
            code(r#"{"slm":1,"id":0,"type":"hello"}"#),
            (0, "bad_request")
        );
        assert_eq!(
            code(r#"{"slm":1,"id":1.5,"type":"hello"}"#),
            (0, "bad_request")
        );
        assert_eq!(
            code(r#"{"slm":2,"id":7,"type":"hello"}"#),
            (7, "bad_request")
        );
        assert_eq!(
            code(r#"{"slm":1,"id":7,"type":"eval"}"#),
            (7, "bad_request")
        );
        assert_eq!(
            code(r#"{"slm":1,"id":7,"type":"hello","extra":1}"#),
            (7, "bad_request")
        );
        assert_eq!(
            code(r#"{"slm":1,"id":7,"type":"connect","model":"../x"}"#),
            (7, "bad_request")
        );
        assert_eq!(
            code(r#"{"slm":1,"id":7,"type":"connect","model":"a","backend":"tpu"}"#),
            (7, "bad_request")
        );
        let chat = |extra: &str| format!(r#"{{"slm":1,"id":9,"type":"chat",{extra}}}"#);
        assert_eq!(code(&chat(r#""messages":[]"#)), (9, "bad_request"));
        assert_eq!(
            code(&chat(r#""messages":[{"role":"tool","content":"x"}]"#)),
            (9, "bad_request")
        );
        assert_eq!(
            code(&chat(r#""messages":[{"role":"user","content":1}]"#)),
            (9, "bad_request")
        );
        assert_eq!(
            code(&chat(
                r#""messages":[{"role":"user","content":"x"}],"temperature":3"#
            )),
            (9, "bad_request")
        );
        assert_eq!(
            code(&chat(
                r#""messages":[{"role":"user","content":"x"}],"max_tokens":0"#
            )),
            (9, "bad_request")
        );
        assert_eq!(
            code(&chat(
                r#""messages":[{"role":"user","content":"x"}],"top_p":0"#
            )),
            (9, "bad_request")
        );
        let long = "a".repeat(MAX_CONTENT_BYTES + 1);
        assert_eq!(
            code(&chat(&format!(
                r#""messages":[{{"role":"user","content":"{long}"}}]"#
            ))),
            (9, "bad_request")
        );
        let huge = format!(
            r#"{{"slm":1,"id":1,"type":"hello","pad":"{}"}}"#,
            "a".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(code(&huge), (0, "bad_request"));
        assert_eq!(lenient_id(r#"{"id":12,"type":"x"}"#), 12);
        assert_eq!(lenient_id("nope"), 0);
    }

    #[test]
    fn finish_reasons_and_error_codes() {
        assert_eq!(finish_reason("max_tokens"), Ok("length"));
        assert_eq!(finish_reason("eog"), Ok("stop"));
        assert_eq!(finish_reason("stop_string"), Ok("stop"));
        assert_eq!(finish_reason("cancelled").unwrap_err().code, "aborted");
        assert_eq!(worker_error_code("context_full"), "context_full");
        assert_eq!(worker_error_code("aborted"), "aborted");
        assert_eq!(worker_error_code("whatever"), "generation_failed");
        let m: Value = serde_json::from_str(&error_msg(3, &ApiError::new("busy", "x"))).unwrap();
        assert_eq!(m["error"]["code"], "busy");
        assert_eq!(m["id"], 3);
    }
}
