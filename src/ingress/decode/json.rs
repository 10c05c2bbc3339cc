//! A JSON parser for ingress payloads, written here rather than taken from serde_json because
//! producers need three things serde_json does not give: Python's `json.dumps` writes bare `NaN`,
//! `Infinity` and `-Infinity` (they become non-finite [`Value::Float`]s, which serialize as
//! `null`); object keys keep the producer's order; and nesting is bounded by [`Limits`] with an
//! explicit stack, so no input can overflow the thread's stack.
//!
//! Lone UTF-16 surrogates (which Python can write as `\ud800`) become U+FFFD rather than failing
//! the whole message. Duplicate keys are kept as sent.

use crate::payload::Value;

use super::{malformed, DecodeError, Limits};

/// An array or object whose items are still being read.
enum Open {
    Array(Vec<Value>),
    Object { fields: Vec<(String, Value)>, key: String },
}

pub(super) fn parse(input: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
    let text = std::str::from_utf8(input).map_err(|e| malformed("JSON", e))?;
    Parser { text, pos: 0 }.document(limits)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn document(&mut self, limits: &Limits) -> Result<Value, DecodeError> {
        let mut open: Vec<Open> = Vec::new();
        loop {
            self.skip_whitespace();
            let mut value = match self.peek() {
                Some(b'[') | Some(b'{') if open.len() >= limits.max_depth => return Err(DecodeError::TooDeep { limit: limits.max_depth }),
                Some(b'[') => {
                    self.pos += 1;
                    if self.eat_after_whitespace(b']') {
                        Value::Array(vec![])
                    } else {
                        open.push(Open::Array(vec![]));
                        continue;
                    }
                }
                Some(b'{') => {
                    self.pos += 1;
                    if self.eat_after_whitespace(b'}') {
                        Value::Object(vec![])
                    } else {
                        let key = self.key()?;
                        open.push(Open::Object { fields: vec![], key });
                        continue;
                    }
                }
                _ => self.scalar()?,
            };
            // Attach the finished value to its container, closing containers as they end.
            loop {
                self.skip_whitespace();
                let Some(container) = open.last_mut() else {
                    return match self.peek() {
                        None => Ok(value),
                        Some(_) => Err(self.error("trailing characters")),
                    };
                };
                let next = self.bump();
                match container {
                    Open::Array(items) => {
                        items.push(value);
                        match next {
                            Some(b',') => break,
                            Some(b']') => value = Value::Array(std::mem::take(items)),
                            _ => return Err(self.error("expected , or ]")),
                        }
                    }
                    Open::Object { fields, key } => {
                        fields.push((std::mem::take(key), value));
                        match next {
                            Some(b',') => {
                                *key = self.key()?;
                                break;
                            }
                            Some(b'}') => value = Value::Object(std::mem::take(fields)),
                            _ => return Err(self.error("expected , or }")),
                        }
                    }
                }
                open.pop();
            }
        }
    }

    fn scalar(&mut self) -> Result<Value, DecodeError> {
        let rest = &self.text[self.pos..];
        for (literal, value) in [
            ("null", Value::Null),
            ("true", Value::Bool(true)),
            ("false", Value::Bool(false)),
            ("NaN", Value::Float(f64::NAN)),
            ("Infinity", Value::Float(f64::INFINITY)),
            ("-Infinity", Value::Float(f64::NEG_INFINITY)),
        ] {
            if rest.starts_with(literal) {
                self.pos += literal.len();
                return Ok(value);
            }
        }
        match self.peek() {
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
            None => Err(self.error("unexpected end")),
        }
    }

    /// An object key and the colon after it.
    fn key(&mut self) -> Result<String, DecodeError> {
        self.skip_whitespace();
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string key"));
        }
        let key = self.string()?;
        if !self.eat_after_whitespace(b':') {
            return Err(self.error("expected :"));
        }
        Ok(key)
    }

    fn number(&mut self) -> Result<Value, DecodeError> {
        let start = self.pos;
        self.eat(b'-');
        match self.bump() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        let mut integer = true;
        if self.eat(b'.') {
            integer = false;
            self.required_digits()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            integer = false;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.required_digits()?;
        }
        let literal = &self.text[start..self.pos];
        if integer {
            if let Ok(i) = literal.parse::<i64>() {
                return Ok(Value::Int(i));
            }
            if let Ok(u) = literal.parse::<u64>() {
                return Ok(Value::UInt(u));
            }
        }
        literal.parse::<f64>().map(Value::Float).map_err(|e| self.error(e))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), DecodeError> {
        let start = self.pos;
        self.digits();
        if self.pos == start {
            return Err(self.error("invalid number"));
        }
        Ok(())
    }

    /// A string literal, starting at its opening quote.
    fn string(&mut self) -> Result<String, DecodeError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.pos += 1;
            }
            // Quotes and backslashes are ASCII, so the run ends on a character boundary.
            out.push_str(&self.text[run_start..self.pos]);
            match self.bump() {
                Some(b'"') => return Ok(out),
                Some(b'\\') => self.escape(&mut out)?,
                Some(_) => return Err(self.error("control character in string")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), DecodeError> {
        let c = match self.bump() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let unit = self.hex4()?;
                let is_high_surrogate = (0xD800..0xDC00).contains(&unit);
                let low = self.text[self.pos..].starts_with("\\u").then(|| self.text.get(self.pos + 2..self.pos + 6));
                match (is_high_surrogate, low.flatten().and_then(|hex| u32::from_str_radix(hex, 16).ok())) {
                    (true, Some(low @ 0xDC00..=0xDFFF)) => {
                        self.pos += 6;
                        char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)).unwrap_or('\u{FFFD}')
                    }
                    _ => char::from_u32(unit).unwrap_or('\u{FFFD}'),
                }
            }
            _ => return Err(self.error("invalid escape")),
        };
        out.push(c);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, DecodeError> {
        let hex = self.text.get(self.pos..self.pos + 4).ok_or_else(|| self.error("short \\u escape"))?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error("invalid \\u escape"));
        }
        self.pos += 4;
        u32::from_str_radix(hex, 16).map_err(|e| self.error(e))
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn eat_after_whitespace(&mut self, byte: u8) -> bool {
        self.skip_whitespace();
        self.eat(byte)
    }

    fn error(&self, detail: impl std::fmt::Display) -> DecodeError {
        malformed("JSON", format_args!("{detail} at byte {}", self.pos))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ingress::decode::test_support::sorted;

    fn parse_default(text: &str) -> Result<Value, DecodeError> {
        parse(text.as_bytes(), &Limits::default())
    }

    #[test]
    fn keeps_key_order_and_reads_python_extensions() {
        let value = parse_default(r#" {"z": NaN, "a": [Infinity, -Infinity, -0.5e1, 18446744073709551615, 1e400]} "#).unwrap();
        assert_eq!(
            format!("{value:?}"),
            "Object([(\"z\", Float(NaN)), (\"a\", Array([Float(inf), Float(-inf), Float(-5.0), UInt(18446744073709551615), Float(inf)]))])"
        );
    }

    #[test]
    fn decodes_escapes_and_surrogates() {
        let value = parse_default(r#""h\u00e9llo \u2603 \ud83d\ude00 \ud800x \"\\\/\b\f\n\r\t""#).unwrap();
        assert_eq!(value, Value::String("héllo ☃ 😀 \u{FFFD}x \"\\/\u{8}\u{c}\n\r\t".into()));
    }

    #[test]
    fn refuses_what_is_not_json() {
        for bad in [
            "",
            "[",
            "[1,]",
            "{\"a\"}",
            "{\"a\":1,}",
            "01",
            "1.",
            "-",
            "\"\n\"",
            "\"\\x\"",
            "\"\\u12\"",
            "nul",
            "[1] 2",
            "{1:2}",
            "\"abc",
            "NaNa",
        ] {
            assert_eq!(parse_default(bad).unwrap_err().reason(), "malformed", "{bad:?}");
        }
        assert_eq!(parse(b"\"\xff\"", &Limits::default()).unwrap_err().reason(), "malformed");
    }

    #[test]
    fn depth_is_bounded_without_recursion() {
        let limits = Limits { max_depth: 3, ..Limits::default() };
        assert!(parse(b"[{\"a\":[]}]", &limits).is_ok());
        assert_eq!(parse(b"[{\"a\":[[]]}]", &limits).unwrap_err().reason(), "too_deep");
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(parse_default(&deep).unwrap_err().reason(), "too_deep");
        let unclosed = "{\"a\":".repeat(100_000);
        assert_eq!(parse_default(&unclosed).unwrap_err().reason(), "too_deep");
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..8)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json(json in json_value(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&json) } else { serde_json::to_string(&json) }.unwrap();
            prop_assert_eq!(sorted(parse_default(&text).unwrap()), sorted(Value::from(json)));
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes, &Limits::default());
        }
    }
}
