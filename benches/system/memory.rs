//! Part 5: the server's resident memory with many finished jobs of 10,000 lines each
//! kept in memory, against the caps it was configured with.
//!
//! It runs twice: with the default byte cap, where the 10,000-line cap bounds each
//! log, and with a byte cap below what 10,000 lines are charged, where the byte cap
//! does. The target is that resident memory above the idle server's stays within
//! retained jobs × byte cap. The table also shows the memory per charged byte, which
//! shows how well [`coppice::jobs::line_cost`] accounts for a line.

use std::time::Duration;

use coppice::jobs::line_cost;
use coppice::line::{LogLine, SOURCE, Step, Stream};

use crate::Settings;
use crate::report::Row;
use crate::server::{ServeLimits, Server, connect, runtime, submit, wait_finished};

const LINES_PER_JOB: u64 = 10_000;

/// One configuration of the server's caps.
struct Scenario {
    label: &'static str,
    log_bytes: usize,
}

/// The default byte cap, where the 10,000-line cap is what bounds each log, and a 1 MiB
/// cap, about half of what 10,000 generated lines are charged, where the byte cap does.
const SCENARIOS: [Scenario; 2] = [
    Scenario { label: "line cap binds (10000 lines, 16 MiB)", log_bytes: 16 * 1024 * 1024 },
    Scenario { label: "byte cap binds (1 MiB)", log_bytes: 1024 * 1024 },
];

pub fn run(settings: &Settings) -> Vec<Row> {
    let jobs = settings.scale(1_000, 50) as usize;
    let mut rows = Vec::new();
    for scenario in &SCENARIOS {
        eprintln!("memory: {jobs} finished jobs of {LINES_PER_JOB} lines, {}", scenario.label);
        rows.extend(run_scenario(settings, jobs, scenario));
    }
    rows
}

fn run_scenario(settings: &Settings, jobs: usize, scenario: &Scenario) -> Vec<Row> {
    let limits = ServeLimits {
        log_lines: LINES_PER_JOB as usize,
        log_bytes: scenario.log_bytes,
        retained_jobs: jobs,
        max_concurrent_builds: 2,
    };
    let server = Server::start(&settings.coppice, limits);
    server.set_output(&format!("{LINES_PER_JOB} --buffered"));
    let idle_kib = server.status_kib("VmRSS:");

    let runtime = runtime();
    let started = std::time::Instant::now();
    let failed = runtime.block_on(async {
        let mut connection = connect(server.address).await.expect("connect");
        let mut ids = Vec::new();
        for index in 0..jobs {
            ids.push(submit(&mut connection, &format!("memory-{index:05}")).await);
        }
        let mut failed = 0;
        for id in &ids {
            let view = wait_finished(&mut connection, id, Duration::from_secs(900)).await;
            failed += usize::from(view["status"] != "succeeded");
        }
        failed
    });
    eprintln!("memory: {jobs} jobs ran in {:.1} s", started.elapsed().as_secs_f64());
    let rss_kib = server.status_kib("VmRSS:");
    let peak_kib = server.status_kib("VmHWM:");

    // Every generated line has the same length, so one line's cost is every line's.
    let cost = line_cost(&sample_line());
    let lines_kept = (scenario.log_bytes / cost).min(LINES_PER_JOB as usize);
    let charged = (lines_kept * cost * jobs) as f64;
    let cap_mib = (scenario.log_bytes * jobs) as f64 / 1_048_576.0;
    let above_idle_mib = (rss_kib.saturating_sub(idle_kib)) as f64 / 1024.0;
    let mib = |value: f64| format!("{value:.0} MiB");
    let label = scenario.label;

    vec![
        Row::from_samples("5 memory", format!("{label}: idle server RSS"), &[idle_kib as f64 / 1024.0], mib),
        Row::from_samples("5 memory", format!("{label}: RSS above idle, {jobs} finished jobs (failed: {failed})"), &[above_idle_mib], mib)
            .ratio(above_idle_mib / cap_mib)
            .target(
                format!("≤ {jobs} × {} MiB = {cap_mib:.0} MiB", scenario.log_bytes / 1_048_576),
                above_idle_mib <= cap_mib && failed == 0,
            ),
        Row::from_samples("5 memory", format!("{label}: peak RSS of the server"), &[peak_kib as f64 / 1024.0], mib),
        Row::from_samples("5 memory", format!("{label}: resident bytes per charged byte ({lines_kept} lines kept per job)"), &[above_idle_mib * 1_048_576.0 / charged], |value| {
            format!("{value:.2}")
        }),
    ]
}

/// A line as the generator prints it: 99 bytes of text.
fn sample_line() -> LogLine {
    LogLine {
        ts: chrono::Utc::now(),
        source: SOURCE.to_owned(),
        stream: Stream::Stdout,
        text: "x".repeat(crate::generate::LINE_BYTES - 1),
        step: Step::Rsync,
        seq: 1,
    }
}
