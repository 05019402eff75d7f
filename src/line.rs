//! Tagged output lines: the log envelope every command's output is turned into.
//!
//! A line carries the import step that produced it, the stream it came from, a
//! timestamp and a per-import sequence number. Timestamps strictly increase
//! within one import, so a client can use the last `ts` it saw as a cursor.

use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::{Deserialize, Serialize, Serializer};

/// The `source` value of every line the builder emits.
pub const SOURCE: &str = "template-build";

/// One step of the import pipeline, in the order the runner calls them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Pull,
    Mount,
    Rsync,
    Snapshot,
    Reload,
    Cleanup,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Pull,
        Step::Mount,
        Step::Rsync,
        Step::Snapshot,
        Step::Reload,
        Step::Cleanup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Pull => "pull",
            Step::Mount => "mount",
            Step::Rsync => "rsync",
            Step::Snapshot => "snapshot",
            Step::Reload => "reload",
            Step::Cleanup => "cleanup",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pipe a line was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One output line in the log-envelope shape served by the HTTP API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    #[serde(serialize_with = "serialize_ts")]
    pub ts: DateTime<Utc>,
    pub source: String,
    pub stream: Stream,
    pub text: String,
    pub step: Step,
    pub seq: u64,
}

impl LogLine {
    /// Formats `ts` as RFC 3339 in UTC with microseconds, the cursor format of the logs API.
    pub fn ts_rfc3339(&self) -> String {
        format_ts(self.ts)
    }
}

/// Formats a timestamp the way every log line and job field shows it.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn serialize_ts<S: Serializer>(ts: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_ts(*ts))
}

/// Receiver of tagged lines and step boundaries.
///
/// Implementations are called from the executor's read loop, so they must not block:
/// store the line or hand it to a channel and return.
pub trait LineSink: Send + Sync {
    fn line(&self, line: LogLine);

    /// Takes the lines of one read at once, in `seq` order. A sink that locks or
    /// notifies per call overrides this to do so once per batch.
    fn lines(&self, lines: Vec<LogLine>) {
        for line in lines {
            self.line(line);
        }
    }

    /// Called when the runner enters a step, before the step's first command.
    fn step_started(&self, _step: Step, _at: DateTime<Utc>) {}
}

/// A sink that drops everything, for callers that only want the result.
pub struct DiscardSink;

impl LineSink for DiscardSink {
    fn line(&self, _line: LogLine) {}
}

/// Per-import stamping state: the sequence counter and the last timestamp handed out.
struct StampState {
    seq: u64,
    last: Option<DateTime<Utc>>,
}

impl StampState {
    /// Gives a line the next `seq` and a timestamp after the previous line's.
    fn stamp(&mut self, step: Step, stream: Stream, text: String, now: DateTime<Utc>) -> LogLine {
        let ts = match self.last {
            Some(last) if now <= last => last + TimeDelta::microseconds(1),
            _ => now,
        };
        self.last = Some(ts);
        self.seq += 1;
        LogLine { ts, source: SOURCE.to_owned(), stream, text, step, seq: self.seq }
    }
}

/// Stamps lines of one import with a sequence number and a strictly increasing
/// timestamp, and passes them to the sink.
///
/// Stamping and delivery happen under one lock, so the sink receives lines in `seq`
/// order even if two commands of one import ran at once.
pub struct LineStamper<'a> {
    state: Mutex<StampState>,
    sink: &'a dyn LineSink,
}

impl<'a> LineStamper<'a> {
    pub fn new(sink: &'a dyn LineSink) -> Self {
        Self::starting_after(sink, 0)
    }

    /// Continues a sequence that already handed out `seq` numbers up to `last_seq`.
    pub fn starting_after(sink: &'a dyn LineSink, last_seq: u64) -> Self {
        Self {
            state: Mutex::new(StampState {
                seq: last_seq,
                last: None,
            }),
            sink,
        }
    }

    /// Stamps `text` and hands the line to the sink.
    pub fn emit(&self, step: Step, stream: Stream, text: String) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

        let line = state.stamp(step, stream, text, truncate_to_micros(Utc::now()));
        self.sink.line(line);
    }

    /// Stamps the lines of one read and hands them to the sink as one batch. They were
    /// read at one instant, so one clock reading serves them all, each a microsecond
    /// after the one before.
    pub fn emit_all(&self, step: Step, texts: Vec<(Stream, String)>) {
        if texts.is_empty() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

        let now = truncate_to_micros(Utc::now());
        let lines = texts.into_iter().map(|(stream, text)| state.stamp(step, stream, text, now)).collect();
        self.sink.lines(lines);
    }

    pub fn step_started(&self, step: Step) {
        self.sink.step_started(step, Utc::now());
    }
}

fn truncate_to_micros(ts: DateTime<Utc>) -> DateTime<Utc> {
    let micros = ts.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Mutex<Vec<LogLine>>);

    impl LineSink for Collect {
        fn line(&self, line: LogLine) {
            self.0.lock().unwrap().push(line);
        }
    }

    #[test]
    fn stamper_timestamps_strictly_increase() {
        let sink = Collect(Mutex::new(Vec::new()));
        let stamper = LineStamper::new(&sink);
        for i in 0..10_000 {
            stamper.emit(Step::Pull, Stream::Stdout, format!("line {i}"));
        }

        let lines = sink.0.into_inner().unwrap();
        assert_eq!(lines.len(), 10_000);
        assert_eq!(lines[0].seq, 1);
        for pair in lines.windows(2) {
            assert!(pair[0].ts < pair[1].ts, "{:?} !< {:?}", pair[0].ts, pair[1].ts);
            assert_eq!(pair[0].seq + 1, pair[1].seq);
        }
    }

    #[test]
    fn batch_stamps_continue_the_sequence() {
        let sink = Collect(Mutex::new(Vec::new()));
        let stamper = LineStamper::new(&sink);

        stamper.emit(Step::Pull, Stream::Stderr, "$ cmd".to_owned());
        stamper.emit_all(Step::Pull, (0..100).map(|i| (Stream::Stdout, format!("line {i}"))).collect());
        stamper.emit(Step::Pull, Stream::Stderr, "after".to_owned());

        let lines = sink.0.into_inner().unwrap();
        assert_eq!(lines.len(), 102);
        for pair in lines.windows(2) {
            assert!(pair[0].ts < pair[1].ts, "{:?} !< {:?}", pair[0].ts, pair[1].ts);
            assert_eq!(pair[0].seq + 1, pair[1].seq);
        }
    }

    #[test]
    fn line_serializes_in_envelope_shape() {
        let line = LogLine {
            ts: DateTime::from_timestamp_micros(1_777_118_401_123_456).unwrap(),
            source: SOURCE.to_owned(),
            stream: Stream::Stderr,
            text: "$ buildah pull".to_owned(),
            step: Step::Pull,
            seq: 7,
        };

        let json = serde_json::to_string(&line).unwrap();

        assert_eq!(
            json,
            r#"{"ts":"2026-04-25T12:00:01.123456Z","source":"template-build","stream":"stderr","text":"$ buildah pull","step":"pull","seq":7}"#
        );
    }
}
