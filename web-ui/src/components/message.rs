//! One chat message: user text as text, assistant replies as sanitized Markdown with their
//! time to first token and speeds.

use leptos::prelude::*;

use crate::markdown::to_safe_html;
use crate::protocol::ReplyStats;

#[component]
pub fn MessageView(
    role: String,
    content: String,
    stats: Option<ReplyStats>,
    #[prop(optional)] streaming: bool,
) -> impl IntoView {
    if role == "assistant" {
        let html = to_safe_html(&content);
        let stats = stats.map(|s| {
            format!(
                "TTFT {:.0} ms · prefill {:.1} tok/s · decode {:.1} tok/s · {} tokens ({})",
                s.ttft_ms, s.prefill_tok_s, s.decode_tok_s, s.n_generated, s.stop_reason
            )
        });
        view! {
            <div class="msg assistant" class:streaming=streaming>
                <div class="body" data-testid="assistant-message" inner_html=html></div>
                {stats.map(|s| view! { <div class="stats" data-testid="reply-stats">{s}</div> })}
            </div>
        }
        .into_any()
    } else {
        view! {
            <div class="msg user">
                <div class="body" data-testid="user-message">{content}</div>
            </div>
        }
        .into_any()
    }
}
