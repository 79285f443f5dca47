//! Query strings, read one way on every route (REST, `/mcp`, `/sse`,
//! `/messages`): names and values must be UTF-8 once percent-decoded (`%FF`
//! is refused, not read as U+FFFD), and a parameter the route does not take
//! is refused by name, never ignored. Each route says the refusal in its
//! own form (problem+json, a JSON-RPC error); the text comes from here.

use axum::http::Uri;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The query of a route that takes no parameters: any is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// Reads `uri`'s query as `T`, or says why it does not fit.
pub fn read<T: DeserializeOwned>(uri: &Uri) -> Result<T, String> {
    utf8(uri.query().unwrap_or_default())?;
    fields(uri)
}

/// Refuses a query string whose names or values are not UTF-8 once decoded.
pub fn utf8(raw: &str) -> Result<(), String> {
    let decodes = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .is_ok()
    };
    for pair in raw.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !decodes(name) {
            return Err(
                "a query parameter's name is not UTF-8 once percent-decoded; \
                 encode text as UTF-8 (é is %C3%A9)"
                    .to_owned(),
            );
        }
        if !decodes(value) {
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            return Err(format!(
                "query parameter `{name}` is not UTF-8 once percent-decoded; \
                 encode text as UTF-8 (é is %C3%A9)"
            ));
        }
    }
    Ok(())
}

/// Reads the (UTF-8) query as `T`, whose fields are the parameters the
/// route takes (`deny_unknown_fields`).
pub fn fields<T: DeserializeOwned>(uri: &Uri) -> Result<T, String> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| {
            // axum's wording, less its prefix; serde's "there are no fields"
            // said as what it means here.
            let text = e.body_text();
            text.strip_prefix("Failed to deserialize query string: ")
                .unwrap_or(&text)
                .replace(
                    ", there are no fields",
                    " (this route takes no query parameters)",
                )
        })
}

/// The value of `name` when the query holds it exactly once, decoded; for
/// answering a refused request where it can still be answered.
pub fn lone(uri: &Uri, name: &str) -> Option<String> {
    let mut found = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(n, _)| {
            percent_encoding::percent_decode_str(n).decode_utf8().ok() == Some(name.into())
        })
        .map(|(_, value)| percent_encoding::percent_decode_str(value).decode_utf8());
    match (found.next(), found.next()) {
        (Some(Ok(value)), None) => Some(value.into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Target {
        #[serde(rename = "sessionId")]
        session_id: String,
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn unknown_and_undecodable_parameters_are_refused_by_name() {
        assert!(read::<NoQuery>(&uri("/mcp")).is_ok());
        assert!(read::<NoQuery>(&uri("/mcp?")).is_ok());
        let e = read::<NoQuery>(&uri("/mcp?colour=red")).unwrap_err();
        assert!(
            e.contains("`colour`") && e.contains("this route takes no query parameters"),
            "{e}"
        );
        let e = read::<NoQuery>(&uri("/mcp?a=%FF")).unwrap_err();
        assert!(e.contains("`a`") && e.contains("not UTF-8"), "{e}");
        assert!(read::<NoQuery>(&uri("/mcp?%FF")).is_err());

        let t = read::<Target>(&uri("/messages?sessionId=ab%2Dc")).unwrap();
        assert_eq!(t.session_id, "ab-c");
        for bad in [
            "/messages",
            "/messages?sessionId=a&x=1",
            "/messages?sessionId=a&sessionId=b",
            "/messages?sessionId=%FF",
        ] {
            assert!(read::<Target>(&uri(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_lone_parameter_is_found_among_others() {
        assert_eq!(
            lone(&uri("/m?sessionId=a&x=1"), "sessionId").as_deref(),
            Some("a")
        );
        assert_eq!(
            lone(&uri("/m?x=%FF&sessionId=a"), "sessionId").as_deref(),
            Some("a")
        );
        assert_eq!(lone(&uri("/m?sessionId=a&sessionId=b"), "sessionId"), None);
        assert_eq!(lone(&uri("/m?sessionId=%FF"), "sessionId"), None);
        assert_eq!(lone(&uri("/m"), "sessionId"), None);
    }
}
