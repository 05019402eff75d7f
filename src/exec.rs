//! The one executor: runs a command from an argv and streams its output as tagged lines.
//!
//! Every step of the import runs its CLIs through [`run`]. The child gets stdin from
//! /dev/null and its own process group, so a timeout or a cancel can signal everything
//! it started. Both pipes are read in one loop. Each chunk is split into lines as it
//! arrives, and its lines are stamped and handed to the sink before the next read.
//!
//! The loop reads the pipes with tokio directly rather than through
//! tokio-process-stream. The line stream of tokio-process-stream 0.4.1 panics on
//! invalid UTF-8 and treats a lone `\r` as part of a line. It also reports the exit
//! only after both pipes close, which a grandchild keeping a pipe open can delay forever. Owning the loop lets the executor stop
//! waiting for pipes a bounded time after the child exits.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::line::{LineStamper, Step, Stream};
use crate::split::LineSplitter;

/// How many of the last stderr lines an error keeps.
const STDERR_TAIL_LINES: usize = 5;

/// How many of the last stderr lines an error message shows, and how much of each.
const MESSAGE_LINES: usize = 3;
const MESSAGE_LINE_CHARS: usize = 300;

/// Size of one read from a pipe.
const READ_CHUNK: usize = 64 * 1024;

/// A program and its arguments, run without a shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Command {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// Sets one environment variable for the child on top of the inherited environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Returns the arguments after the program as strings (lossy), for tests and matching.
    pub fn arg_strings(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect()
    }
}

/// Shows the command as a line a POSIX shell would run unchanged.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words = std::iter::once(self.program.as_os_str()).chain(self.args.iter().map(OsString::as_os_str));
        for (index, word) in words.enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            let word = word.to_string_lossy();
            match shlex::try_quote(&word) {
                Ok(quoted) => f.write_str(&quoted)?,
                // A NUL byte cannot reach an argv anyway, so show it escaped.
                Err(_) => write!(f, "{:?}", word)?,
            }
        }
        Ok(())
    }
}

/// Exit outcome of a child process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Exit { code: i32 },
    Signal { name: String },
}

impl Outcome {
    pub fn from_status(status: ExitStatus) -> Self {
        if status.success() {
            return Outcome::Success;
        }
        if let Some(code) = status.code() {
            return Outcome::Exit { code };
        }
        let number = status.signal().unwrap_or(0);
        let name = Signal::try_from(number)
            .map(|signal| signal.as_str().to_owned())
            .unwrap_or_else(|_| format!("signal {number}"));
        Outcome::Signal { name }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success => f.write_str("exited successfully"),
            Outcome::Exit { code } => write!(f, "exited with code {code}"),
            Outcome::Signal { name } => write!(f, "was killed by {name}"),
        }
    }
}

/// Reason the executor stopped a command before it finished on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    TimedOut,
    Cancelled,
}

/// Errors of one command run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("failed to start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    #[error("failed to read the output of `{command}`: {source}")]
    Read {
        command: String,
        #[source]
        source: io::Error,
    },

    #[error("`{command}` {outcome}{}", last_line_suffix(stderr_tail))]
    Failed {
        command: String,
        outcome: Outcome,
        stderr_tail: Vec<String>,
    },

    #[error("`{command}` timed out after {} s and {outcome}", after.as_secs())]
    TimedOut {
        command: String,
        after: Duration,
        outcome: Outcome,
        stderr_tail: Vec<String>,
    },

    #[error("`{command}` was cancelled and {outcome}")]
    Cancelled {
        command: String,
        outcome: Outcome,
        stderr_tail: Vec<String>,
    },
}

impl ExecError {
    /// Returns the last stderr lines of the command, oldest first (empty when it never ran).
    pub fn stderr_tail(&self) -> &[String] {
        match self {
            ExecError::Spawn { .. } | ExecError::Read { .. } => &[],
            ExecError::Failed { stderr_tail, .. }
            | ExecError::TimedOut { stderr_tail, .. }
            | ExecError::Cancelled { stderr_tail, .. } => stderr_tail,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        matches!(self, ExecError::Cancelled { .. })
    }

    pub fn timed_out_after(&self) -> Option<Duration> {
        match self {
            ExecError::TimedOut { after, .. } => Some(*after),
            _ => None,
        }
    }
}

/// Formats the last few stderr lines for an error message. The cause is often not the
/// very last line: rsync reports a full disk, then the broken pipe that followed it.
fn last_line_suffix(stderr_tail: &[String]) -> String {
    let lines: Vec<String> = stderr_tail
        .iter()
        .map(|line| line.trim())
        .filter(|line| !line.is_empty())
        .map(|line| shorten(line, MESSAGE_LINE_CHARS))
        .collect();
    let shown = &lines[lines.len().saturating_sub(MESSAGE_LINES)..];
    if shown.is_empty() { String::new() } else { format!(": {}", shown.join(" / ")) }
}

fn shorten(line: &str, max_chars: usize) -> String {
    match line.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_owned(),
    }
}

/// Limits and controls of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Wall-clock limit of the command; `None` means no limit.
    pub timeout: Option<Duration>,
    /// Cancelling this token terminates the command like a timeout does.
    pub cancel: CancellationToken,
    /// Time between SIGTERM and SIGKILL, while output is still read.
    pub grace: Duration,
    /// How long to keep reading pipes after the child exited; a grandchild may hold them.
    pub pipe_wait: Duration,
    /// Keep every stdout line in [`Finished::stdout`] besides sending it to the sink.
    pub capture_stdout: bool,
    /// Send stdout lines to the sink. Off for machine-readable listings that the step
    /// parses and summarizes, which would otherwise fill a job's bounded log.
    pub log_stdout: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            timeout: None,
            cancel: CancellationToken::new(),
            grace: Duration::from_secs(10),
            pipe_wait: Duration::from_secs(2),
            capture_stdout: false,
            log_stdout: true,
        }
    }
}

/// A command that exited successfully.
#[derive(Debug)]
pub struct Finished {
    /// The stdout lines, when [`RunOptions::capture_stdout`] was set.
    pub stdout: Vec<String>,
}

/// The step a command runs for and the stamper its lines go through.
#[derive(Clone, Copy)]
pub struct StepLog<'a> {
    pub stamper: &'a LineStamper<'a>,
    pub step: Step,
}

impl StepLog<'_> {
    pub fn emit(&self, stream: Stream, text: impl Into<String>) {
        self.stamper.emit(self.step, stream, text.into());
    }
}

/// Runs `command` to completion, streaming its output lines to `log`.
///
/// Returns `Ok` only when the command exited with status 0. Before the child starts,
/// the command line itself goes to the log as a `$ ...` line on stderr.
pub async fn run(command: &Command, log: StepLog<'_>, options: &RunOptions) -> Result<Finished, ExecError> {
    let command_line = command.to_string();
    log.emit(Stream::Stderr, format!("$ {command_line}"));
    tracing::debug!(step = %log.step, command = %command_line, "running command");

    let mut child = match spawn(command) {
        Ok(child) => child,
        Err(source) => {
            log.emit(Stream::Stderr, format!("coppice: failed to start {}: {source}", command.program().display()));
            return Err(ExecError::Spawn { command: command_line, source });
        }
    };
    let mut group = GroupKiller::new(child.id());
    tracing::debug!(step = %log.step, pid = ?child.id(), "command started");

    let mut reader = PipeReader::new(log, options.capture_stdout, options.log_stdout);
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut stdout_buf = vec![0u8; READ_CHUNK];
    let mut stderr_buf = vec![0u8; READ_CHUNK];

    let deadline = options.timeout.map(|timeout| Instant::now() + timeout);
    let mut stop: Option<StopReason> = None;
    let mut kill_at: Option<Instant> = None;
    let mut status: Option<ExitStatus> = None;
    let mut pipes_deadline: Option<Instant> = None;

    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }

        tokio::select! {
            read = read_some(stdout.as_mut(), &mut stdout_buf) => {
                match read {
                    Ok(0) => { reader.finish(Stream::Stdout); stdout = None; }
                    Ok(n) => reader.push(Stream::Stdout, &stdout_buf[..n]),
                    Err(source) => return Err(ExecError::Read { command: command_line, source }),
                }
            }
            read = read_some(stderr.as_mut(), &mut stderr_buf) => {
                match read {
                    Ok(0) => { reader.finish(Stream::Stderr); stderr = None; }
                    Ok(n) => reader.push(Stream::Stderr, &stderr_buf[..n]),
                    Err(source) => return Err(ExecError::Read { command: command_line, source }),
                }
            }
            waited = child.wait(), if status.is_none() => {
                let exit = waited.map_err(|source| ExecError::Read { command: command_line.clone(), source })?;
                status = Some(exit);
                group.mark_reaped();
                pipes_deadline = Some(Instant::now() + options.pipe_wait);
            }
            () = options.cancel.cancelled(), if stop.is_none() => {
                stop = Some(StopReason::Cancelled);
                kill_at = Some(group.terminate(options.grace));
            }
            () = sleep_until_opt(deadline), if stop.is_none() => {
                stop = Some(StopReason::TimedOut);
                kill_at = Some(group.terminate(options.grace));
            }
            () = sleep_until_opt(kill_at) => {
                group.kill();
                kill_at = None;
            }
            () = sleep_until_opt(pipes_deadline) => {
                // The child has exited, but a process it started keeps a pipe open.
                log.emit(Stream::Stderr, "coppice: stopped reading output: the command exited, but a process it started still holds its output pipe");
                reader.finish(Stream::Stdout);
                reader.finish(Stream::Stderr);
                break;
            }
        }
    }

    let Some(status) = status else {
        unreachable!("the read loop ends only after the child was reaped")
    };
    let outcome = Outcome::from_status(status);
    tracing::debug!(step = %log.step, command = %command_line, %outcome, "command finished");
    reader.into_result(command_line, outcome, stop, options.timeout)
}

fn spawn(command: &Command) -> io::Result<tokio::process::Child> {
    let mut child = tokio::process::Command::new(&command.program);
    child
        .args(&command.args)
        .envs(command.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    child.spawn()
}

async fn read_some<R: AsyncRead + Unpin>(pipe: Option<&mut R>, buf: &mut [u8]) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Splits both pipes into lines and keeps what the result needs from them.
struct PipeReader<'a> {
    log: StepLog<'a>,
    stdout_split: LineSplitter,
    stderr_split: LineSplitter,
    capture_stdout: bool,
    log_stdout: bool,
    stdout: Vec<String>,
    stderr_tail: VecDeque<String>,
    /// Lines of the current read, handed to the sink together.
    batch: Vec<(Stream, String)>,
}

impl<'a> PipeReader<'a> {
    fn new(log: StepLog<'a>, capture_stdout: bool, log_stdout: bool) -> Self {
        Self {
            log,
            stdout_split: LineSplitter::default(),
            stderr_split: LineSplitter::default(),
            capture_stdout,
            log_stdout,
            stdout: Vec::new(),
            stderr_tail: VecDeque::with_capacity(STDERR_TAIL_LINES),
            batch: Vec::new(),
        }
    }

    fn push(&mut self, stream: Stream, bytes: &[u8]) {
        let Self { log, stdout_split, stderr_split, capture_stdout, log_stdout, stdout, stderr_tail, batch } = self;
        let splitter = match stream {
            Stream::Stdout => stdout_split,
            Stream::Stderr => stderr_split,
        };
        let keep = Keep { capture_stdout: *capture_stdout, log_stdout: *log_stdout };
        splitter.push(bytes, |line| deliver(stream, line, keep, stdout, stderr_tail, batch));
        log.stamper.emit_all(log.step, std::mem::take(batch));
    }

    fn finish(&mut self, stream: Stream) {
        let Self { log, stdout_split, stderr_split, capture_stdout, log_stdout, stdout, stderr_tail, batch } = self;
        let splitter = match stream {
            Stream::Stdout => stdout_split,
            Stream::Stderr => stderr_split,
        };
        let keep = Keep { capture_stdout: *capture_stdout, log_stdout: *log_stdout };
        splitter.finish(|line| deliver(stream, line, keep, stdout, stderr_tail, batch));
        log.stamper.emit_all(log.step, std::mem::take(batch));
    }

    fn into_result(
        self,
        command: String,
        outcome: Outcome,
        stop: Option<StopReason>,
        timeout: Option<Duration>,
    ) -> Result<Finished, ExecError> {
        let stderr_tail: Vec<String> = self.stderr_tail.into();
        match stop {
            Some(StopReason::Cancelled) => Err(ExecError::Cancelled { command, outcome, stderr_tail }),
            Some(StopReason::TimedOut) => Err(ExecError::TimedOut {
                command,
                after: timeout.unwrap_or_default(),
                outcome,
                stderr_tail,
            }),
            None if outcome.is_success() => Ok(Finished { stdout: self.stdout }),
            None => Err(ExecError::Failed { command, outcome, stderr_tail }),
        }
    }
}

/// Routing of stdout lines: captured for the caller, sent to the sink, or both.
#[derive(Clone, Copy)]
struct Keep {
    capture_stdout: bool,
    log_stdout: bool,
}

fn deliver(
    stream: Stream,
    line: String,
    keep: Keep,
    stdout: &mut Vec<String>,
    stderr_tail: &mut VecDeque<String>,
    batch: &mut Vec<(Stream, String)>,
) {
    match stream {
        Stream::Stdout if !keep.log_stdout => {
            if keep.capture_stdout {
                stdout.push(line);
            }
            return;
        }
        Stream::Stdout if keep.capture_stdout => stdout.push(line.clone()),
        Stream::Stdout => {}
        Stream::Stderr => {
            if stderr_tail.len() == STDERR_TAIL_LINES {
                stderr_tail.pop_front();
            }
            stderr_tail.push_back(line.clone());
        }
    }
    batch.push((stream, line));
}

/// Signals the child's process group, and kills it if the run is abandoned midway.
struct GroupKiller {
    pgid: Option<Pid>,
    reaped: bool,
}

impl GroupKiller {
    fn new(pid: Option<u32>) -> Self {
        let pgid = pid.and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw);
        Self { pgid, reaped: false }
    }

    fn mark_reaped(&mut self) {
        self.reaped = true;
    }

    /// Sends SIGTERM to the group and returns when SIGKILL is due.
    fn terminate(&self, grace: Duration) -> Instant {
        self.signal(Signal::SIGTERM);
        Instant::now() + grace
    }

    fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    fn signal(&self, signal: Signal) {
        let Some(pgid) = self.pgid else { return };
        match killpg(pgid, signal) {
            Ok(()) => tracing::debug!(pgid = pgid.as_raw(), %signal, "signalled process group"),
            // ESRCH: every process of the group has exited already.
            Err(nix::errno::Errno::ESRCH) => {}
            Err(error) => tracing::warn!(pgid = pgid.as_raw(), %signal, %error, "failed to signal process group"),
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        // A run dropped before its child was reaped (its task aborted) must not leave
        // the command running. A reaped leader's group id could be reused, so only a
        // live child's group is signalled here.
        if !self.reaped {
            self.signal(Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests;
