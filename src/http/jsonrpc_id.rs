//! The id of a JSON-RPC request, read from its bytes as they arrive, in
//! constant memory: so that a post refused before it is parsed (too large,
//! over the rate limit, not JSON) can still be answered with its id on the
//! legacy SSE stream. Clients put `id` anywhere in the object, often after
//! a large `params`, so the whole body passes through, chunk by chunk; only
//! the top level's keys and the id's value (each a few bytes) are kept.

use rmcp::model::RequestId;

/// Longest id value kept (as JSON text); longer ids are not read.
const MAX_ID: usize = 128;
/// Longest key kept; only `id` and `method` matter.
const MAX_KEY: usize = 8;

/// A scan of one JSON object, fed in chunks.
#[derive(Default)]
pub struct RequestIdScan {
    started: bool,
    /// Not a JSON object: nothing to find.
    broken: bool,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// At the top level, the next string is a key.
    expect_key: bool,
    reading_key: bool,
    key: Vec<u8>,
    /// The id's value while it is being read.
    reading_id: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
    has_method: bool,
}

impl RequestIdScan {
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.broken {
                return;
            }
            if !self.started {
                match b {
                    b'{' => {
                        self.started = true;
                        self.depth = 1;
                        self.expect_key = true;
                    }
                    b if b.is_ascii_whitespace() => {}
                    _ => self.broken = true,
                }
                continue;
            }
            if self.depth == 0 {
                // Past the object.
                continue;
            }
            self.id_byte(b);
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    self.reading_key = false;
                    continue;
                }
                if self.reading_key && self.key.len() <= MAX_KEY {
                    self.key.push(b);
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.expect_key {
                        self.reading_key = true;
                        self.key.clear();
                    }
                }
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => self.depth -= 1,
                b':' if self.depth == 1 => {
                    self.expect_key = false;
                    match self.key.as_slice() {
                        b"id" if self.id.is_none() => self.reading_id = Some(Vec::new()),
                        b"method" => self.has_method = true,
                        _ => {}
                    }
                }
                b',' if self.depth == 1 => self.expect_key = true,
                _ => {}
            }
        }
    }

    /// Collects the id's value up to the `,` or `}` that ends it.
    fn id_byte(&mut self, b: u8) {
        let Some(value) = &mut self.reading_id else {
            return;
        };
        if !self.in_string && self.depth == 1 && (b == b',' || b == b'}') {
            self.id = self.reading_id.take();
        } else if value.len() < MAX_ID {
            value.push(b);
        } else {
            self.reading_id = None;
        }
    }

    /// Nothing more to learn from the rest of the bytes.
    pub fn done(&self) -> bool {
        self.broken || (self.id.is_some() && self.has_method)
    }

    /// The id, when the bytes seen so far are a request (a `method` and an
    /// `id` that is a number or a string).
    pub fn request_id(&self) -> Option<RequestId> {
        if !self.has_method {
            return None;
        }
        serde_json::from_slice(self.id.as_deref()?.trim_ascii()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::NumberOrString;

    fn scan_in_chunks(text: &str, size: usize) -> Option<RequestId> {
        let mut scan = RequestIdScan::default();
        for chunk in text.as_bytes().chunks(size) {
            scan.feed(chunk);
        }
        scan.request_id()
    }

    #[test]
    fn finds_the_id_wherever_it_is_and_however_the_bytes_arrive() {
        let big = "x\\\"}{,".repeat(10_000);
        let cases = [
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#.to_owned(),
                NumberOrString::Number(7),
            ),
            (
                format!(
                    r#"{{"method":"tools/call","params":{{"text":"{big}","id":[1,{{"id":2}}]}},"jsonrpc":"2.0","id":"abc"}}"#
                ),
                NumberOrString::String("abc".into()),
            ),
            (
                r#" { "id" : 42 , "method" : "ping" "#.to_owned(),
                NumberOrString::Number(42),
            ),
            (
                r#"{"method":"x","id":"a\"b","params":{"#.to_owned(),
                NumberOrString::String("a\"b".into()),
            ),
        ];
        for (text, id) in cases {
            for size in [1, 3, 7, 4096] {
                assert_eq!(
                    scan_in_chunks(&text, size),
                    Some(id.clone()),
                    "{size}: {}",
                    &text[..text.len().min(80)]
                );
            }
        }
    }

    #[test]
    fn no_id_for_notifications_responses_cut_ids_or_non_objects() {
        for text in [
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
            r#"{"method":"tools/call","params":{"id":5}}"#,
            r#"{"method":"tools/call","id":12"#,
            r#"{"method":"tools/call","id":{"nested":1}}"#,
            r#"[{"method":"tools/call","id":1}]"#,
            "not json",
        ] {
            assert_eq!(scan_in_chunks(text, 2), None, "{text}");
        }
    }

    #[test]
    fn keeps_only_a_bounded_id() {
        let long = "9".repeat(10 * MAX_ID);
        let text = format!(r#"{{"method":"x","id":"{long}"}}"#);
        let mut scan = RequestIdScan::default();
        scan.feed(text.as_bytes());
        assert_eq!(scan.request_id(), None);
        assert!(scan.key.capacity() < 64);
    }
}
