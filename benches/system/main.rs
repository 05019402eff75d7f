//! The system benchmark: what the builder adds to the tools it runs, measured side by
//! side in one run. `scripts/bench` sets the machine up and runs it; it prints one
//! table of medians, spreads, ratios and targets.
//!
//! Parts: 1 `ingest` (executor throughput and memory), 2 `e2e` (the import against
//! the plain shell pipeline), 3 `sse` (live watchers), 4 `logs` (log queries under
//! load), 5 `memory` (finished jobs kept in memory). Every ratio compares two things
//! measured in the same run, and every run of a pair alternates which side goes first.
//!
//! The binary also runs as its own helper processes (`child generate`, `child
//! ingest`), so that a generator and a measured process each start fresh.

mod e2e;
mod generate;
mod http;
mod ingest;
mod memory;
mod queries;
mod report;
mod server;
mod sse;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use report::{Row, Verdict, render};

/// The parts to run, their size, and the binary they measure.
pub struct Settings {
    pub quick: bool,
    /// Overrides the number of runs of each measurement.
    pub runs: Option<usize>,
    pub parts: Vec<String>,
    /// A file to write the table to besides stdout.
    pub out: Option<PathBuf>,
    /// The release `coppice` binary to run.
    pub coppice: PathBuf,
}

impl Settings {
    /// `full` in a full run, `quick` with `--quick`.
    pub fn scale(&self, full: u64, quick: u64) -> u64 {
        if self.quick { quick } else { full }
    }

    pub fn runs(&self, full: usize, quick: usize) -> usize {
        self.runs.unwrap_or(if self.quick { quick } else { full })
    }

    fn wants(&self, part: &str) -> bool {
        self.parts.is_empty() || self.parts.iter().any(|wanted| wanted == part)
    }
}

const PARTS: [&str; 5] = ["ingest", "e2e", "sse", "logs", "memory"];

const USAGE: &str = "usage: scripts/bench [--quick] [--runs N] [--only PART[,PART...]] [--out FILE]
  PART is one of ingest, e2e, sse, logs, memory";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();

    if args.first().map(String::as_str) == Some("child") {
        return child(&args[1..]);
    }
    // `cargo test --all-targets` runs bench targets without `--bench`; this benchmark
    // needs root, ZFS and a registry, so it runs only from scripts/bench.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("system benchmark: skipped; run it with scripts/bench");
        return ExitCode::SUCCESS;
    }

    let settings = match parse_settings(&args) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("system benchmark: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    run(&settings)
}

fn parse_settings(args: &[String]) -> Result<Settings, String> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut settings = Settings {
        quick: false,
        runs: None,
        parts: Vec::new(),
        out: None,
        coppice: std::env::var_os("COPPICE_BENCH_BIN").map_or_else(|| manifest_dir.join("target/release/coppice"), PathBuf::from),
    };
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--quick" => settings.quick = true,
            "--runs" => {
                let value = words.next().ok_or("--runs needs a number")?;
                let runs = value.parse().ok().filter(|runs| *runs > 0);
                settings.runs = Some(runs.ok_or_else(|| format!("invalid --runs {value:?}: expected a whole number above 0"))?);
            }
            "--only" => {
                let value = words.next().ok_or("--only needs a list of parts")?;
                for part in value.split(',') {
                    if !PARTS.contains(&part) {
                        return Err(format!("unknown part {part:?} in --only"));
                    }
                    settings.parts.push(part.to_owned());
                }
            }
            "--out" => settings.out = Some(PathBuf::from(words.next().ok_or("--out needs a file")?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !settings.coppice.is_file() {
        return Err(format!("{} is missing; build it with `cargo build --release`", settings.coppice.display()));
    }
    Ok(settings)
}

/// One part of the benchmark: runs its measurements and returns its table rows.
type Part = fn(&Settings) -> Vec<Row>;

fn run(settings: &Settings) -> ExitCode {
    let started = std::time::Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    // The import runs last: zfs-fuse goes on flushing and destroying its datasets for a
    // while after it, which would slow whatever came next. The table keeps part order.
    let parts: [(&str, Part); 5] =
        [("ingest", ingest::run), ("sse", sse::run), ("logs", queries::run), ("memory", memory::run), ("e2e", e2e::run)];
    for (name, part) in parts {
        if settings.wants(name) {
            rows.extend(part(settings));
        }
    }
    rows.sort_by_key(|row| row.part.chars().next());

    let table = render(&rows);
    let misses = rows.iter().filter(|row| row.verdict == Verdict::Miss).count();
    let mode = if settings.quick { "quick" } else { "full" };
    let summary = format!("{mode} run in {:.0} s: {misses} of the targets missed", started.elapsed().as_secs_f64());
    println!("\n{table}\n{summary}");
    if let Some(out) = &settings.out
        && let Err(error) = std::fs::write(out, format!("{table}\n{summary}\n"))
    {
        eprintln!("system benchmark: failed to write {}: {error}", out.display());
    }
    ExitCode::SUCCESS
}

fn child(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("generate") => match generate::generate(&generate::GenerateArgs::parse(&args[1..])) {
            Ok(()) => ExitCode::SUCCESS,
            // A reader that went away is the reader's problem; report it and stop.
            Err(error) => {
                eprintln!("generate: {error}");
                ExitCode::FAILURE
            }
        },
        Some("ingest") => {
            let lines = args.get(1).and_then(|value| value.parse().ok()).expect("child ingest LINES");
            let result = ingest::child_ingest(lines, &args[2..]);
            println!("{}", serde_json::to_string(&result).expect("serialize the result"));
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("system benchmark: unknown child mode {other:?}");
            ExitCode::from(2)
        }
    }
}

/// This binary as a helper process: `child ARGS...`.
pub fn child_command(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command.arg("child").args(args);
    command
}
