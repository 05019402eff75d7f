//! Splits a byte stream into text lines.
//!
//! A line ends at `\n`, at `\r\n`, or at a lone `\r` (progress output redraws a line
//! with `\r`, and each redraw is worth showing). Bytes are decoded lossily, so
//! invalid UTF-8 becomes U+FFFD and never fails. A line longer than
//! [`MAX_LINE_BYTES`] keeps its first bytes and gets a marker that says how much was
//! cut, so one runaway line cannot grow memory without bound.

/// Maximum length of a line kept whole, in bytes.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Incremental line splitter for one stream.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    /// Bytes of the current line dropped past `max`.
    cut: u64,
    /// The previous chunk ended in `\r`, so a `\n` first in the next chunk belongs to it.
    after_cr: bool,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::with_max(MAX_LINE_BYTES)
    }
}

impl LineSplitter {
    pub fn with_max(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            cut: 0,
            after_cr: false,
        }
    }

    /// Feeds one chunk, calling `on_line` for every line it completes.
    pub fn push(&mut self, mut bytes: &[u8], mut on_line: impl FnMut(String)) {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }

        while let Some(end) = memchr2(b'\n', b'\r', bytes) {
            self.append(&bytes[..end]);
            on_line(self.take_line());

            let is_cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if is_cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }

        self.append(bytes);
    }

    /// Ends the stream: a last line without a newline is still a line.
    pub fn finish(&mut self, mut on_line: impl FnMut(String)) {
        self.after_cr = false;
        if !self.buf.is_empty() || self.cut > 0 {
            on_line(self.take_line());
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = self.max.saturating_sub(self.buf.len());
        if bytes.len() <= room {
            self.buf.extend_from_slice(bytes);
        } else {
            self.buf.extend_from_slice(&bytes[..room]);
            self.cut += (bytes.len() - room) as u64;
        }
    }

    fn take_line(&mut self) -> String {
        let line = if self.cut == 0 {
            decode(&self.buf)
        } else {
            let kept = trim_partial_char(&self.buf);
            let dropped = self.cut + (self.buf.len() - kept.len()) as u64;
            let mut text = decode(kept);
            text.push_str(&format!(" [coppice: cut {dropped} bytes of a line over {} bytes]", self.max));
            text
        };
        self.buf.clear();
        self.cut = 0;
        line
    }
}

fn decode(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Drops a UTF-8 sequence the cut split in two, so the kept part does not end in U+FFFD.
fn trim_partial_char(bytes: &[u8]) -> &[u8] {
    match std::str::from_utf8(bytes) {
        Err(error) if error.error_len().is_none() => &bytes[..error.valid_up_to()],
        _ => bytes,
    }
}

fn memchr2(a: u8, b: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&byte| byte == a || byte == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_chunks(chunks: &[&[u8]], max: usize) -> Vec<String> {
        let mut splitter = LineSplitter::with_max(max);
        let mut lines = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, |line| lines.push(line));
        }
        splitter.finish(|line| lines.push(line));
        lines
    }

    #[test]
    fn splits_on_newline_crlf_and_lone_cr() {
        let lines = split_chunks(&[b"a\nb\r\nc\rd"], 100);
        assert_eq!(lines, ["a", "b", "c", "d"]);
    }

    #[test]
    fn crlf_across_chunks_is_one_break() {
        let lines = split_chunks(&[b"a\r", b"\nb\n"], 100);
        assert_eq!(lines, ["a", "b"]);
    }

    #[test]
    fn progress_redraws_are_separate_lines() {
        let lines = split_chunks(&[b" 10%\r 50%\r100%\n"], 100);
        assert_eq!(lines, [" 10%", " 50%", "100%"]);
    }

    #[test]
    fn empty_lines_are_kept() {
        let lines = split_chunks(&[b"a\n\n\nb\n"], 100);
        assert_eq!(lines, ["a", "", "", "b"]);
    }

    #[test]
    fn last_line_without_newline_is_kept() {
        let lines = split_chunks(&[b"one\ntwo"], 100);
        assert_eq!(lines, ["one", "two"]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let lines = split_chunks(&[b"ok \xff\xfe end\n"], 100);
        assert_eq!(lines, ["ok \u{fffd}\u{fffd} end"]);
    }

    #[test]
    fn utf8_split_across_chunks_survives() {
        let bytes = "ünï\n".as_bytes();
        let lines = split_chunks(&[&bytes[..1], &bytes[1..3], &bytes[3..]], 100);
        assert_eq!(lines, ["ünï"]);
    }

    #[test]
    fn long_line_is_cut_and_marked() {
        let long = vec![b'x'; 50];
        let lines = split_chunks(&[&long, b"\nnext\n"], 16);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], format!("{} [coppice: cut 34 bytes of a line over 16 bytes]", "x".repeat(16)));
        assert_eq!(lines[1], "next");
    }

    #[test]
    fn cut_does_not_split_a_character() {
        // "é" is two bytes; a cut after 5 bytes would split the third one.
        let lines = split_chunks(&["ééé\n".as_bytes()], 5);
        assert_eq!(lines, ["éé [coppice: cut 2 bytes of a line over 5 bytes]"]);
    }

    #[test]
    fn cut_line_spanning_many_chunks_is_counted() {
        let chunk = vec![b'y'; 10];
        let lines = split_chunks(&[&chunk, &chunk, &chunk, b"\n"], 16);
        assert_eq!(lines, [format!("{} [coppice: cut 14 bytes of a line over 16 bytes]", "y".repeat(16))]);
    }

    #[test]
    fn empty_input_has_no_lines() {
        assert!(split_chunks(&[], 16).is_empty());
        assert!(split_chunks(&[b""], 16).is_empty());
    }
}
