//! Part 3: many SSE clients follow one job that prints many lines.
//!
//! The stand-in rsync waits for a start file, so that every client is connected before
//! the first line; then it prints at a fixed rate. Each client checks that it got every
//! line exactly once and in order, and records each line's delay from its `ts` to its
//! arrival. The job's duration (`startedAt` to `finishedAt`) with the clients is
//! compared with its duration without any, in alternating runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use memchr::memmem;

use crate::Settings;
use crate::ingest::seconds;
use crate::report::{Row, median, percentile};
use crate::server::{ServeLimits, Server, connect, job_seconds, runtime, submit, wait_finished};

const P99_TARGET_MS: f64 = 50.0;
const DURATION_RATIO_TARGET: f64 = 1.1;

/// The lines one client received and its checks of them.
#[derive(Default)]
struct Seen {
    lines: u64,
    in_order: bool,
    last_seq: u64,
    skipped_notices: u64,
    done: bool,
    /// Microseconds from each line's `ts` to its arrival.
    delays: Vec<u32>,
}

pub fn run(settings: &Settings) -> Vec<Row> {
    let clients = settings.scale(100, 20) as usize;
    let lines = settings.scale(100_000, 20_000);
    let rate = 20_000;
    let runs = settings.runs(3, 1);
    eprintln!("sse: {runs} runs of a job printing {lines} lines at {rate} lines/s, with {clients} watchers and with none");

    let server = Server::start(&settings.coppice, ServeLimits::default());
    let runtime = runtime();

    let mut watched = Vec::new();
    let mut alone = Vec::new();
    let mut delays: Vec<f64> = Vec::new();
    let mut p99s = Vec::new();
    let mut p50s = Vec::new();
    let mut complete = true;
    for round in 0..runs {
        let order = if round % 2 == 0 { [clients, 0] } else { [0, clients] };
        for watchers in order {
            let go = server.path(&format!("go-{round}-{watchers}"));
            server.set_output(&format!("{lines} --rate {rate} --wait-for {}", go.display()));
            let (seconds, seen, last_seq) = runtime.block_on(one_job(&server, watchers, &go, &format!("sse-{round}-{watchers}")));
            if watchers == 0 {
                alone.push(seconds);
                continue;
            }
            watched.push(seconds);
            for client in &seen {
                let ok = client.done && client.in_order && client.skipped_notices == 0 && client.lines == last_seq && client.last_seq == last_seq;
                if !ok {
                    eprintln!(
                        "sse: a client saw {} of {last_seq} lines (in order: {}, skipped notices: {}, done: {})",
                        client.lines, client.in_order, client.skipped_notices, client.done
                    );
                }
                complete &= ok;
            }
            let run_delays: Vec<f64> = seen.iter().flat_map(|client| client.delays.iter().map(|micros| f64::from(*micros) / 1000.0)).collect();
            p50s.push(percentile(&run_delays, 0.5));
            p99s.push(percentile(&run_delays, 0.99));
            delays.extend(run_delays);
        }
    }

    let ratios: Vec<f64> = watched.iter().zip(&alone).map(|(with, without)| with / without).collect();
    let ratio = median(&ratios);
    let p99 = median(&p99s);
    let milliseconds = |value: f64| format!("{value:.1} ms");
    vec![
        Row::from_samples("3 sse", format!("job of {lines} lines at {rate}/s, no watchers"), &alone, seconds),
        Row::from_samples("3 sse", format!("same job, {clients} watchers"), &watched, seconds)
            .ratio(ratio)
            .target(format!("ratio ≤ {DURATION_RATIO_TARGET}"), ratio <= DURATION_RATIO_TARGET),
        Row::from_samples("3 sse", "every watcher got every line once, in order", &[], |_| String::new())
            .target("all", complete)
            .with_median(if complete { "all" } else { "NO" }),
        Row::from_samples("3 sse", "line delay ts → client, p50", &p50s, milliseconds),
        Row::from_samples("3 sse", "line delay ts → client, p99", &p99s, milliseconds)
            .target(format!("< {P99_TARGET_MS} ms"), p99 < P99_TARGET_MS),
    ]
}

/// Runs one job with `watchers` clients and returns its duration, what each client
/// saw, and the job's last `seq`.
async fn one_job(server: &Server, watchers: usize, go: &std::path::Path, name: &str) -> (f64, Vec<Seen>, u64) {
    let mut control = connect(server.address).await.expect("connect");
    let job = submit(&mut control, name).await;

    let connected = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let address = server.address;
        let path = format!("/templates/builds/{job}/events");
        let connected = Arc::clone(&connected);
        tasks.push(tokio::spawn(async move { watch(address, &path, &connected).await }));
    }
    while connected.load(Ordering::Acquire) < watchers {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    std::fs::write(go, "").expect("write the start file");

    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.expect("a watcher task"));
    }
    let view = wait_finished(&mut control, &job, Duration::from_secs(120)).await;
    assert_eq!(view["status"], "succeeded", "the stand-in job failed: {view}");
    let tail = control.get(&format!("/templates/builds/{job}/logs?tail=1")).await.expect("GET logs").json();
    let last_seq = tail["logs"][0]["seq"].as_u64().expect("the last line's seq");
    (job_seconds(&view), seen, last_seq)
}

async fn watch(address: std::net::SocketAddr, path: &str, connected: &AtomicUsize) -> Seen {
    let mut connection = connect(address).await.expect("connect a watcher");
    let status = connection.open_stream(path).await.expect("open the event stream");
    assert_eq!(status, 200, "GET {path}");
    connected.fetch_add(1, Ordering::Release);

    // The watchers share the machine's two cores with the server, so they parse bytes
    // in place and look only at what the checks need.
    let mut seen = Seen { in_order: true, ..Seen::default() };
    let mut pending: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut clock = TsParser::default();
    while let Some(chunk) = connection.next_chunk().await.expect("read the event stream") {
        let arrived = Utc::now().timestamp_micros();
        pending.extend_from_slice(&chunk);
        let mut consumed = 0;
        while let Some(end) = memmem::find(&pending[consumed..], b"\n\n") {
            read_event(&pending[consumed..consumed + end], arrived, &mut clock, &mut seen);
            consumed += end + 2;
        }
        pending.drain(..consumed);
        if seen.done {
            break;
        }
    }
    seen
}

fn read_event(event: &[u8], arrived: i64, clock: &mut TsParser, seen: &mut Seen) {
    let mut name: &[u8] = b"";
    let mut id = None;
    let mut data: &[u8] = b"";
    for line in event.split(|byte| *byte == b'\n') {
        if let Some(comment) = line.strip_prefix(b":") {
            if memmem::find(comment, b"dropped").is_some() {
                seen.skipped_notices += 1;
            }
        } else if let Some(value) = line.strip_prefix(b"event: ") {
            name = value;
        } else if let Some(value) = line.strip_prefix(b"id: ") {
            id = parse_number(value);
        } else if let Some(value) = line.strip_prefix(b"data: ") {
            data = value;
        }
    }
    match name {
        b"log" => {
            let seq = id.unwrap_or(0);
            seen.in_order &= seq == seen.last_seq + 1;
            seen.last_seq = seq;
            seen.lines += 1;
            if let Some(ts) = clock.micros(data) {
                seen.delays.push(u32::try_from((arrived - ts).max(0)).unwrap_or(u32::MAX));
            }
        }
        b"done" => seen.done = true,
        _ => {}
    }
}

fn parse_number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |value, digit| value * 10 + u64::from(digit - b'0')))
}

/// Reads `"ts":"YYYY-MM-DDTHH:MM:SS.ffffffZ"` from a log event's JSON without a full
/// parse, caching the date, since clients here parse millions of lines.
#[derive(Default)]
struct TsParser {
    date: Vec<u8>,
    midnight_micros: i64,
}

impl TsParser {
    fn micros(&mut self, data: &[u8]) -> Option<i64> {
        let start = memmem::find(data, br#""ts":""#)? + 6;
        let ts = data.get(start..start + 27)?;
        let (date, time) = (&ts[..10], &ts[11..26]);
        if date != self.date.as_slice() {
            let day = NaiveDate::parse_from_str(std::str::from_utf8(date).ok()?, "%Y-%m-%d").ok()?;
            self.midnight_micros = day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
            self.date = date.to_vec();
        }
        let number = |range: std::ops::Range<usize>| time.get(range).and_then(parse_number).map(|value| value as i64);
        let (hours, minutes, secs, micros) = (number(0..2)?, number(3..5)?, number(6..8)?, number(9..15)?);
        Some(self.midnight_micros + ((hours * 60 + minutes) * 60 + secs) * 1_000_000 + micros)
    }
}
