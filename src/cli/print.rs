//! Prints output lines as they arrive, as text or as JSON lines.

use std::io::Write;

use coppice::line::{LineSink, LogLine};

/// A sink that writes each line to stdout at once.
pub struct PrintSink {
    pub json: bool,
}

impl LineSink for PrintSink {
    fn line(&self, line: LogLine) {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (the reader quit) must not stop the import, so write errors
        // are ignored here.
        let _ = if self.json {
            serde_json::to_writer(&mut stdout, &line).map_err(std::io::Error::from).and_then(|()| writeln!(stdout))
        } else {
            writeln!(
                stdout,
                "{} {} {} | {}",
                line.ts.format("%H:%M:%S%.6f"),
                line.step,
                line.stream.as_str(),
                line.text
            )
        };
    }
}
