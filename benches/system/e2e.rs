//! Part 2: `coppice import` against `scripts/coppice-import-oci.sh` on the bench image,
//! alternating, with the image removed from buildah's storage before every run so
//! that each pull fetches it from the loopback registry.
//!
//! The builder's step times come from its own `--json` lines (the first `ts` of each
//! step). The script's come from bash's xtrace with `$EPOCHREALTIME` in `PS4`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::Settings;
use crate::ingest::seconds;
use crate::report::{Row, Verdict, median};

const RATIO_TARGET: f64 = 0.9;

/// Steps in the order the import runs them, with the time before the first step.
const STEPS: [&str; 7] = ["start", "pull", "mount", "rsync", "snapshot", "reload", "cleanup"];

/// One timed import: its wall time and the seconds spent in each step.
struct Timed {
    wall: f64,
    steps: BTreeMap<&'static str, f64>,
    /// Command lines with the seconds until the next command started.
    commands: Vec<(String, f64)>,
}

struct Env {
    jails: String,
    image: String,
    script: PathBuf,
}

pub fn run(settings: &Settings) -> Vec<Row> {
    let env = Env {
        jails: std::env::var("COPPICE_JAILS_DATASET").expect("COPPICE_JAILS_DATASET; source /var/lib/coppice/test.env"),
        image: std::env::var("COPPICE_TEST_BENCH_IMAGE").expect("COPPICE_TEST_BENCH_IMAGE; source /var/lib/coppice/test.env"),
        script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/coppice-import-oci.sh"),
    };
    let pairs = settings.runs(5, 1);
    eprintln!("e2e: {pairs} pairs of imports of {} (builder and script, alternating)", env.image);

    let mut builder = Vec::new();
    let mut script = Vec::new();
    let mut parity = None;
    for pair in 0..pairs {
        let tag = format!("{}-{pair}", std::process::id());
        let builder_name = format!("bench-builder-{tag}");
        let script_name = format!("bench-script-{tag}");
        let builder_guard = DatasetGuard(format!("{}/{builder_name}-template", env.jails));
        let script_guard = DatasetGuard(format!("{}/{script_name}-template", env.jails));
        let (ours, theirs) = if pair % 2 == 0 {
            let ours = timed(&env, || builder_run(settings, &env, &builder_name));
            (ours, timed(&env, || script_run(&env, &script_name)))
        } else {
            let theirs = timed(&env, || script_run(&env, &script_name));
            (timed(&env, || builder_run(settings, &env, &builder_name)), theirs)
        };
        eprintln!("e2e: pair {pair}: builder {:.2} s, script {:.2} s", ours.wall, theirs.wall);

        if parity.is_none() {
            parity = Some(same_trees(&builder_guard.0, &script_guard.0));
        }
        drop((builder_guard, script_guard));
        builder.push(ours);
        script.push(theirs);
    }

    print_steps(&builder, &script);
    rows(&builder, &script, parity.unwrap_or(false))
}

fn rows(builder: &[Timed], script: &[Timed], parity: bool) -> Vec<Row> {
    let builder_walls: Vec<f64> = builder.iter().map(|run| run.wall).collect();
    let script_walls: Vec<f64> = script.iter().map(|run| run.wall).collect();
    let ratios: Vec<f64> = builder_walls.iter().zip(&script_walls).map(|(ours, theirs)| ours / theirs).collect();
    let ratio = median(&ratios);

    let mut rows = vec![
        Row::from_samples("2 e2e", "import by scripts/coppice-import-oci.sh", &script_walls, seconds),
        Row::from_samples("2 e2e", "import by coppice import", &builder_walls, seconds)
            .ratio(ratio)
            .target(format!("ratio ≤ {RATIO_TARGET}"), ratio <= RATIO_TARGET),
    ];
    rows.push(
        Row::from_samples("2 e2e", "template trees identical (rsync -n -c itemizes nothing)", &[], |_| String::new())
            .with_median(if parity { "identical" } else { "DIFFER" })
            .target("identical", parity),
    );

    for step in STEPS {
        let ours: Vec<f64> = builder.iter().map(|run| run.steps.get(step).copied().unwrap_or(0.0)).collect();
        let theirs: Vec<f64> = script.iter().map(|run| run.steps.get(step).copied().unwrap_or(0.0)).collect();
        let mut row = Row::from_samples("2 e2e", format!("step {step}: builder (script median)"), &ours, seconds);
        row.median = format!("{} ({})", seconds(median(&ours)), seconds(median(&theirs)));
        if median(&theirs) > 0.0 {
            row = row.ratio(median(&ours) / median(&theirs));
        }
        row.verdict = Verdict::Info;
        rows.push(row);
    }
    rows
}

/// Prints the median time of every command, which BENCHMARKS.md quotes.
fn print_steps(builder: &[Timed], script: &[Timed]) {
    for (side, runs) in [("builder", builder), ("script", script)] {
        eprintln!("e2e: {side} commands (median seconds until the next command started):");
        let Some(first) = runs.first() else { continue };
        for (index, (command, _)) in first.commands.iter().enumerate() {
            let samples: Vec<f64> = runs.iter().filter_map(|run| run.commands.get(index).map(|(_, secs)| *secs)).collect();
            eprintln!("  {:>8.3}  {command}", median(&samples));
        }
    }
}

/// Removes the image and flushes the disks, then runs one import.
fn timed(env: &Env, import: impl FnOnce() -> Timed) -> Timed {
    let removed = run_command(Command::new("buildah").args(["rmi", &env.image]));
    let stderr = String::from_utf8_lossy(&removed.stderr);
    if !removed.status.success() && !stderr.contains("image not known") && !stderr.contains("not found") {
        panic!("buildah rmi {} failed: {stderr}", env.image);
    }
    run_command(&mut Command::new("sync"));
    import()
}

fn builder_run(settings: &Settings, env: &Env, name: &str) -> Timed {
    let from = format!("oci:{}", env.image);
    let started = Utc::now();
    let output = run_command(Command::new(&settings.coppice).args(["import", "--json", name, &from]));
    let ended = Utc::now();
    assert!(output.status.success(), "coppice import {name} failed:\n{}", String::from_utf8_lossy(&output.stderr));

    let mut marks: Vec<(&'static str, DateTime<Utc>)> = Vec::new();
    let mut commands: Vec<(String, DateTime<Utc>)> = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines().filter(|line| line.starts_with('{')) {
        let value: Value = serde_json::from_str(line).expect("a JSON log line");
        let ts: DateTime<Utc> = value["ts"].as_str().and_then(|ts| ts.parse().ok()).expect("a ts field");
        let step = STEPS.iter().copied().find(|step| value["step"] == *step).expect("a known step");
        if marks.last().is_none_or(|(last, _)| *last != step) {
            marks.push((step, ts));
        }
        if let Some(command) = value["text"].as_str().and_then(|text| text.strip_prefix("$ ")) {
            commands.push((short_command(command), ts));
        }
    }
    marks.insert(0, ("start", started));
    commands.push(("(exit)".to_owned(), ended));
    Timed { wall: secs(ended - started), steps: spans(&marks, ended), commands: gaps(&commands) }
}

fn script_run(env: &Env, name: &str) -> Timed {
    let started = Utc::now();
    // bash ignores PS4 from the environment when it runs as root, so it is set inside.
    let output = run_command(
        Command::new("bash")
            .args(["-c", r#"PS4='+ $EPOCHREALTIME '; set -x; source "$0" "$@""#])
            .arg(&env.script)
            .args([name, &env.image])
            .env("COPPICE_JAILS_DATASET", &env.jails),
    );
    let ended = Utc::now();
    assert!(output.status.success(), "{} {name} failed:\n{}", env.script.display(), String::from_utf8_lossy(&output.stderr));

    let mut marks: Vec<(&'static str, DateTime<Utc>)> = vec![("start", started)];
    let mut commands: Vec<(String, DateTime<Utc>)> = Vec::new();
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        let Some((ts, text)) = trace_line(line) else { continue };
        let step = script_step(text);
        if let Some(step) = step {
            if marks.last().is_none_or(|(last, _)| *last != step) {
                marks.push((step, ts));
            }
            commands.push((short_command(text), ts));
        } else if let Some(last) = commands.last()
            && last.0 != "(shell)"
        {
            // The shell's own work after a command marks where that command ended.
            commands.push(("(shell)".to_owned(), ts));
        }
    }
    commands.push(("(exit)".to_owned(), ended));
    Timed { wall: secs(ended - started), steps: spans(&marks, ended), commands: gaps(&commands) }
}

/// Splits an xtrace line `++ 1796414785.411817 buildah pull ...` into time and text.
fn trace_line(line: &str) -> Option<(DateTime<Utc>, &str)> {
    let rest = line.trim_start_matches('+').strip_prefix(' ')?;
    let (stamp, text) = rest.split_once(' ')?;
    let (whole, fraction) = stamp.split_once('.')?;
    let micros = whole.parse::<i64>().ok()? * 1_000_000 + fraction.parse::<i64>().ok()?;
    Some((DateTime::from_timestamp_micros(micros)?, text))
}

/// Maps a command of the script to the builder step that does the same work.
fn script_step(text: &str) -> Option<&'static str> {
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        ["buildah", "pull"] => Some("pull"),
        ["buildah", "from" | "mount"] => Some("mount"),
        ["zfs", "create" | "get"] | ["rsync", _] => Some("rsync"),
        ["zfs", "snapshot"] => Some("snapshot"),
        ["buildah", "umount" | "rm"] | ["zfs", "destroy"] => Some("cleanup"),
        _ => None,
    }
}

fn short_command(text: &str) -> String {
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Seconds from each mark to the next one, the last one ending at `end`.
fn spans(marks: &[(&'static str, DateTime<Utc>)], end: DateTime<Utc>) -> BTreeMap<&'static str, f64> {
    let mut spans = BTreeMap::new();
    for (index, (step, at)) in marks.iter().enumerate() {
        let next = marks.get(index + 1).map_or(end, |(_, next)| *next);
        *spans.entry(*step).or_insert(0.0) += secs(next - *at);
    }
    spans
}

fn gaps(commands: &[(String, DateTime<Utc>)]) -> Vec<(String, f64)> {
    commands.windows(2).map(|pair| (pair[0].0.clone(), secs(pair[1].1 - pair[0].1))).collect()
}

fn secs(delta: chrono::TimeDelta) -> f64 {
    delta.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// Compares the two templates with a dry-run rsync that checksums every file; an
/// identical pair itemizes nothing. Directory times are left out, as the parity test
/// leaves them out: the root's time is that of the working container's mount, which
/// differs between any two imports.
fn same_trees(builder_dataset: &str, script_dataset: &str) -> bool {
    let builder = mountpoint(builder_dataset);
    let script = mountpoint(script_dataset);
    let output = run_command(
        Command::new("rsync")
            .args(["-aHAXn", "--checksum", "--numeric-ids", "--delete", "--omit-dir-times", "--itemize-changes"])
            .arg(format!("{}/", builder.display()))
            .arg(format!("{}/", script.display())),
    );
    let differences = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !differences.trim().is_empty() {
        eprintln!("e2e: the templates differ ({}):\n{differences}", output.status);
        return false;
    }
    true
}

fn mountpoint(dataset: &str) -> PathBuf {
    let output = run_command(Command::new("zfs").args(["get", "-H", "-o", "value", "mountpoint", dataset]));
    assert!(output.status.success(), "zfs get mountpoint {dataset} failed");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// Destroys a dataset, retrying while zfs-fuse reports it busy.
pub fn destroy(dataset: &str) {
    for attempt in 1..=10 {
        let output = run_command(Command::new("zfs").args(["destroy", "-r", dataset]));
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() || stderr.contains("does not exist") {
            return;
        }
        if !stderr.contains("busy") || attempt == 10 {
            eprintln!("e2e: failed to destroy {dataset}: {stderr}");
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn run_command(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap_or_else(|error| panic!("failed to start {command:?}: {error}"))
}

/// Destroys a dataset when dropped, so that a failed run leaves none behind.
pub struct DatasetGuard(pub String);

impl Drop for DatasetGuard {
    fn drop(&mut self) {
        destroy(&self.0);
    }
}
