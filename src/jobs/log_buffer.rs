//! The bounded log of one job, with queries for the logs API and live followers for SSE.
//!
//! Lines arrive in `seq` order with no gaps (the import's [`LineStamper`] hands them
//! out that way), so the retained lines always hold a contiguous run of sequence
//! numbers. That makes `after=<seq>` index arithmetic, and because timestamps strictly
//! increase, `since=<ts>` is a binary search.
//!
//! [`LineStamper`]: crate::line::LineStamper

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::line::LogLine;

/// Default cap on retained lines per job.
pub const DEFAULT_MAX_LINES: usize = 10_000;

/// Default cap on retained bytes per job, as counted by [`line_cost`] (plus, while the
/// log is open, each line's slot for shared JSON).
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Caps of one job's buffer. When either is exceeded the oldest lines are dropped, but
/// the newest line is always kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    pub max_lines: usize,
    pub max_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self { max_lines: DEFAULT_MAX_LINES, max_bytes: DEFAULT_MAX_BYTES }
    }
}

/// Returns the memory a retained line is charged: the struct itself plus the heap blocks
/// of its text and source, as the allocator sizes them.
///
/// Charging only the string lengths undercounted: with 100-byte lines, 50 finished
/// jobs held 1.35 resident bytes per charged byte (`scripts/bench --quick`, part 5), because
/// malloc rounds each block up and the 14-byte source takes a block of its own.
pub fn line_cost(line: &LogLine) -> usize {
    size_of::<LogLine>() + heap_block(line.text.capacity()) + heap_block(line.source.capacity())
}

/// Serializes a line as compact JSON in the log-envelope shape.
fn encode(line: &LogLine) -> String {
    serde_json::to_string(line).expect("a LogLine has only strings, numbers and unit enums, which always serialize")
}

/// Estimates the heap memory behind an allocation of `requested` bytes.
///
/// NOTE: this follows glibc's malloc on 64-bit Linux: a block is the request plus an
/// 8-byte header, rounded up to 16 bytes, and at least 32 bytes. jemalloc (FreeBSD's
/// libc) rounds to size classes that are never larger for these sizes, so the
/// estimate errs towards charging too much there.
fn heap_block(requested: usize) -> usize {
    if requested == 0 {
        return 0;
    }
    (requested + 8).next_multiple_of(16).max(32)
}

/// The newest `seq` pushed and whether the log is complete, as followers watch it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogProgress {
    pub last_seq: u64,
    pub closed: bool,
}

/// The lines a query matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogCursor {
    /// Every line.
    Start,
    /// Lines with a sequence number greater than this.
    AfterSeq(u64),
    /// Lines with a timestamp strictly after this instant.
    Since(DateTime<Utc>),
}

/// The part of the matching lines a query returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogWindow {
    /// The oldest N matching lines.
    First(usize),
    /// The newest N matching lines.
    Last(usize),
}

/// The result of a query, oldest line first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    /// True when some matching line is missing: cut by the window, or evicted.
    pub truncated: bool,
}

/// How many lines a buffer evicted, and the `seq` and `ts` of the newest of them.
/// The durable store keeps it with a job's lines, so that a restored log reports
/// `truncated` exactly as the original did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Eviction {
    pub count: u64,
    pub last: Option<(u64, DateTime<Utc>)>,
}

/// Lines read by a follower, and how many it missed because they were evicted first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogBatch {
    pub lines: Vec<LogLine>,
    pub skipped: u64,
}

/// One line as compact JSON in the log-envelope shape, shared by every reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedLine {
    pub seq: u64,
    pub json: Arc<str>,
}

/// Encoded lines read by a follower, and how many it missed because they were evicted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedBatch {
    pub lines: Vec<EncodedLine>,
    pub skipped: u64,
}

/// Returns the memory a line's shared JSON is charged: its slot in the queue of JSON,
/// plus the heap block of the `Arc<str>` (two reference counts and the text) once the
/// line is encoded.
fn json_cost(json: &Option<Arc<str>>) -> usize {
    size_of::<Option<Arc<str>>>() + json.as_ref().map_or(0, |json| heap_block(2 * size_of::<usize>() + json.len()))
}

#[derive(Default)]
struct Retained {
    lines: VecDeque<LogLine>,
    /// While the log is open, the JSON of each retained line (same index as `lines`)
    /// once a follower has read it. Every follower of a live log sends the same lines,
    /// so each line is serialized once and the followers share the text: with 100
    /// followers, serializing per follower cost most of the server's CPU
    /// (`scripts/bench`, part 3). Empty once the log is closed.
    json: VecDeque<Option<Arc<str>>>,
    bytes: usize,
    evicted: u64,
    /// The `seq` and `ts` of the newest evicted line, which tell whether a cursor
    /// matched anything that is gone.
    last_evicted: Option<(u64, DateTime<Utc>)>,
}

impl Retained {
    /// Returns the index of the first retained line with `seq > after`.
    fn index_after(&self, after: u64) -> usize {
        match self.lines.front() {
            Some(front) if after >= front.seq => usize::try_from(after - front.seq + 1).map_or(self.lines.len(), |index| index.min(self.lines.len())),
            _ => 0,
        }
    }

    /// Returns the range of up to `max` lines with `seq > after`, and how many lines
    /// after `after` were evicted before the first of them.
    fn range_after(&self, after: u64, max: usize) -> (std::ops::Range<usize>, u64) {
        let start = self.index_after(after);
        let skipped = match self.lines.front() {
            Some(front) if start == 0 => front.seq.saturating_sub(after + 1),
            _ => 0,
        };
        (start..self.lines.len().min(start + max), skipped)
    }
}

/// The retained lines of one job and a watch channel that wakes its followers.
///
/// Writers never wait for a follower to consume anything. A push takes the lock
/// briefly (readers hold it only while copying lines out) and then updates the watch
/// value, which does not block. Followers keep only a cursor.
pub struct LogBuffer {
    limits: LogLimits,
    retained: Mutex<Retained>,
    progress: watch::Sender<LogProgress>,
}

impl LogBuffer {
    pub fn new(limits: LogLimits) -> Self {
        let limits = LogLimits { max_lines: limits.max_lines.max(1), max_bytes: limits.max_bytes };
        Self { limits, retained: Mutex::default(), progress: watch::Sender::new(LogProgress::default()) }
    }

    /// Rebuilds the closed log of a finished job from stored lines. `lines` must be in
    /// `seq` order without gaps, and `eviction` must describe the lines evicted before
    /// them. Lines over `limits` are evicted again, oldest first.
    pub fn restored(limits: LogLimits, eviction: Eviction, lines: impl IntoIterator<Item = LogLine>) -> Self {
        let buffer = Self::new(limits);
        {
            let mut retained = buffer.lock();
            retained.evicted = eviction.count;
            retained.last_evicted = eviction.last;
        }
        for line in lines {
            buffer.push(line);
        }
        buffer.close();
        buffer
    }

    /// Appends a line, evicting the oldest ones over the limits. `line.seq` must be one
    /// more than the previous line's, as [`crate::line::LineStamper`] hands them out.
    pub fn push(&self, line: LogLine) {
        self.push_all(vec![line]);
    }

    /// Appends the lines of one read under one lock, and wakes followers once.
    pub fn push_all(&self, lines: Vec<LogLine>) {
        let Some(last_seq) = lines.last().map(|line| line.seq) else {
            return;
        };
        let mut retained = self.lock();

        for line in lines {
            debug_assert!(
                retained.lines.back().is_none_or(|last| last.seq + 1 == line.seq),
                "log lines must arrive in seq order without gaps"
            );
            retained.bytes += line_cost(&line) + json_cost(&None);
            retained.lines.push_back(line);
            retained.json.push_back(None);
        }
        self.evict_over_limits(&mut retained);

        // Updated under the lock so that followers see `last_seq` only once the lines are readable.
        self.progress.send_modify(|progress| progress.last_seq = last_seq);
    }

    /// Marks the log complete. Followers drain what is left and then see the end.
    ///
    /// A closed log never grows again, so the queue gives back the spare capacity it
    /// grew into. A finished job then holds only its lines, which matters when many
    /// finished jobs are kept.
    ///
    /// The shared JSON is dropped too: it speeds up live followers, and a finished job
    /// is read rarely enough that it is not worth keeping twice.
    pub fn close(&self) {
        let mut retained = self.lock();
        let json = std::mem::take(&mut retained.json);
        retained.bytes -= json.iter().map(json_cost).sum::<usize>();
        retained.lines.shrink_to_fit();
        self.progress.send_modify(|progress| progress.closed = true);
    }

    /// Drops the oldest lines while either limit is exceeded, keeping the newest line.
    fn evict_over_limits(&self, retained: &mut Retained) {
        while retained.lines.len() > self.limits.max_lines || (retained.bytes > self.limits.max_bytes && retained.lines.len() > 1) {
            let Some(oldest) = retained.lines.pop_front() else { break };
            retained.bytes -= line_cost(&oldest);
            if let Some(json) = retained.json.pop_front() {
                retained.bytes -= json_cost(&json);
            }
            retained.evicted += 1;
            retained.last_evicted = Some((oldest.seq, oldest.ts));
        }
    }

    pub fn is_closed(&self) -> bool {
        self.progress.borrow().closed
    }

    /// Waits until [`close`](Self::close) was called.
    pub async fn closed(&self) {
        let mut progress = self.progress.subscribe();
        // The sender is `self.progress`, alive for as long as `self` is, so this cannot fail.
        let _ = progress.wait_for(|progress| progress.closed).await;
    }

    /// Returns how many lines were dropped to stay within the limits.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    /// Returns how many lines were dropped and the newest dropped line.
    pub fn eviction(&self) -> Eviction {
        let retained = self.lock();
        Eviction { count: retained.evicted, last: retained.last_evicted }
    }

    pub fn len(&self) -> usize {
        self.lock().lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the lines matching `cursor`, cut to `window`.
    pub fn query(&self, cursor: LogCursor, window: LogWindow) -> LogPage {
        let retained = self.lock();

        let (start, evicted_matched) = match cursor {
            LogCursor::Start => (0, retained.evicted > 0),
            LogCursor::AfterSeq(after) => {
                (retained.index_after(after), retained.last_evicted.is_some_and(|(seq, _)| seq > after))
            }
            LogCursor::Since(since) => {
                (retained.lines.partition_point(|line| line.ts <= since), retained.last_evicted.is_some_and(|(_, ts)| ts > since))
            }
        };

        let matched = retained.lines.len() - start;
        let (range, cut) = match window {
            LogWindow::First(count) => (start..start + count.min(matched), matched > count),
            LogWindow::Last(count) => (retained.lines.len() - count.min(matched)..retained.lines.len(), matched > count),
        };

        LogPage { lines: retained.lines.range(range).cloned().collect(), truncated: cut || evicted_matched }
    }

    /// Returns up to `max` lines with `seq > after`, and how many such lines were evicted.
    pub fn read_after(&self, after: u64, max: usize) -> LogBatch {
        let retained = self.lock();

        let (range, skipped) = retained.range_after(after, max);

        LogBatch { lines: retained.lines.range(range).cloned().collect(), skipped }
    }

    /// Returns up to `max` lines with `seq > after` as JSON, and how many such lines
    /// were evicted.
    ///
    /// While the log is open, the first reader of a line serializes it and later readers
    /// share that text, which is charged to the byte limit like the line itself. Once
    /// the log is closed, each call serializes its lines anew.
    pub fn read_encoded_after(&self, after: u64, max: usize) -> EncodedBatch {
        let mut retained = self.lock();

        let (range, skipped) = retained.range_after(after, max);
        let mut lines = Vec::with_capacity(range.len());
        let mut added = 0;
        let Retained { lines: retained_lines, json: retained_json, .. } = &mut *retained;
        for index in range {
            let line = &retained_lines[index];
            // Closed logs keep no JSON, so their slot is missing.
            let slot = retained_json.get_mut(index);
            let json = match slot.as_deref() {
                Some(Some(json)) => Arc::clone(json),
                _ => {
                    let json: Arc<str> = encode(line).into();
                    if let Some(slot) = slot {
                        added += json_cost(&Some(Arc::clone(&json))) - json_cost(&None);
                        *slot = Some(Arc::clone(&json));
                    }
                    json
                }
            };
            lines.push(EncodedLine { seq: line.seq, json });
        }
        retained.bytes += added;
        // The JSON grows the charge; lines the followers already read make room for it.
        self.evict_over_limits(&mut retained);

        EncodedBatch { lines, skipped }
    }

    /// Starts following the log from just after `after` (0 for the beginning).
    pub fn follow(self: &Arc<Self>, after: u64) -> LogFollower {
        LogFollower { buffer: Arc::clone(self), cursor: after, progress: self.progress.subscribe() }
    }

    fn lock(&self) -> MutexGuard<'_, Retained> {
        self.retained.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The result of [`LogFollower::next`] (a [`LogBatch`]) or [`LogFollower::next_encoded`]
/// (an [`EncodedBatch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Followed<B = LogBatch> {
    Lines(B),
    /// The log is closed and the follower has read every retained line.
    Closed,
}

/// One reader of a live log: a cursor into the shared buffer and a watch receiver.
pub struct LogFollower {
    buffer: Arc<LogBuffer>,
    cursor: u64,
    progress: watch::Receiver<LogProgress>,
}

impl LogFollower {
    /// Waits for lines after the cursor and returns up to `max` of them.
    ///
    /// Cancel-safe: the cursor moves only when lines are returned, so dropping the
    /// future (for a keep-alive or a shutdown) loses nothing.
    pub async fn next(&mut self, max: usize) -> Followed {
        self.next_with(|buffer, after| {
            let batch = buffer.read_after(after, max);
            let last = batch.lines.last().map(|line| line.seq);
            (batch, last)
        })
        .await
    }

    /// Waits like [`next`](Self::next) and returns the lines as shared JSON.
    pub async fn next_encoded(&mut self, max: usize) -> Followed<EncodedBatch> {
        self.next_with(|buffer, after| {
            let batch = buffer.read_encoded_after(after, max);
            let last = batch.lines.last().map(|line| line.seq);
            (batch, last)
        })
        .await
    }

    /// Waits until `read` returns lines (with the `seq` of the last one) or the log is
    /// closed and drained.
    async fn next_with<B>(&mut self, read: impl Fn(&LogBuffer, u64) -> (B, Option<u64>)) -> Followed<B> {
        loop {
            // Marking the watch value seen before reading means a line pushed after the
            // read changes the value again and wakes `changed` below, so none is missed.
            let closed = self.progress.borrow_and_update().closed;

            let (batch, last) = read(&self.buffer, self.cursor);
            if let Some(last) = last {
                self.cursor = last;
                return Followed::Lines(batch);
            }
            if closed {
                return Followed::Closed;
            }

            // The sender lives in the buffer this follower holds, so it cannot be dropped.
            if self.progress.changed().await.is_err() {
                return Followed::Closed;
            }
        }
    }

    /// Returns up to `max` lines after the cursor without waiting, or `None` when no
    /// new line is there yet.
    pub fn try_next(&mut self, max: usize) -> Option<LogBatch> {
        let batch = self.buffer.read_after(self.cursor, max);
        self.cursor = batch.lines.last()?.seq;
        Some(batch)
    }

    /// Returns the `seq` of the last line returned, or the starting point.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::line::{SOURCE, Step, Stream};

    fn ts(seq: u64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_777_118_400_000_000).unwrap() + TimeDelta::milliseconds(seq as i64)
    }

    fn line(seq: u64) -> LogLine {
        LogLine { ts: ts(seq), source: SOURCE.to_owned(), stream: Stream::Stdout, text: format!("line {seq}"), step: Step::Rsync, seq }
    }

    fn buffer_with(lines: u64, limits: LogLimits) -> LogBuffer {
        let buffer = LogBuffer::new(limits);
        for seq in 1..=lines {
            buffer.push(line(seq));
        }
        buffer
    }

    /// Returns what a line is charged while the log is open: the line and its JSON slot.
    fn open_cost(line: &LogLine) -> usize {
        line_cost(line) + json_cost(&None)
    }

    fn seqs(page: &LogPage) -> Vec<u64> {
        page.lines.iter().map(|line| line.seq).collect()
    }

    fn lines_limit(max_lines: usize) -> LogLimits {
        LogLimits { max_lines, max_bytes: usize::MAX }
    }

    #[test]
    fn evicts_oldest_over_line_cap() {
        let buffer = buffer_with(25, lines_limit(10));

        assert_eq!(buffer.len(), 10);
        assert_eq!(buffer.evicted(), 15);
        let page = buffer.query(LogCursor::Start, LogWindow::First(100));
        assert_eq!(seqs(&page), (16..=25).collect::<Vec<_>>());
        assert!(page.truncated);
    }

    #[test]
    fn evicts_oldest_over_byte_cap() {
        // Line 10 has the longest text of the ten, so three of any of them fit.
        let cost = open_cost(&line(10));
        let buffer = buffer_with(10, LogLimits { max_lines: 100, max_bytes: cost * 3 });

        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.evicted(), 7);
    }

    #[test]
    fn keeps_newest_line_over_byte_cap() {
        let buffer = buffer_with(3, LogLimits { max_lines: 100, max_bytes: 1 });

        let page = buffer.query(LogCursor::Start, LogWindow::First(100));

        assert_eq!(seqs(&page), [3]);
    }

    #[test]
    fn million_lines_stay_bounded() {
        let buffer = buffer_with(1_000_000, LogLimits::default());

        assert_eq!(buffer.len(), DEFAULT_MAX_LINES);
        assert_eq!(buffer.evicted(), 1_000_000 - DEFAULT_MAX_LINES as u64);
    }

    #[test]
    fn query_all_not_truncated_when_complete() {
        let buffer = buffer_with(5, lines_limit(10));

        let page = buffer.query(LogCursor::Start, LogWindow::First(5));

        assert_eq!(seqs(&page), [1, 2, 3, 4, 5]);
        assert!(!page.truncated);
    }

    #[test]
    fn query_limit_cuts_and_truncates() {
        let buffer = buffer_with(5, lines_limit(10));

        let page = buffer.query(LogCursor::Start, LogWindow::First(2));

        assert_eq!(seqs(&page), [1, 2]);
        assert!(page.truncated);
    }

    #[test]
    fn query_after_seq() {
        let buffer = buffer_with(20, lines_limit(10));

        let cases: [(u64, Vec<u64>, bool); 6] = [
            (0, (11..=20).collect(), true),
            (9, (11..=20).collect(), true),
            (10, (11..=20).collect(), false),
            (15, (16..=20).collect(), false),
            (20, vec![], false),
            (99, vec![], false),
        ];
        for (after, expected, truncated) in cases {
            let page = buffer.query(LogCursor::AfterSeq(after), LogWindow::First(100));
            assert_eq!(seqs(&page), expected, "after={after}");
            assert_eq!(page.truncated, truncated, "after={after}");
        }
    }

    #[test]
    fn query_since_is_strictly_after() {
        let buffer = buffer_with(20, lines_limit(10));

        let cases: [(DateTime<Utc>, Vec<u64>, bool); 6] = [
            (ts(0), (11..=20).collect(), true),
            (ts(9), (11..=20).collect(), true),
            (ts(10), (11..=20).collect(), false),
            (ts(15), (16..=20).collect(), false),
            (ts(15) + TimeDelta::microseconds(1), (16..=20).collect(), false),
            (ts(20), vec![], false),
        ];
        for (since, expected, truncated) in cases {
            let page = buffer.query(LogCursor::Since(since), LogWindow::First(100));
            assert_eq!(seqs(&page), expected, "since={since}");
            assert_eq!(page.truncated, truncated, "since={since}");
        }
    }

    #[test]
    fn query_tail_returns_newest() {
        let buffer = buffer_with(8, lines_limit(10));

        let last_three = buffer.query(LogCursor::Start, LogWindow::Last(3));
        let last_ten = buffer.query(LogCursor::Start, LogWindow::Last(10));
        let after_six = buffer.query(LogCursor::AfterSeq(6), LogWindow::Last(3));

        assert_eq!(seqs(&last_three), [6, 7, 8]);
        assert!(last_three.truncated);
        assert_eq!(seqs(&last_ten), (1..=8).collect::<Vec<_>>());
        assert!(!last_ten.truncated);
        assert_eq!(seqs(&after_six), [7, 8]);
        assert!(!after_six.truncated);
    }

    #[test]
    fn query_tail_after_eviction_is_truncated() {
        let buffer = buffer_with(20, lines_limit(10));

        let page = buffer.query(LogCursor::Start, LogWindow::Last(15));

        assert_eq!(seqs(&page), (11..=20).collect::<Vec<_>>());
        assert!(page.truncated);
    }

    #[test]
    fn query_empty_buffer() {
        let buffer = LogBuffer::new(LogLimits::default());

        let page = buffer.query(LogCursor::Since(ts(1)), LogWindow::Last(10));

        assert!(page.lines.is_empty());
        assert!(!page.truncated);
    }

    #[test]
    fn read_after_reports_skipped_lines() {
        let buffer = buffer_with(20, lines_limit(10));

        let behind = buffer.read_after(3, 4);
        let current = buffer.read_after(12, 100);

        assert_eq!(behind.lines.iter().map(|line| line.seq).collect::<Vec<_>>(), [11, 12, 13, 14]);
        assert_eq!(behind.skipped, 7);
        assert_eq!(current.lines.len(), 8);
        assert_eq!(current.skipped, 0);
    }

    #[test]
    fn encoded_lines_are_shared_json() {
        let buffer = buffer_with(5, lines_limit(10));
        let charged_before = buffer.lock().bytes;

        let first = buffer.read_encoded_after(2, 2);
        let second = buffer.read_encoded_after(2, 2);

        assert_eq!(first.lines.iter().map(|line| line.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(&*first.lines[0].json, serde_json::to_string(&line(3)).unwrap());
        assert!(Arc::ptr_eq(&first.lines[0].json, &second.lines[0].json), "the second reader serialized again");
        assert_eq!(first.skipped, 0);
        assert!(buffer.lock().bytes > charged_before, "the shared JSON is not charged");
    }

    #[test]
    fn encoded_after_reports_skipped_lines() {
        let buffer = buffer_with(20, lines_limit(10));

        let behind = buffer.read_encoded_after(3, 4);

        assert_eq!(behind.lines.iter().map(|line| line.seq).collect::<Vec<_>>(), [11, 12, 13, 14]);
        assert_eq!(behind.skipped, 7);
    }

    #[test]
    fn close_drops_shared_json() {
        let buffer = buffer_with(5, lines_limit(10));
        let charged_before = buffer.lock().bytes;
        buffer.read_encoded_after(0, 5);

        buffer.close();
        let after_close = buffer.read_encoded_after(0, 5);

        assert!(charged_before > 0);
        assert_eq!(buffer.lock().bytes, (1..=5).map(|seq| line_cost(&line(seq))).sum::<usize>());
        assert_eq!(after_close.lines.len(), 5);
        assert!(buffer.lock().json.is_empty(), "a closed log kept JSON");
    }

    #[test]
    fn shared_json_counts_toward_byte_cap() {
        let cost = open_cost(&line(10));
        let buffer = buffer_with(4, LogLimits { max_lines: 100, max_bytes: cost * 4 });

        buffer.read_encoded_after(0, 4);

        assert!(buffer.len() < 4, "the JSON pushed the log over its byte cap but nothing was evicted");
        assert!(buffer.lock().bytes <= cost * 4);
    }

    #[tokio::test]
    async fn follower_reads_replay_then_live_then_closed() {
        let buffer = Arc::new(buffer_with(3, lines_limit(10)));
        let mut follower = buffer.follow(1);

        let replay = follower.next(100).await;
        let writer = {
            let buffer = Arc::clone(&buffer);
            tokio::spawn(async move {
                buffer.push(line(4));
                buffer.push(line(5));
                buffer.close();
            })
        };
        let mut live = Vec::new();
        while let Followed::Lines(batch) = follower.next(1).await {
            live.extend(batch.lines.iter().map(|line| line.seq));
        }
        writer.await.unwrap();

        assert_eq!(replay, Followed::Lines(LogBatch { lines: vec![line(2), line(3)], skipped: 0 }));
        assert_eq!(live, [4, 5]);
        assert_eq!(follower.cursor(), 5);
    }

    #[tokio::test]
    async fn follower_behind_eviction_sees_gap() {
        let buffer = Arc::new(buffer_with(3, lines_limit(3)));
        let mut follower = buffer.follow(0);
        for seq in 4..=10 {
            buffer.push(line(seq));
        }

        let Followed::Lines(batch) = follower.next(100).await else { panic!("expected lines") };

        assert_eq!(batch.lines.iter().map(|line| line.seq).collect::<Vec<_>>(), [8, 9, 10]);
        assert_eq!(batch.skipped, 7);
    }

    #[test]
    fn restored_log_queries_like_the_original() {
        let original = buffer_with(25, lines_limit(10));
        original.close();
        let retained = original.query(LogCursor::Start, LogWindow::First(100)).lines;

        let restored = LogBuffer::restored(lines_limit(10), original.eviction(), retained);

        assert!(restored.is_closed());
        assert_eq!(restored.eviction(), original.eviction());
        let cursors = [LogCursor::Start, LogCursor::AfterSeq(14), LogCursor::AfterSeq(15), LogCursor::Since(ts(15)), LogCursor::Since(ts(14))];
        for cursor in cursors {
            for window in [LogWindow::First(3), LogWindow::Last(3), LogWindow::First(100)] {
                assert_eq!(restored.query(cursor, window), original.query(cursor, window), "{cursor:?} {window:?}");
            }
        }
    }

    #[test]
    fn restored_log_applies_smaller_limits() {
        let lines: Vec<LogLine> = (6..=10).map(line).collect();
        let eviction = Eviction { count: 5, last: Some((5, ts(5))) };

        let restored = LogBuffer::restored(lines_limit(2), eviction, lines);

        assert_eq!(seqs(&restored.query(LogCursor::Start, LogWindow::First(100))), [9, 10]);
        assert_eq!(restored.eviction(), Eviction { count: 8, last: Some((8, ts(8))) });
    }

    #[test]
    fn try_next_reads_without_waiting() {
        let buffer = Arc::new(buffer_with(3, lines_limit(10)));
        let mut follower = buffer.follow(0);

        let first = follower.try_next(2);
        let second = follower.try_next(10);
        let empty = follower.try_next(10);

        assert_eq!(first.map(|batch| batch.lines), Some(vec![line(1), line(2)]));
        assert_eq!(second.map(|batch| batch.lines), Some(vec![line(3)]));
        assert_eq!(empty, None);
        assert_eq!(follower.cursor(), 3);
    }
}
