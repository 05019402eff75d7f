//! The job history at run time: one writer thread that owns the [`Store`] and commits
//! what the jobs send it, and the persister that copies one job's log lines into it.
//!
//! Nothing here blocks the async executor. Jobs hand writes to the thread over a
//! channel, and SQLite runs only on that thread. The thread commits every write that
//! is waiting in one transaction, so many jobs share one commit.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::log_buffer::{Followed, LogBuffer, LogFollower};
use super::store::{HistoryBounds, JobRecord, Store, StoreError, StoredJob, Write};
use crate::line::LogLine;

/// Time a persister waits after the first unwritten line before it writes, so that
/// the lines of a busy job go into one transaction.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Lines a persister copies out of a job's buffer at once, which bounds how long it
/// holds the buffer's lock.
const LINES_PER_READ: usize = 1024;

/// Lines a persister sends in one write at most.
const LINES_PER_WRITE: usize = 8192;

/// Writes the thread commits in one transaction at most.
const WRITES_PER_TRANSACTION: usize = 256;

/// Time between two error logs while writes keep failing. The failures in between are counted.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The finished jobs that the start-up found in the history, to serve again, and the
/// number the next job gets.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The newest finished jobs, oldest first.
    pub jobs: Vec<StoredJob>,
    pub next_number: u64,
}

/// The history as opened at start-up, before the server accepts requests.
pub struct OpenedHistory {
    pub history: History,
    pub recovered: Recovered,
    /// Every job the history contained, before pruning. The start-up sweep removes
    /// leftovers only of these jobs.
    pub known_jobs: HashSet<Uuid>,
    /// The jobs that were queued or running when the server stopped, now failed.
    pub interrupted: Vec<JobRecord>,
    /// Finished jobs deleted over the bounds.
    pub pruned: usize,
}

/// Opens the history in `dir`, marks the jobs that a stop interrupted as failed,
/// prunes it to `bounds`, loads the newest `load` finished jobs, and starts the writer.
/// Blocks, so async callers run it with `spawn_blocking`.
pub fn open_history(dir: &Path, bounds: HistoryBounds, load: usize) -> Result<OpenedHistory, StoreError> {
    let mut store = Store::open(dir)?;

    let now = Utc::now();
    let interrupted = store.mark_interrupted(now)?;
    let known_jobs = store.job_ids()?.into_iter().map(|id| id.as_uuid()).collect();
    let pruned = store.prune(bounds, now)?;
    let recovered = Recovered { jobs: store.load_finished(load)?, next_number: store.next_number()? };

    let history = History::start(store, bounds).map_err(StoreError::Thread)?;
    Ok(OpenedHistory { history, recovered, known_jobs, interrupted, pruned })
}

/// One message to the writer thread: a write, a signal for when it is committed, or both.
struct Request {
    write: Option<Write>,
    done: Option<oneshot::Sender<()>>,
}

/// The handle jobs use to write to the history. Clones share one writer thread, which
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct History {
    sender: mpsc::Sender<Request>,
    bounds: HistoryBounds,
    /// Set once the loss of the writer thread is logged, so it is logged only once.
    writer_gone: Arc<AtomicBool>,
}

impl History {
    /// Starts the writer thread that owns `store`.
    pub fn start(store: Store, bounds: HistoryBounds) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new().name("coppice-history".to_owned()).spawn(move || run_writer(store, receiver))?;
        Ok(Self { sender, bounds, writer_gone: Arc::default() })
    }

    /// Queues an insert or update of the job's row. Returns at once.
    pub fn record(&self, record: JobRecord) {
        self.send(Some(Write::Job(record)), None);
    }

    /// Queues a prune of the finished jobs over the bounds. Returns at once.
    pub fn prune(&self) {
        self.send(Some(Write::Prune(self.bounds)), None);
    }

    /// Waits until every write sent before this call is committed, or has failed and
    /// been logged.
    pub async fn sync(&self) {
        let (done, committed) = oneshot::channel();
        self.send(None, Some(done));
        // An error means the writer thread is gone, and then nothing is left to wait for.
        let _ = committed.await;
    }

    /// Writes log lines of the job numbered `job` and waits until they are committed.
    async fn append(&self, job: u64, lines: Vec<LogLine>, log: &LogBuffer) {
        // The eviction state is read after the lines, so it covers every line the
        // buffer dropped before they were read, and the store deletes those.
        let eviction = log.eviction();
        let (done, committed) = oneshot::channel();
        self.send(Some(Write::Lines { job, lines, eviction }), Some(done));
        let _ = committed.await;
    }

    fn send(&self, write: Option<Write>, done: Option<oneshot::Sender<()>>) {
        if self.sender.send(Request { write, done }).is_err() && !self.writer_gone.swap(true, Ordering::Relaxed) {
            tracing::error!("the job history writer thread has stopped, so job changes are no longer saved; restart the server");
        }
    }
}

/// Commits requests in arrival order until every [`History`] is dropped.
fn run_writer(mut store: Store, receiver: mpsc::Receiver<Request>) {
    let mut failures = FailureLog::default();

    while let Ok(first) = receiver.recv() {
        let mut requests = vec![first];
        while requests.len() < WRITES_PER_TRANSACTION {
            match receiver.try_recv() {
                Ok(request) => requests.push(request),
                Err(_) => break,
            }
        }

        let writes: Vec<&Write> = requests.iter().filter_map(|request| request.write.as_ref()).collect();
        if !writes.is_empty() {
            commit(&mut store, &writes, &mut failures);
        }

        for request in requests {
            if let Some(done) = request.done {
                let _ = done.send(());
            }
        }
    }
    tracing::debug!("job history writer stopped");
}

/// Commits `writes` in one transaction. When that fails, commits them one by one, so
/// that one bad write does not lose the others.
fn commit(store: &mut Store, writes: &[&Write], failures: &mut FailureLog) {
    match store.apply(writes) {
        Ok(pruned) => {
            failures.succeeded();
            log_pruned(pruned);
        }
        Err(_) if writes.len() > 1 => {
            for write in writes {
                match store.apply(&[*write]) {
                    Ok(pruned) => {
                        failures.succeeded();
                        log_pruned(pruned);
                    }
                    Err(error) => failures.failed(&error),
                }
            }
        }
        Err(error) => failures.failed(&error),
    }
}

fn log_pruned(pruned: usize) {
    if pruned > 0 {
        tracing::info!(jobs = pruned, "pruned the oldest finished jobs from the job history");
    }
}

/// Rate limit of the error log while writes keep failing, such as on a full disk.
#[derive(Default)]
struct FailureLog {
    failed: u64,
    logged_at: Option<Instant>,
}

impl FailureLog {
    fn failed(&mut self, error: &StoreError) {
        self.failed += 1;
        if self.logged_at.is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL) {
            tracing::error!(%error, failed_writes = self.failed, "failed to write the job history; jobs go on, but a restart may lose their latest state");
            self.logged_at = Some(Instant::now());
        }
    }

    fn succeeded(&mut self) {
        if self.failed > 0 {
            tracing::info!(failed_writes = self.failed, "writes to the job history work again");
            *self = Self::default();
        }
    }
}

/// The task that copies one running job's log lines into the history, in batches.
pub struct LogPersister {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl LogPersister {
    /// Starts following `log` from its first line for the job numbered `job`.
    pub fn start(history: History, job: u64, log: Arc<LogBuffer>) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(persist_log(history, job, log, stop.clone()));
        Self { stop, task }
    }

    /// Writes the lines not yet written and waits until they are committed. Call it
    /// once the import has pushed its last line.
    pub async fn finish(self) {
        self.stop.cancel();
        if let Err(error) = self.task.await {
            tracing::error!(%error, "the log persister ended without finishing; the job's last lines may be missing from the history");
        }
    }
}

async fn persist_log(history: History, job: u64, log: Arc<LogBuffer>, stop: CancellationToken) {
    let mut follower = log.follow(0);

    loop {
        let followed = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            followed = follower.next(LINES_PER_READ) => followed,
        };
        let Followed::Lines(batch) = followed else { break };

        let mut pending = batch.lines;
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(FLUSH_INTERVAL) => {}
        }
        read_available(&mut follower, &mut pending);
        history.append(job, pending, &log).await;
    }

    loop {
        let mut pending = Vec::new();
        read_available(&mut follower, &mut pending);
        if pending.is_empty() {
            break;
        }
        history.append(job, pending, &log).await;
    }
}

/// Moves the lines the follower can read without waiting into `pending`, up to [`LINES_PER_WRITE`].
fn read_available(follower: &mut LogFollower, pending: &mut Vec<LogLine>) {
    while pending.len() < LINES_PER_WRITE {
        let Some(batch) = follower.try_next(LINES_PER_READ.min(LINES_PER_WRITE - pending.len())) else { break };
        pending.extend(batch.lines);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use chrono::{DateTime, TimeDelta};

    use super::*;
    use crate::jobs::{JobId, JobStatus, LogLimits, Store};
    use crate::line::{SOURCE, Step, Stream};
    use crate::names::{ImageRef, TemplateName};

    pub(in crate::jobs) fn line(seq: u64) -> LogLine {
        LogLine {
            ts: DateTime::from_timestamp_micros(1_777_118_400_000_000).unwrap() + TimeDelta::microseconds(seq as i64),
            source: SOURCE.to_owned(),
            stream: Stream::Stdout,
            text: format!("sent {seq} bytes"),
            step: Step::Rsync,
            seq,
        }
    }

    fn running(number: u64) -> JobRecord {
        JobRecord {
            number,
            id: JobId::new(),
            name: TemplateName::parse("web").unwrap(),
            from: ImageRef::parse_source("oci:127.0.0.1:5000/coppice/sample:14").unwrap(),
            status: JobStatus::Running,
            step: Some(Step::Rsync),
            created_at: Utc::now(),
            started_at: Some(Utc::now()),
            finished_at: None,
            snapshot: None,
            size_bytes: None,
            error: None,
            failure: None,
        }
    }

    /// Opens the store in `dir` again once the writer thread of the last run released it.
    pub(in crate::jobs) fn reopen(dir: &Path) -> Store {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Store::open(dir) {
                Ok(store) => return store,
                Err(StoreError::Locked { .. }) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(error) => panic!("failed to reopen the store: {error}"),
            }
        }
    }

    fn start(dir: &Path) -> History {
        open_history(dir, HistoryBounds::default(), 100).unwrap().history
    }

    #[tokio::test]
    async fn persister_keeps_what_the_buffer_retains() {
        let dir = tempfile::tempdir().unwrap();
        let history = start(dir.path());
        let job = running(0);
        history.record(job.clone());
        let log = Arc::new(LogBuffer::new(LogLimits { max_lines: 1000, max_bytes: usize::MAX }));

        let persister = LogPersister::start(history.clone(), 0, Arc::clone(&log));
        for seq in 1..=50_000 {
            log.push(line(seq));
            if seq % 5_000 == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        persister.finish().await;
        history.record(JobRecord { status: JobStatus::Succeeded, step: None, finished_at: Some(Utc::now()), ..job });
        history.sync().await;
        drop(history);
        let stored = reopen(dir.path()).load_finished(1).unwrap().remove(0);

        assert_eq!(stored.lines.first().map(|line| line.seq), Some(49_001));
        assert_eq!(stored.lines.len(), 1000);
        assert_eq!(stored.lines.last(), Some(&line(50_000)));
        assert_eq!(stored.eviction, log.eviction());
    }

    #[tokio::test(start_paused = true)]
    async fn persister_batches_lines() {
        let dir = tempfile::tempdir().unwrap();
        let history = start(dir.path());
        history.record(running(0));
        let log = Arc::new(LogBuffer::new(LogLimits::default()));
        let persister = LogPersister::start(history.clone(), 0, Arc::clone(&log));

        log.push(line(1));
        tokio::time::sleep(FLUSH_INTERVAL / 2).await;
        log.push(line(2));
        let before_flush = stored_seqs(dir.path(), 0);
        tokio::time::sleep(FLUSH_INTERVAL).await;
        history.sync().await;
        let after_flush = stored_seqs(dir.path(), 0);
        log.push(line(3));
        persister.finish().await;
        let after_finish = stored_seqs(dir.path(), 0);

        assert!(before_flush.is_empty(), "{before_flush:?}");
        assert_eq!(after_flush, [1, 2]);
        assert_eq!(after_finish, [1, 2, 3]);
    }

    #[tokio::test]
    async fn finish_without_lines_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let history = start(dir.path());
        history.record(running(0));
        let log = Arc::new(LogBuffer::new(LogLimits::default()));

        LogPersister::start(history.clone(), 0, log).finish().await;
        history.sync().await;

        assert!(stored_seqs(dir.path(), 0).is_empty());
    }

    #[tokio::test]
    async fn open_marks_interrupted_and_lists_known() {
        let dir = tempfile::tempdir().unwrap();
        let history = start(dir.path());
        let job = running(0);
        history.record(job.clone());
        history.sync().await;
        drop(history);
        drop(reopen(dir.path()));

        let opened = open_history(dir.path(), HistoryBounds::default(), 100).unwrap();

        assert_eq!(opened.interrupted.len(), 1);
        assert_eq!(opened.interrupted[0].id, job.id);
        assert!(opened.known_jobs.contains(&job.id.as_uuid()));
        assert_eq!(opened.recovered.jobs.len(), 1);
        assert_eq!(opened.recovered.jobs[0].record.status, JobStatus::Failed);
        assert_eq!(opened.recovered.next_number, 1);
    }

    /// Measures pushes per second into a job's buffer, alone and with a persister
    /// following it into a store. A measurement, not a check:
    /// `cargo test --release --lib ingest_rate -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; run it in release mode"]
    async fn ingest_rate_with_persister() {
        // Ten million lines take longer than several flush intervals, so the persister
        // writes during the pushes and not only after them.
        const LINES: u64 = 10_000_000;
        let dir = tempfile::tempdir().unwrap();
        let history = start(dir.path());
        history.record(running(0));
        history.sync().await;

        for persisted in [false, true, false, true] {
            let log = Arc::new(LogBuffer::new(LogLimits::default()));
            let persister = persisted.then(|| LogPersister::start(history.clone(), 0, Arc::clone(&log)));
            let template = line(0);

            let started = Instant::now();
            for seq in 1..=LINES {
                log.push(LogLine { seq, ts: template.ts + TimeDelta::microseconds(seq as i64), ..template.clone() });
            }
            let pushed = started.elapsed();
            if let Some(persister) = persister {
                persister.finish().await;
            }
            let finished = started.elapsed();

            println!(
                "persister: {persisted:5}  pushes: {:>9.0} lines/s  push time: {:>7.1} ms  with final flush: {:>7.1} ms",
                LINES as f64 / pushed.as_secs_f64(),
                pushed.as_secs_f64() * 1000.0,
                finished.as_secs_f64() * 1000.0,
            );
        }
    }

    /// Reads the stored `seq`s of job `number` through a second connection.
    fn stored_seqs(dir: &Path, number: u64) -> Vec<u64> {
        let connection = rusqlite::Connection::open(dir.join(crate::jobs::DATABASE_FILE)).unwrap();
        let mut statement = connection.prepare("SELECT seq FROM log_lines WHERE job = ?1 ORDER BY seq").unwrap();
        statement.query_map([number as i64], |row| row.get::<_, i64>(0)).unwrap().map(|seq| seq.unwrap() as u64).collect()
    }
}
