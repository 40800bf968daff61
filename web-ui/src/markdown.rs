//! Markdown replies rendered to HTML with pulldown-cmark such that a model cannot inject
//! markup: raw HTML becomes text, images become their alt text (no network request), and links
//! keep only `http(s):`/`mailto:` targets. A reasoning model's leading `<think>…</think>` section
//! becomes a collapsed `<details>`; each code block gets a Copy button (handled by the message
//! list with one delegated click listener).

use pulldown_cmark::{html, CowStr, Event, Options, Parser, Tag, TagEnd};

/// A reply's HTML: a leading `<think>` section (still open while `streaming`) as a collapsed
/// `<details>`, the rest as [`to_safe_html`].
pub fn reply_html(text: &str, streaming: bool) -> String {
    let Some(after) = text.trim_start().strip_prefix("<think>") else {
        return to_safe_html(text);
    };
    let (thought, rest, done) = match after.split_once("</think>") {
        Some((t, r)) => (t, r, true),
        None => (after, "", false),
    };
    let label = if done || !streaming {
        "Reasoning"
    } else {
        "Thinking…"
    };
    format!(
        "<details class=\"think\"><summary>{label}</summary><div class=\"think-body\">{}</div></details>{}",
        to_safe_html(thought),
        to_safe_html(rest)
    )
}

/// Opens a code block's wrapper, with its Copy button.
const COPY_CODE_BUTTON: &str = "<div class=\"code-block\"><button type=\"button\" class=\"code-copy\" data-testid=\"code-copy\" title=\"Copy code\">Copy</button>";

/// Safe HTML for `md`.
pub fn to_safe_html(md: &str) -> String {
    let mut in_image = 0usize;
    let events = Parser::new_ext(md, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH)
        .filter_map(|ev| match ev {
            Event::Html(s) | Event::InlineHtml(s) => Some(Event::Text(s)),
            Event::Start(Tag::Image { .. }) => {
                in_image += 1;
                None
            }
            Event::End(TagEnd::Image) => {
                in_image = in_image.saturating_sub(1);
                None
            }
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }) => {
                let ok = ["http://", "https://", "mailto:"]
                    .iter()
                    .any(|p| dest_url.to_ascii_lowercase().starts_with(p));
                Some(Event::Start(Tag::Link {
                    link_type,
                    dest_url: if ok { dest_url } else { CowStr::from("") },
                    title,
                    id,
                }))
            }
            other => Some(other),
        })
        // The model's own HTML is text by now: the only markup added here is ours.
        .flat_map(|ev| match ev {
            Event::Start(Tag::CodeBlock(kind)) => vec![
                Event::Html(CowStr::from(COPY_CODE_BUTTON)),
                Event::Start(Tag::CodeBlock(kind)),
            ],
            e @ Event::End(TagEnd::CodeBlock) => vec![e, Event::Html(CowStr::from("</div>"))],
            other => vec![other],
        });
    let mut out = String::new();
    html::push_html(&mut out, events);
    out
}

#[cfg(test)]
mod tests {
    use super::{reply_html, to_safe_html};

    #[test]
    fn code_blocks_get_a_copy_button() {
        let h = to_safe_html("x\n\n```rust\nfn main() {}\n```\n");
        assert!(
            h.contains("<div class=\"code-block\"><button type=\"button\" class=\"code-copy\""),
            "{h}"
        );
        assert!(
            h.contains("<code class=\"language-rust\">fn main() {}\n</code></pre>\n</div>"),
            "{h}"
        );
    }

    #[test]
    fn think_section_is_collapsed() {
        let h = reply_html("<think>step <b>1</b></think>\n\nThe **answer**.", false);
        assert!(
            h.starts_with("<details class=\"think\"><summary>Reasoning</summary>"),
            "{h}"
        );
        assert!(h.contains("&lt;b&gt;"), "{h}");
        assert!(h.contains("<strong>answer</strong>"), "{h}");
        assert!(reply_html("<think>still going", true).contains("Thinking…"));
        assert_eq!(reply_html("plain", false), to_safe_html("plain"));
    }

    #[test]
    fn raw_html_is_escaped() {
        let h = to_safe_html("hi <img src=x onerror=alert(1)> **b**");
        assert!(!h.contains("<img"), "{h}");
        assert!(h.contains("&lt;img"), "{h}");
        assert!(h.contains("<strong>b</strong>"));
        let h = to_safe_html(
            "<script>alert(1)</script>\n\n[x](javascript:alert(1)) ![a](http://e/x.png)",
        );
        assert!(!h.contains("<script"), "{h}");
        assert!(!h.contains("javascript:"), "{h}");
        assert!(!h.contains("<img"), "{h}");
    }
}
