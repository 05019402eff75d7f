//! Micro-benchmarks of the per-line work: splitting pipe output into lines, stamping
//! them, and storing and querying them in a job's log buffer.
//!
//! Run with `cargo bench --bench micro`; `scripts/bench` runs the system benchmark.

use std::hint::black_box;

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use coppice::jobs::{LogBuffer, LogCursor, LogLimits, LogWindow};
use coppice::line::{DiscardSink, LineStamper, LogLine, SOURCE, Step, Stream};
use coppice::split::LineSplitter;

/// Builds one 64 KiB pipe read of 100-byte lines, the size of the executor's reads.
fn chunk_of_lines() -> (Vec<u8>, u64) {
    let mut line = b"coppice benchmark line: some tool's progress output, padded with dots".to_vec();
    line.resize(99, b'.');
    line.push(b'\n');
    let count = 64 * 1024 / line.len();
    (line.repeat(count), count as u64)
}

fn split(c: &mut Criterion) {
    let (chunk, count) = chunk_of_lines();
    let mut group = c.benchmark_group("split");
    group.throughput(Throughput::Elements(count));

    group.bench_function("64 KiB of 100-byte lines", |b| {
        let mut splitter = LineSplitter::default();
        b.iter(|| {
            let mut lines = 0u64;
            splitter.push(black_box(&chunk), |line| {
                lines += 1;
                black_box(line);
            });
            lines
        });
    });
    group.finish();
}

fn stamp(c: &mut Criterion) {
    let mut group = c.benchmark_group("stamp");
    group.throughput(Throughput::Elements(1));

    group.bench_function("one line into a discarding sink", |b| {
        let stamper = LineStamper::new(&DiscardSink);
        b.iter_batched(
            || "x".repeat(99),
            |text| stamper.emit(Step::Rsync, Stream::Stdout, text),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn line(seq: u64) -> LogLine {
    let start = DateTime::<Utc>::from_timestamp_micros(1_777_118_400_000_000).expect("a valid time");
    LogLine {
        ts: start + TimeDelta::microseconds(seq as i64),
        source: SOURCE.to_owned(),
        stream: Stream::Stdout,
        text: format!("{seq:010} {}", ".".repeat(88)),
        step: Step::Rsync,
        seq,
    }
}

fn filled(retained: u64) -> LogBuffer {
    let limits = LogLimits { max_lines: retained as usize, max_bytes: usize::MAX };
    let buffer = LogBuffer::new(limits);
    for seq in 1..=retained {
        buffer.push(line(seq));
    }
    buffer
}

fn log_buffer(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_buffer");

    group.throughput(Throughput::Elements(1));
    group.bench_function("push into a full buffer of 10000 lines", |b| {
        let buffer = filled(10_000);
        let mut seq = 10_000;
        b.iter_batched(
            || {
                seq += 1;
                line(seq)
            },
            |line| buffer.push(line),
            BatchSize::SmallInput,
        );
    });

    // A query's cost must not grow with the buffer, so each runs at two sizes.
    for retained in [1_000u64, 100_000] {
        let buffer = filled(retained);
        let middle = retained / 2;
        let since = line(middle).ts;
        group.throughput(Throughput::Elements(200));
        group.bench_function(format!("since, limit 200, {retained} retained"), |b| {
            b.iter(|| buffer.query(LogCursor::Since(black_box(since)), LogWindow::First(200)));
        });
        group.bench_function(format!("after, limit 200, {retained} retained"), |b| {
            b.iter(|| buffer.query(LogCursor::AfterSeq(black_box(middle)), LogWindow::First(200)));
        });
        group.bench_function(format!("tail 200, {retained} retained"), |b| {
            b.iter(|| buffer.query(LogCursor::Start, LogWindow::Last(black_box(200))));
        });
        group.bench_function(format!("follower read of 256, {retained} retained"), |b| {
            b.iter(|| buffer.read_after(black_box(middle), 256));
        });
    }
    group.finish();
}

/// The logs route's other per-request work: 200 lines serialized as its JSON body.
fn serialize(c: &mut Criterion) {
    let lines: Vec<LogLine> = (1..=200).map(line).collect();
    let mut group = c.benchmark_group("serialize");
    group.throughput(Throughput::Elements(200));

    group.bench_function("200 lines as JSON", |b| {
        b.iter(|| serde_json::to_vec(black_box(&lines)).expect("serializable lines"));
    });
    group.finish();
}

criterion_group!(benches, split, stamp, log_buffer, serialize);
criterion_main!(benches);
