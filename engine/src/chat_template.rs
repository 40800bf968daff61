//! Chat templates: renders `tokenizer.chat_template` (Jinja) with `minijinja`, with a built-in
//! fallback for models that carry none (Gemma 3 turn format).

use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}
