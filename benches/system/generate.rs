//! The output generator: this binary run as `child generate N`, printing N lines of
//! about 100 bytes, three on stdout for every one on stderr.
//!
//! By default it writes through Rust's standard streams, as `println!` and `eprintln!`
//! do: stdout is line-buffered and stderr unbuffered, so every line is one `write(2)`,
//! which is how a tool that reports progress line by line behaves. `--buffered` writes
//! 64 KiB blocks instead, the fastest a pipe can be fed.

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes of every generated line, newline included.
pub const LINE_BYTES: usize = 100;

/// Arguments of `child generate`.
pub struct GenerateArgs {
    pub lines: u64,
    /// Lines per second; `None` prints as fast as the pipes take them.
    pub rate: Option<u64>,
    /// A file whose creation starts the output, so that watchers can connect first.
    pub wait_for: Option<String>,
    /// Write 64 KiB blocks instead of one line per write.
    pub buffered: bool,
}

impl GenerateArgs {
    pub fn parse(args: &[String]) -> Self {
        let mut parsed = Self { lines: 0, rate: None, wait_for: None, buffered: false };
        let mut words = args.iter();
        while let Some(word) = words.next() {
            match word.as_str() {
                "--rate" => parsed.rate = words.next().and_then(|value| value.parse().ok()),
                "--wait-for" => parsed.wait_for = words.next().cloned(),
                "--buffered" => parsed.buffered = true,
                value => parsed.lines = value.parse().unwrap_or_else(|_| panic!("invalid line count {value:?}")),
            }
        }
        parsed
    }
}

pub fn generate(args: &GenerateArgs) -> io::Result<()> {
    if let Some(path) = &args.wait_for {
        while !Path::new(path).exists() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    // A zero-sized buffer passes each write straight through to the standard stream.
    let capacity = if args.buffered { 64 * 1024 } else { 0 };
    let mut stdout = io::BufWriter::with_capacity(capacity, io::stdout().lock());
    let mut stderr = io::BufWriter::with_capacity(capacity, io::stderr().lock());
    let mut line = template_line();
    let started = Instant::now();
    // With a rate, each batch is one millisecond's worth of lines and is flushed at once.
    let batch = args.rate.map_or(u64::MAX, |rate| (rate / 1000).max(1));

    let mut seq = 0;
    while seq < args.lines {
        let end = args.lines.min(seq.saturating_add(batch));
        for number in seq..end {
            write_number(&mut line, number + 1);
            if number % 4 == 3 {
                stderr.write_all(&line)?;
            } else {
                stdout.write_all(&line)?;
            }
        }
        seq = end;

        if let Some(rate) = args.rate {
            stdout.flush()?;
            stderr.flush()?;
            let due = started + Duration::from_secs_f64(seq as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }

    stdout.flush()?;
    stderr.flush()
}

/// Returns a line of `LINE_BYTES` whose first ten bytes are overwritten with the line number.
fn template_line() -> Vec<u8> {
    let mut line = b"0000000000 coppice benchmark output: generated text that stands in for a tool's progress line ".to_vec();
    line.resize(LINE_BYTES - 1, b'.');
    line.push(b'\n');
    line
}

fn write_number(line: &mut [u8], mut number: u64) {
    for slot in line[..10].iter_mut().rev() {
        *slot = b'0' + (number % 10) as u8;
        number /= 10;
    }
}
