//! Shared step inputs (the tool paths, the log, the run limits) and the steps' error type.

use std::path::PathBuf;

use tokio::time::Instant;

use crate::exec::{self, Command, ExecError, Finished, RunOptions, StepLog};

/// Paths of the CLIs the steps run.
#[derive(Clone, Debug)]
pub struct Tools {
    pub buildah: PathBuf,
    pub rsync: PathBuf,
    pub zfs: PathBuf,
}

impl Default for Tools {
    /// Bare program names, looked up on PATH when a command runs.
    fn default() -> Self {
        Self {
            buildah: PathBuf::from("buildah"),
            rsync: PathBuf::from("rsync"),
            zfs: PathBuf::from("zfs"),
        }
    }
}

/// The tools, the log and the limits one step runs its commands with.
#[derive(Clone, Copy)]
pub struct StepContext<'a> {
    pub tools: &'a Tools,
    pub log: StepLog<'a>,
    /// The cancel token, grace period and pipe wait of every command.
    pub options: &'a RunOptions,
    /// When the whole step must be done; each command gets the time left.
    pub deadline: Option<Instant>,
}

/// Errors of the steps.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Exec(#[from] ExecError),

    #[error("`{command}` printed no {expected}; its last output line was {last_line:?}")]
    UnexpectedOutput {
        command: String,
        expected: &'static str,
        last_line: Option<String>,
    },

    #[error(
        "dataset {dataset} already exists, so this import left it untouched; another import may have created it a moment ago, so choose another name unless you know it is an unfinished leftover"
    )]
    DatasetExists { dataset: String },
}

impl StepError {
    pub fn exec(&self) -> Option<&ExecError> {
        match self {
            StepError::Exec(error) => Some(error),
            _ => None,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.exec().is_some_and(ExecError::is_cancelled)
    }
}

/// Runs one command of a step with the step's log and limits.
pub async fn run_step_command(context: StepContext<'_>, command: &Command, capture_stdout: bool) -> Result<Finished, ExecError> {
    let timeout = context
        .deadline
        .map(|deadline| deadline.saturating_duration_since(Instant::now()));
    let options = RunOptions {
        timeout,
        capture_stdout,
        ..context.options.clone()
    };
    exec::run(command, context.log, &options).await
}

/// Returns the last non-empty line of `lines`, trimmed.
pub(crate) fn last_nonempty(lines: &[String]) -> Option<&str> {
    lines.iter().rev().map(|line| line.trim()).find(|line| !line.is_empty())
}
