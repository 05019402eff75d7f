//! Samples, their summary, and the one table the harness prints.

use std::fmt::Write as _;

/// Returns the middle value, or the mean of the two middle values for an even count.
pub fn median(samples: &[f64]) -> f64 {
    let sorted = sorted(samples);
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

/// Returns the value below which `fraction` of the samples lie (nearest rank).
pub fn percentile(samples: &[f64], fraction: f64) -> f64 {
    let sorted = sorted(samples);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// Whether a measurement met its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// A measurement without a target of its own, shown for context.
    Info,
}

impl Verdict {
    pub fn of(passed: bool) -> Self {
        if passed { Verdict::Pass } else { Verdict::Miss }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Miss => "MISS",
            Verdict::Info => "-",
        }
    }
}

/// One line of the result table.
#[derive(Clone, Debug)]
pub struct Row {
    pub part: &'static str,
    pub measurement: String,
    /// Median and spread, already formatted with their unit.
    pub median: String,
    pub spread: String,
    pub ratio: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    /// Builds a row summarising `samples` shown with `format`, such as `|v| format!("{v:.2} s")`.
    pub fn from_samples(part: &'static str, measurement: impl Into<String>, samples: &[f64], format: impl Fn(f64) -> String) -> Self {
        let (low, high) = spread(samples);
        Self {
            part,
            measurement: measurement.into(),
            median: format(median(samples)),
            spread: format!("{} – {} (n={})", format(low), format(high), samples.len()),
            ratio: String::new(),
            target: String::new(),
            verdict: Verdict::Info,
        }
    }

    /// Replaces the median with a word, for a check that has no samples.
    pub fn with_median(mut self, text: &str) -> Self {
        self.median = text.to_owned();
        self.spread = String::new();
        self
    }

    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = format!("{ratio:.2}");
        self
    }

    pub fn target(mut self, target: impl Into<String>, passed: bool) -> Self {
        self.target = target.into();
        self.verdict = Verdict::of(passed);
        self
    }
}

/// Returns the smallest and largest sample.
pub fn spread(samples: &[f64]) -> (f64, f64) {
    let sorted = sorted(samples);
    match (sorted.first(), sorted.last()) {
        (Some(low), Some(high)) => (*low, *high),
        _ => (f64::NAN, f64::NAN),
    }
}

/// Renders the rows as a Markdown table, which reads as plain text too.
pub fn render(rows: &[Row]) -> String {
    let header = ["part", "measurement", "median", "spread (min – max)", "ratio", "target", "result"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|row| {
            [
                row.part.to_owned(),
                row.measurement.clone(),
                row.median.clone(),
                row.spread.clone(),
                row.ratio.clone(),
                row.target.clone(),
                row.verdict.as_str().to_owned(),
            ]
        })
        .collect();

    let mut widths = header.map(|title| title.chars().count());
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let mut table = String::new();
    write_cells(&mut table, &header.map(str::to_owned), &widths);
    write_cells(&mut table, &widths.map(|width| "-".repeat(width)), &widths);
    for row in &cells {
        write_cells(&mut table, row, &widths);
    }
    table
}

fn write_cells(table: &mut String, cells: &[String; 7], widths: &[usize; 7]) {
    table.push('|');
    for (cell, width) in cells.iter().zip(widths) {
        let pad = width - cell.chars().count();
        let _ = write!(table, " {cell}{} |", " ".repeat(pad));
    }
    table.push('\n');
}
