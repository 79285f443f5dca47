//! Just enough CSV for a PostgreSQL `COPY ... WITH (FORMAT csv)` dump
//! (RFC 4180): fields separated by commas, quoted with `"` when they hold
//! a comma, a quote or a line break, a quote inside doubled.

/// Records of a CSV text, each with the line it starts on (1-based).
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    line: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            offset: 0,
            line: 1,
        }
    }
}

/// A record: the line it starts on and its fields; or that line and why
/// it cannot be read.
pub(crate) type Record = Result<(usize, Vec<String>), (usize, String)>;

impl Iterator for Reader<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Self::Item> {
        // Blank lines between records are skipped.
        while self.offset < self.bytes.len() && matches!(self.bytes[self.offset], b'\n' | b'\r') {
            if self.bytes[self.offset] == b'\n' {
                self.line += 1;
            }
            self.offset += 1;
        }
        if self.offset >= self.bytes.len() {
            return None;
        }
        let start = self.line;
        let mut fields = Vec::new();
        let mut field = Vec::new();
        let mut quoted = false;
        loop {
            let Some(&b) = self.bytes.get(self.offset) else {
                if quoted {
                    return Some(Err((start, "a quoted field is never closed".into())));
                }
                break;
            };
            self.offset += 1;
            match (quoted, b) {
                (true, b'"') if self.bytes.get(self.offset) == Some(&b'"') => {
                    field.push(b'"');
                    self.offset += 1;
                }
                (true, b'"') => quoted = false,
                (true, b) => {
                    if b == b'\n' {
                        self.line += 1;
                    }
                    field.push(b);
                }
                (false, b'"') if field.is_empty() => quoted = true,
                (false, b',') => fields.push(std::mem::take(&mut field)),
                (false, b'\n') => {
                    self.line += 1;
                    break;
                }
                (false, b'\r') if self.bytes.get(self.offset) == Some(&b'\n') => {}
                (false, b) => field.push(b),
            }
        }
        fields.push(field);
        let fields: Result<Vec<String>, _> = fields.into_iter().map(String::from_utf8).collect();
        Some(
            fields
                .map(|f| (start, f))
                .map_err(|e| (start, format!("not UTF-8: {e}"))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_hold_commas_quotes_and_line_breaks() {
        let text = b"id,payload\n1,\"{\"\"data\"\": \"\"a, b\nc\"\"}\"\r\n\n2,plain\n";
        let records: Vec<_> = Reader::new(text).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            records,
            [
                (1, vec!["id".to_owned(), "payload".to_owned()]),
                (
                    2,
                    vec!["1".to_owned(), "{\"data\": \"a, b\nc\"}".to_owned()]
                ),
                (5, vec!["2".to_owned(), "plain".to_owned()]),
            ]
        );
        let open: Vec<_> = Reader::new(b"a,\"b\n").collect();
        assert_eq!(
            open,
            [Err((1, "a quoted field is never closed".to_owned()))]
        );
    }
}
