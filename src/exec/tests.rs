use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;
use crate::line::{LineSink, LogLine};

#[derive(Default)]
struct Collect(Mutex<Vec<LogLine>>);

impl LineSink for Collect {
    fn line(&self, line: LogLine) {
        self.0.lock().unwrap().push(line);
    }
}

impl Collect {
    fn texts(&self, stream: Stream) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.stream == stream)
            .map(|line| line.text.clone())
            .collect()
    }

    /// Returns the output lines, without the `$ command` line the executor logs first.
    fn output(&self, stream: Stream) -> Vec<String> {
        let mut texts = self.texts(stream);
        if stream == Stream::Stderr && !texts.is_empty() {
            texts.remove(0);
        }
        texts
    }
}

fn sh(script: &str) -> Command {
    Command::new("sh").arg("-c").arg(script)
}

async fn run_with(command: &Command, options: &RunOptions) -> (Result<Finished, ExecError>, Collect) {
    let sink = Collect::default();
    let result = {
        let stamper = LineStamper::new(&sink);
        let log = StepLog { stamper: &stamper, step: Step::Pull };
        run(command, log, options).await
    };
    (result, sink)
}

async fn run_sh(script: &str) -> (Result<Finished, ExecError>, Collect) {
    run_with(&sh(script), &RunOptions::default()).await
}

#[tokio::test]
async fn command_line_is_logged_first_on_stderr() {
    let (result, sink) = run_sh("echo out").await;

    result.unwrap();
    let lines = sink.0.lock().unwrap();
    assert_eq!(lines[0].text, "$ sh -c 'echo out'");
    assert_eq!(lines[0].stream, Stream::Stderr);
    assert_eq!(lines[0].seq, 1);
    assert_eq!(lines[1].text, "out");
    assert_eq!(lines[1].step, Step::Pull);
}

#[tokio::test]
async fn streams_are_tagged_and_ordered() {
    // The pauses keep each write alone in its pipe, so the read order is the write order
    // even on a loaded machine.
    let script = "for i in 1 2 3; do echo out$i; sleep 0.1; echo err$i >&2; sleep 0.1; done";

    let (result, sink) = run_sh(script).await;

    result.unwrap();
    assert_eq!(sink.output(Stream::Stdout), ["out1", "out2", "out3"]);
    assert_eq!(sink.output(Stream::Stderr), ["err1", "err2", "err3"]);
    let lines = sink.0.lock().unwrap();
    let interleaved: Vec<&str> = lines[1..].iter().map(|line| line.text.as_str()).collect();
    assert_eq!(interleaved, ["out1", "err1", "out2", "err2", "out3", "err3"]);
    for pair in lines.windows(2) {
        assert!(pair[0].ts < pair[1].ts);
        assert_eq!(pair[0].seq + 1, pair[1].seq);
    }
}

#[tokio::test]
async fn lines_arrive_before_the_command_exits() {
    let sink = Collect::default();
    let stamper = LineStamper::new(&sink);
    let log = StepLog { stamper: &stamper, step: Step::Rsync };
    let command = sh("echo first; sleep 1; echo second");

    let options = RunOptions::default();

    let run_future = run(&command, log, &options);
    tokio::pin!(run_future);
    let early = tokio::time::timeout(Duration::from_millis(500), &mut run_future).await;

    assert!(early.is_err(), "the command should still be running");
    assert_eq!(sink.output(Stream::Stdout), ["first"]);
    run_future.await.unwrap();
    assert_eq!(sink.output(Stream::Stdout), ["first", "second"]);
}

#[tokio::test]
async fn exit_code_is_an_error_with_stderr_tail() {
    let (result, _sink) = run_sh("echo one >&2; echo 'disk full' >&2; exit 23").await;

    let error = result.unwrap_err();
    match &error {
        ExecError::Failed { command, outcome, stderr_tail } => {
            assert_eq!(command, r#"sh -c "echo one >&2; echo 'disk full' >&2; exit 23""#);
            assert_eq!(*outcome, Outcome::Exit { code: 23 });
            assert_eq!(stderr_tail, &["one", "disk full"]);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(error.to_string().ends_with("exited with code 23: one / disk full"), "{error}");
}

#[tokio::test]
async fn death_by_signal_is_named() {
    let (result, _sink) = run_sh("kill -SEGV $$").await;

    match result.unwrap_err() {
        ExecError::Failed { outcome, .. } => assert_eq!(outcome, Outcome::Signal { name: "SIGSEGV".to_owned() }),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_utf8_is_decoded_lossily() {
    let (result, sink) = run_sh(r"printf 'bad \377\376 bytes\n'").await;

    result.unwrap();
    assert_eq!(sink.output(Stream::Stdout), ["bad \u{fffd}\u{fffd} bytes"]);
}

#[tokio::test]
async fn over_long_line_is_cut() {
    let (result, sink) = run_sh("head -c 100000 /dev/zero | tr '\\0' x; echo; echo after").await;

    result.unwrap();
    let out = sink.output(Stream::Stdout);
    assert_eq!(out.len(), 2);
    assert!(out[0].starts_with(&"x".repeat(crate::split::MAX_LINE_BYTES)));
    assert!(out[0].ends_with("[coppice: cut 83616 bytes of a line over 16384 bytes]"), "{}", &out[0][16384..]);
    assert_eq!(out[1], "after");
}

#[tokio::test]
async fn carriage_return_progress_splits_lines() {
    let (result, sink) = run_sh(r"printf ' 10%%\r 60%%\r100%%\r\ndone'").await;

    result.unwrap();
    assert_eq!(sink.output(Stream::Stdout), [" 10%", " 60%", "100%", "done"]);
}

#[tokio::test]
async fn capture_keeps_stdout_lines() {
    let options = RunOptions { capture_stdout: true, ..RunOptions::default() };

    let (result, _sink) = run_with(&sh("echo a; echo b >&2; printf c"), &options).await;

    assert_eq!(result.unwrap().stdout, ["a", "c"]);
}

#[tokio::test]
async fn unlogged_stdout_is_still_captured() {
    let options = RunOptions { capture_stdout: true, log_stdout: false, ..RunOptions::default() };

    let (result, sink) = run_with(&sh("echo listing; echo warning >&2"), &options).await;

    assert_eq!(result.unwrap().stdout, ["listing"]);
    assert!(sink.output(Stream::Stdout).is_empty());
    assert_eq!(sink.output(Stream::Stderr), ["warning"]);
}

#[tokio::test]
async fn grandchild_holding_pipe_does_not_stall() {
    let options = RunOptions { pipe_wait: Duration::from_millis(300), ..RunOptions::default() };
    let started = Instant::now();

    // The background sleep inherits stdout and outlives the shell.
    let (result, sink) = run_with(&sh("echo parent; sleep 30 & exit 0"), &options).await;

    result.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(sink.output(Stream::Stdout), ["parent"]);
    assert!(sink.output(Stream::Stderr).iter().any(|line| line.contains("still holds its output pipe")));
}

#[tokio::test]
async fn timeout_terminates_the_group() {
    let options = RunOptions { timeout: Some(Duration::from_millis(300)), ..RunOptions::default() };
    let started = Instant::now();

    let (result, sink) = run_with(&sh("echo start; sleep 30; echo never"), &options).await;

    let error = result.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(error.timed_out_after(), Some(Duration::from_millis(300)));
    assert_eq!(sink.output(Stream::Stdout), ["start"]);
}

#[tokio::test]
async fn sigterm_ignored_leads_to_sigkill() {
    let options = RunOptions {
        timeout: Some(Duration::from_millis(200)),
        grace: Duration::from_millis(300),
        ..RunOptions::default()
    };
    let script = "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.05; done";

    let (result, sink) = run_with(&sh(script), &options).await;

    match result.unwrap_err() {
        ExecError::TimedOut { outcome, .. } => assert_eq!(outcome, Outcome::Signal { name: "SIGKILL".to_owned() }),
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert_eq!(sink.output(Stream::Stdout), ["ready", "got TERM"]);
}

#[tokio::test]
async fn output_during_grace_is_drained() {
    let options = RunOptions {
        timeout: Some(Duration::from_millis(200)),
        grace: Duration::from_secs(5),
        ..RunOptions::default()
    };
    let script = "trap 'echo flushing; exit 3' TERM; echo ready; while :; do sleep 0.05; done";

    let (result, sink) = run_with(&sh(script), &options).await;

    match result.unwrap_err() {
        ExecError::TimedOut { outcome, .. } => assert_eq!(outcome, Outcome::Exit { code: 3 }),
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert_eq!(sink.output(Stream::Stdout), ["ready", "flushing"]);
}

#[tokio::test]
async fn cancel_stops_the_command() {
    let cancel = CancellationToken::new();
    let options = RunOptions { cancel: cancel.clone(), ..RunOptions::default() };
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });

    let (result, _sink) = run_with(&sh("sleep 30"), &options).await;

    let error = result.unwrap_err();
    assert!(error.is_cancelled(), "{error:?}");
    assert!(error.to_string().contains("was cancelled and was killed by SIGTERM"), "{error}");
}

#[tokio::test]
async fn cancel_reaches_grandchildren() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("survived");
    let cancel = CancellationToken::new();
    let options = RunOptions { cancel: cancel.clone(), ..RunOptions::default() };
    let script = format!("(sleep 1; touch '{}') & wait", marker.display());
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });

    let (result, _sink) = run_with(&sh(&script), &options).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert!(result.unwrap_err().is_cancelled());
    assert!(!marker.exists(), "the grandchild outlived the cancel");
}

#[tokio::test]
async fn missing_program_is_a_spawn_error() {
    let (result, sink) = run_with(&Command::new("/nonexistent/coppice-no-such-tool").arg("x"), &RunOptions::default()).await;

    let error = result.unwrap_err();
    assert!(matches!(error, ExecError::Spawn { .. }), "{error:?}");
    assert!(error.to_string().contains("/nonexistent/coppice-no-such-tool"), "{error}");
    assert!(sink.texts(Stream::Stderr).iter().any(|line| line.contains("failed to start")));
}

#[tokio::test]
async fn stdin_is_empty() {
    let (result, sink) = run_sh("cat; echo eof").await;

    result.unwrap();
    assert_eq!(sink.output(Stream::Stdout), ["eof"]);
}

#[tokio::test]
async fn child_runs_in_its_own_process_group() {
    let options = RunOptions { capture_stdout: true, ..RunOptions::default() };

    let (result, _sink) = run_with(&sh("cut -d' ' -f5 /proc/$$/stat; echo $$"), &options).await;

    let stdout = result.unwrap().stdout;
    assert_eq!(stdout[0].trim(), stdout[1].trim(), "pgid should equal the child's pid");
}

#[test]
fn display_quotes_words() {
    let command = Command::new("rsync").args(["-a", "/mnt/with space/", "it's"]);

    assert_eq!(command.to_string(), r#"rsync -a '/mnt/with space/' "it's""#);
}
