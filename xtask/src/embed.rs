//! The widget's allowed host origins on the server side: read from `embed.json`
//! (`{"allowed_origins": [...]}`) and `--embed-origins`, each checked (they go into a header),
//! served back as `/embed.json` and as the CSP `frame-ancestors` of `embed.html`.

use crate::Result;

/// Headers of the files host pages load across origins (`embed.js`, `embed.json`).
pub const PUBLIC: [(&str, &str); 2] = [
    ("Cross-Origin-Resource-Policy", "cross-origin"),
    ("Access-Control-Allow-Origin", "*"),
];

/// `scheme://host[:port]` (http or https, no path, no IPv6 literal), or `*`; a trailing `/` is
/// dropped.
pub fn check_origin(o: &str) -> Result<String> {
    let o = o.trim().trim_end_matches('/');
    if o == "*" {
        return Ok(o.into());
    }
    let bad = || format!("`{o}` is not an origin (https://host or http://host:port, no path)");
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or_else(bad)?;
    // No IPv6 literals: a host name or IPv4 address, then an optional port.
    let (host, port) = match rest.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    if host_ok && port_ok {
        Ok(o.to_string())
    } else {
        Err(bad())
    }
}

/// The origins listed in `embed.json`'s text (an empty file or none: no other origin).
pub fn origins_from_json(text: &str) -> Result<Vec<String>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("embed.json: {e}"))?;
    let list = v
        .get("allowed_origins")
        .and_then(|l| l.as_array())
        .ok_or("embed.json: `allowed_origins` must be a list of origins")?;
    list.iter()
        .map(|o| {
            o.as_str()
                .ok_or_else(|| "embed.json: every origin is a string".to_string())
                .and_then(check_origin)
        })
        .collect()
}

/// What `/embed.json` serves.
pub fn embed_json(origins: &[String]) -> String {
    serde_json::json!({ "allowed_origins": origins }).to_string()
}

/// `embed.html`'s CSP: the app's, with `frame-ancestors` limited to the app and `origins`.
pub fn frame_csp(csp: &str, origins: &[String]) -> String {
    let ancestors = if origins.iter().any(|o| o == "*") {
        "*".to_string()
    } else {
        std::iter::once("'self'")
            .chain(origins.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    };
    csp.replace(
        "frame-ancestors 'none'",
        &format!("frame-ancestors {ancestors}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        assert_eq!(
            check_origin("http://localhost:8105/").unwrap(),
            "http://localhost:8105"
        );
        assert_eq!(
            check_origin("https://wiki.example.com").unwrap(),
            "https://wiki.example.com"
        );
        assert_eq!(check_origin("*").unwrap(), "*");
        for bad in [
            "wiki.example.com",
            "ftp://x",
            "https://x/path",
            "https://x; script-src *",
            "https://x:99999",
            "https://x:",
            "https://",
            "http://a b",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
        assert_eq!(
            origins_from_json(r#"{"allowed_origins":["https://a.example"]}"#).unwrap(),
            vec!["https://a.example".to_string()]
        );
        assert!(origins_from_json(r#"{"allowed_origins":["https://a.example/x"]}"#).is_err());
        assert!(origins_from_json("").unwrap().is_empty());
        let csp = frame_csp(
            "default-src 'self'; frame-ancestors 'none'",
            &["https://a".into()],
        );
        assert_eq!(csp, "default-src 'self'; frame-ancestors 'self' https://a");
    }
}
