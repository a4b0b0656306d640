//! QMP's wire format: a JSON stream in (objects back to back, with or without whitespace between
//! them), one JSON object per line out (CRLF), in QEMU's spacing (`{"return": {}}`).
//!
//! Input is parsed with serde_json's streaming deserializer: a value cut off by the end of the
//! buffered input (an EOF error) waits for more bytes. A syntax error is answered once per
//! malformed top-level value, as QEMU's json-streamer does: the parser skips the rest of that value
//! by counting brackets outside strings, then goes on with the next one. Unparsed input is bounded
//! ([`MAX_INPUT`]): a value that outgrows the bound gets one error and is skipped the same way.

use serde_json::Value;

/// The most bytes of one incomplete top-level value the monitor buffers (QEMU's limit is 64 MiB
/// per token sequence; a monitor of aioctx's examples has no use for requests that large).
pub const MAX_INPUT: usize = 1 << 20;

/// One unit of parsed input: a JSON value, or the description of an error QEMU would report.
#[derive(Debug, PartialEq)]
pub(crate) enum Input {
    Value(Value),
    Error(String),
}

/// The incremental parser of one connection's input.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    /// Bytes of an incomplete value (never more than `MAX_INPUT` between calls).
    buf: Vec<u8>,
    /// Skipping the rest of a malformed or oversized value.
    skip: Option<Skip>,
}

impl Parser {
    /// Parses `data` appended to what is buffered; pushes every complete value or error to `out`.
    pub(crate) fn feed(&mut self, data: &[u8], out: &mut Vec<Input>) {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        loop {
            if let Some(skip) = &mut self.skip {
                let (used, done) = skip.advance(&self.buf[pos..]);
                pos += used;
                if !done {
                    break;
                }
                self.skip = None;
            }
            let rest = &self.buf[pos..];
            let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<Value>();
            match stream.next() {
                None => {
                    pos = self.buf.len();
                    break;
                }
                Some(Ok(value)) => {
                    let end = stream.byte_offset();
                    // A number that ends where the input ends may go on in the next read.
                    if value.is_number() && end == rest.len() {
                        break;
                    }
                    pos += end;
                    out.push(Input::Value(value));
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    out.push(Input::Error(format!("JSON parse error, {}", describe(&e))));
                    self.skip = Some(Skip::default());
                }
            }
        }
        self.buf.drain(..pos);
        if self.skip.is_none() && self.buf.len() > MAX_INPUT {
            out.push(Input::Error("JSON token size limit exceeded".into()));
            let mut skip = Skip::default();
            let (used, done) = skip.advance(&self.buf);
            self.buf.drain(..used);
            if !done {
                self.skip = Some(skip);
            } else {
                // The value ended within the buffer after all: parse what follows it.
                let rest = std::mem::take(&mut self.buf);
                self.feed(&rest, out);
            }
        }
    }

    /// Bytes buffered for an incomplete value.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// serde_json's message without its position (QEMU's messages name none).
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Where a malformed top-level value ends: brackets counted outside strings, a scalar ended by a
/// delimiter.
#[derive(Debug, Default)]
struct Skip {
    started: bool,
    depth: usize,
    in_string: bool,
    escaped: bool,
    scalar: bool,
}

impl Skip {
    /// Consumes bytes of the value; returns how many and whether the value ended.
    fn advance(&mut self, bytes: &[u8]) -> (usize, bool) {
        for (i, &b) in bytes.iter().enumerate() {
            if !self.started {
                if b.is_ascii_whitespace() {
                    continue;
                }
                self.started = true;
                match b {
                    b'{' | b'[' => self.depth = 1,
                    b'"' => self.in_string = true,
                    b'}' | b']' => return (i + 1, true),
                    _ => self.scalar = true,
                }
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.depth == 0 {
                        return (i + 1, true);
                    }
                }
                continue;
            }
            if self.scalar {
                if b.is_ascii_whitespace() || b"{}[]\",".contains(&b) {
                    return (i, true);
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return (i + 1, true);
                    }
                }
                _ => {}
            }
        }
        (bytes.len(), false)
    }
}

/// One line of output: `value` as QEMU prints it (compact, with `", "` and `": "` between
/// members), then CRLF.
pub(crate) fn line(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, value);
    out.extend_from_slice(b"\r\n");
    out
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, member)) in map.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_value(out, &Value::String(key.clone()));
                out.extend_from_slice(b": ");
                write_value(out, member);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        // Scalars print as serde_json prints them; writing into a Vec cannot fail.
        scalar => {
            if serde_json::to_writer(&mut *out, scalar).is_err() {
                out.extend_from_slice(b"null");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_chunks(chunks: &[&[u8]]) -> (Vec<Input>, Parser) {
        let mut p = Parser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        (out, p)
    }

    #[test]
    fn objects_back_to_back_and_split_anywhere() {
        let input = br#"{"execute":"a"}{"execute":"b","id":1} {"execute":"c"}"#;
        for cut in 0..input.len() {
            let (out, p) = parse_chunks(&[&input[..cut], &input[cut..]]);
            assert_eq!(
                out,
                vec![
                    Input::Value(json!({"execute": "a"})),
                    Input::Value(json!({"execute": "b", "id": 1})),
                    Input::Value(json!({"execute": "c"})),
                ],
                "cut at {cut}"
            );
            assert_eq!(p.buffered(), 0);
        }
    }

    #[test]
    fn a_number_waits_for_its_delimiter() {
        let (out, _) = parse_chunks(&[b"4", b"2", b"\n"]);
        assert_eq!(out, vec![Input::Value(json!(42))]);
    }

    #[test]
    fn one_error_per_malformed_value_then_parsing_goes_on() {
        let (out, p) = parse_chunks(&[
            br#"{"execute" "x"}{"a":tru}}"#,
            b"\xff ",
            br#"{"execute":"ok"}"#,
        ]);
        assert_eq!(out.len(), 5, "{out:?}");
        for e in &out[..4] {
            assert!(
                matches!(e, Input::Error(d) if d.starts_with("JSON parse error, ")),
                "{e:?}"
            );
        }
        assert_eq!(out[4], Input::Value(json!({"execute": "ok"})));
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn strings_with_brackets_do_not_confuse_the_skipper() {
        let (out, _) = parse_chunks(&[br#"{"a": "}{\"", x}{"execute":"ok"}"#]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1], Input::Value(json!({"execute": "ok"})));
    }

    #[test]
    fn an_oversized_value_is_refused_once_and_skipped_with_bounded_memory() {
        let mut p = Parser::default();
        let mut out = Vec::new();
        p.feed(br#"{"execute":"x","id":""#, &mut out);
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..(3 * MAX_INPUT / chunk.len()) {
            p.feed(&chunk, &mut out);
            assert!(p.buffered() <= MAX_INPUT + chunk.len());
        }
        p.feed(br#"]"}{"execute":"after"}"#, &mut out);
        assert_eq!(
            out,
            vec![
                Input::Error("JSON token size limit exceeded".into()),
                Input::Value(json!({"execute": "after"})),
            ]
        );
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut input = vec![b'['; 10_000];
        input.extend(vec![b']'; 10_000]);
        input.extend_from_slice(br#"{"execute":"ok"}"#);
        let (out, _) = parse_chunks(&[&input]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(matches!(&out[0], Input::Error(_)));
        assert_eq!(out[1], Input::Value(json!({"execute": "ok"})));
    }

    #[test]
    fn output_is_one_line_in_qemu_spacing() {
        let v = json!({"return": {}, "id": [1, "a"]});
        assert_eq!(
            line(&v),
            b"{\"id\": [1, \"a\"], \"return\": {}}\r\n".to_vec()
        );
    }
}
