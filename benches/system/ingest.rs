//! Part 1: the executor reading a fast generator into a job's log buffer, against the
//! same generator writing to /dev/null.
//!
//! Each executor run is a fresh process (`child ingest`), so its peak RSS (VmHWM) is
//! that run's alone.

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::Instant;

use coppice::exec::{self, RunOptions, StepLog};
use coppice::jobs::{LogBuffer, LogLimits};
use coppice::line::{LineSink, LineStamper, LogLine, Step};
use serde::{Deserialize, Serialize};

use crate::report::{Row, median};
use crate::{Settings, child_command};

const LINES_PER_SECOND_TARGET: f64 = 1_000_000.0;
const RATIO_TARGET: f64 = 1.3;
const PEAK_RSS_TARGET_MIB: f64 = 64.0;

/// The result of one `child ingest` run, printed as JSON.
#[derive(Serialize, Deserialize)]
pub struct IngestResult {
    pub wall_seconds: f64,
    pub peak_rss_kib: u64,
    pub lines_seen: u64,
    pub retained: usize,
}

/// The job's sink: each line goes into the log buffer, as a job's import does.
struct BufferSink<'a>(&'a LogBuffer);

impl LineSink for BufferSink<'_> {
    fn line(&self, line: LogLine) {
        self.0.push(line);
    }

    fn lines(&self, lines: Vec<LogLine>) {
        self.0.push_all(lines);
    }
}

/// Runs the generator through the executor into a default-sized log buffer.
pub fn child_ingest(lines: u64, generator_flags: &[String]) -> IngestResult {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let buffer = LogBuffer::new(LogLimits::default());
    let sink = BufferSink(&buffer);
    let stamper = LineStamper::new(&sink);
    let command = exec::Command::new(std::env::current_exe().expect("own path")).args(["child", "generate", &lines.to_string()]).args(generator_flags);
    let log = StepLog { stamper: &stamper, step: Step::Rsync };

    let started = Instant::now();
    let result = runtime.block_on(exec::run(&command, log, &RunOptions::default()));
    let wall_seconds = started.elapsed().as_secs_f64();

    if let Err(error) = result {
        panic!("the generator failed under the executor: {error}");
    }
    let page = buffer.query(coppice::jobs::LogCursor::Start, coppice::jobs::LogWindow::Last(1));
    IngestResult {
        wall_seconds,
        peak_rss_kib: peak_rss_kib(),
        lines_seen: page.lines.last().map_or(0, |line| line.seq),
        retained: buffer.len(),
    }
}

/// VmHWM of this process: the most resident memory it ever had.
pub fn peak_rss_kib() -> u64 {
    status_field("VmHWM:")
}

/// Reads a `kB` field of /proc/self/status.
pub fn status_field(name: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn generator(lines: u64, mode: Mode) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command.args(["child", "generate", &lines.to_string()]).args(mode.flags());
    command
}

fn devnull_run(lines: u64, mode: Mode) -> f64 {
    let devnull = || Stdio::from(File::options().write(true).open("/dev/null").expect("/dev/null"));
    let started = Instant::now();
    let status = generator(lines, mode).stdout(devnull()).stderr(devnull()).status().expect("start the generator");
    assert!(status.success(), "the generator failed: {status}");
    started.elapsed().as_secs_f64()
}

/// The generator with both streams piped into one `cat` that writes to /dev/null: the
/// cost of moving the bytes through a pipe at all, with no per-line work.
fn cat_run(lines: u64, mode: Mode) -> f64 {
    let devnull = File::options().write(true).open("/dev/null").expect("/dev/null");
    let started = Instant::now();
    let (reader, writer) = std::io::pipe().expect("a pipe");
    let writer_copy = writer.try_clone().expect("duplicate the pipe");
    let mut cat = Command::new("cat").stdin(reader).stdout(devnull).spawn().expect("start cat");
    let status = generator(lines, mode).stdout(writer).stderr(writer_copy).status().expect("start the generator");
    let cat_status = cat.wait().expect("wait for cat");
    assert!(status.success(), "the generator failed: {status}");
    assert!(cat_status.success(), "cat failed: {cat_status}");
    started.elapsed().as_secs_f64()
}

fn executor_run(lines: u64, mode: Mode) -> IngestResult {
    let mut args = vec!["ingest".to_owned(), lines.to_string()];
    args.extend(mode.flags().iter().map(|flag| (*flag).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = child_command(&args).stderr(Stdio::inherit()).output().expect("start child ingest");
    assert!(output.status.success(), "child ingest failed: {}", output.status);
    serde_json::from_slice(&output.stdout).expect("child ingest prints one JSON object")
}

/// Write pattern of the generator.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One `write(2)` per line, as `println!` and `eprintln!` do.
    LineAtATime,
    /// 64 KiB blocks.
    Buffered,
}

impl Mode {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::LineAtATime => &[],
            Mode::Buffered => &["--buffered"],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::LineAtATime => "one write per line",
            Mode::Buffered => "64 KiB writes",
        }
    }
}

pub fn run(settings: &Settings) -> Vec<Row> {
    let lines = settings.scale(2_000_000, 200_000);
    let runs = settings.runs(5, 3);
    eprintln!("ingest: {runs} runs of {lines} lines through the executor and into /dev/null");

    let mut rows = Vec::new();
    for mode in [Mode::LineAtATime, Mode::Buffered] {
        rows.extend(run_mode(lines, runs, mode));
    }
    rows
}

fn run_mode(lines: u64, runs: usize, mode: Mode) -> Vec<Row> {
    let mut executor = Vec::new();
    let mut devnull = Vec::new();
    let mut cat = Vec::new();
    let mut peak_mib = Vec::new();
    let mut complete = true;
    for round in 0..runs {
        // Alternating the order keeps a slow moment of the machine from favouring one side.
        let (result, baseline) = if round % 2 == 0 {
            let result = executor_run(lines, mode);
            (result, devnull_run(lines, mode))
        } else {
            let baseline = devnull_run(lines, mode);
            (executor_run(lines, mode), baseline)
        };
        cat.push(cat_run(lines, mode));
        // The executor's own `$ command` line comes first, so the last seq is lines + 1.
        complete &= result.lines_seen == lines + 1;
        executor.push(result.wall_seconds);
        devnull.push(baseline);
        peak_mib.push(result.peak_rss_kib as f64 / 1024.0);
    }

    let rates: Vec<f64> = executor.iter().map(|wall| lines as f64 / wall).collect();
    let ratios: Vec<f64> = executor.iter().zip(&devnull).map(|(ours, base)| ours / base).collect();
    let cat_ratios: Vec<f64> = cat.iter().zip(&devnull).map(|(piped, base)| piped / base).collect();
    let ratio = median(&ratios);
    let rate = median(&rates);
    let peak = peak_mib.iter().copied().fold(0.0, f64::max);
    let label = mode.label();
    vec![
        Row::from_samples("1 ingest", format!("{lines} lines, {label}: generator → /dev/null"), &devnull, seconds),
        Row::from_samples("1 ingest", format!("{label}: generator → pipe → cat → /dev/null (reference)"), &cat, seconds)
            .ratio(median(&cat_ratios)),
        Row::from_samples("1 ingest", format!("{label}: generator → executor → job log buffer"), &executor, seconds)
            .ratio(ratio)
            .target(format!("ratio ≤ {RATIO_TARGET}"), ratio <= RATIO_TARGET),
        Row::from_samples("1 ingest", format!("{label}: lines ingested per second"), &rates, |value| format!("{:.2} M/s", value / 1e6))
            .target("≥ 1 M/s, every line seen", rate >= LINES_PER_SECOND_TARGET && complete),
        Row::from_samples("1 ingest", format!("{label}: peak RSS of the ingesting process"), &peak_mib, |value| format!("{value:.1} MiB"))
            .target(format!("< {PEAK_RSS_TARGET_MIB} MiB"), peak < PEAK_RSS_TARGET_MIB),
    ]
}

pub fn seconds(value: f64) -> String {
    format!("{value:.3} s")
}
