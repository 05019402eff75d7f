//! The durable job history: every job, its status and its retained log lines, in a
//! SQLite database under the state directory.
//!
//! SQLite comes from rusqlite with the `bundled` feature, which compiles the SQLite
//! amalgamation into the binary. FreeBSD's base system ships no public libsqlite3,
//! and one bundled version behaves the same on Linux and FreeBSD. The database runs in WAL
//! mode with `synchronous=NORMAL`. A committed transaction survives a crash of this
//! process (`kill -9` included), and a power loss can roll back the last commits but
//! leaves the database consistent.
//!
//! Every call here blocks. The server makes them at start-up, before it serves, and
//! afterwards only on the writer thread of [`super::history`].

use std::collections::HashSet;
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, Row, Transaction, params};

use super::log_buffer::Eviction;
use super::model::{FailureKind, JobId, JobStatus, JobView};
use crate::line::{LogLine, SOURCE, Step, Stream};
use crate::names::{ImageRef, TemplateName};

/// Default state directory, following each system's convention for service state.
pub const DEFAULT_STATE_DIR: &str = if cfg!(target_os = "freebsd") { "/var/db/coppice" } else { "/var/lib/coppice/state" };

/// Default number of jobs kept in the history.
pub const DEFAULT_HISTORY_MAX_JOBS: usize = 1000;

/// Default age, in days, after which a finished job is deleted from the history.
pub const DEFAULT_HISTORY_MAX_AGE_DAYS: u64 = 30;

/// The database file inside the state directory.
pub const DATABASE_FILE: &str = "history.sqlite3";

/// The file whose `flock` marks the state directory as in use by one server. It is
/// separate from the database because SQLite takes its own locks on that file.
pub const LOCK_FILE: &str = "history.lock";

/// Time a statement waits for a lock held by another connection, such as an
/// operator's `sqlite3` shell reading the database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, one entry per version: entry N moves `user_version` from N to N + 1.
/// Timestamps are microseconds since the Unix epoch in UTC, the precision the API shows.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE jobs (
        number INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        status TEXT NOT NULL,
        step TEXT,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        snapshot TEXT,
        size_bytes INTEGER,
        error TEXT,
        failure TEXT,
        log_evicted INTEGER NOT NULL DEFAULT 0,
        log_last_evicted_seq INTEGER,
        log_last_evicted_ts INTEGER
    );
    CREATE TABLE log_lines (
        job INTEGER NOT NULL REFERENCES jobs (number) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        stream TEXT NOT NULL,
        step TEXT NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (job, seq)
    ) WITHOUT ROWID;
"];

const JOB_COLUMNS: &str = "number, id, name, source, status, step, created_at, started_at, finished_at, snapshot, \
    size_bytes, error, failure, log_evicted, log_last_evicted_seq, log_last_evicted_ts";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to create the state directory {path}: {source}; create it or choose another with --state-dir")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to open the lock file {path}: {source}; check the permissions of the state directory or choose another with --state-dir")]
    OpenLock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the state directory {dir} is in use by another coppice serve (it holds the lock on {dir}/{LOCK_FILE}); stop that server or choose another --state-dir")]
    Locked { dir: PathBuf },

    #[error("failed to lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },

    #[error("failed to open the job history {path}: {source}; check the file or choose another --state-dir")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("the job history {path} has schema version {found}, but this build knows versions up to {known}; run a newer coppice or choose another --state-dir")]
    NewerSchema { path: PathBuf, found: i64, known: i64 },

    #[error("job history query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),

    #[error("failed to start the job history writer thread: {0}")]
    Thread(#[source] std::io::Error),

    #[error("invalid {column} {value:?} in job number {number} of the job history")]
    InvalidValue { number: i64, column: &'static str, value: String },
}

/// Limits of the history. Pruning deletes finished jobs over either limit, oldest
/// first, each with its log lines. Queued and running jobs are never pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryBounds {
    /// Jobs kept, counted from the newest.
    pub max_jobs: usize,
    /// Age of a finished job, from its `finishedAt`, after which it is deleted.
    pub max_age: TimeDelta,
}

impl Default for HistoryBounds {
    fn default() -> Self {
        Self { max_jobs: DEFAULT_HISTORY_MAX_JOBS, max_age: TimeDelta::days(DEFAULT_HISTORY_MAX_AGE_DAYS as i64) }
    }
}

/// A job as the store keeps it: the fields of its view, its submission number, and
/// how it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    /// Submission order. It is unique within one store and keys the job's log lines.
    pub number: u64,
    pub id: JobId,
    pub name: TemplateName,
    pub from: ImageRef,
    pub status: JobStatus,
    pub step: Option<Step>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub snapshot: Option<String>,
    pub size_bytes: Option<u64>,
    pub error: Option<String>,
    pub failure: Option<FailureKind>,
}

impl JobRecord {
    pub fn new(number: u64, view: &JobView) -> Self {
        Self {
            number,
            id: view.job_id,
            name: view.name.clone(),
            from: view.from.clone(),
            status: view.status,
            step: view.step,
            created_at: view.created_at,
            started_at: view.started_at,
            finished_at: view.finished_at,
            snapshot: view.snapshot.clone(),
            size_bytes: view.size_bytes,
            error: view.error.clone(),
            failure: view.failure,
        }
    }
}

/// A finished job read back from the store, with its retained log lines in `seq`
/// order and without gaps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredJob {
    pub record: JobRecord,
    pub lines: Vec<LogLine>,
    pub eviction: Eviction,
}

/// One change for [`Store::apply`].
#[derive(Clone, Debug)]
pub enum Write {
    /// Inserts the job or updates its row.
    Job(JobRecord),
    /// Adds log lines of the job with this number, then deletes the lines that the
    /// job's buffer has dropped according to `eviction`, so the store keeps what the
    /// buffer retains.
    Lines { job: u64, lines: Vec<LogLine>, eviction: Eviction },
    /// Deletes finished jobs over the bounds.
    Prune(HistoryBounds),
}

/// Returns the error recorded for a job that was queued or running when the server stopped.
pub fn interrupted_error(status: JobStatus, step: Option<Step>) -> String {
    match (status, step) {
        (JobStatus::Queued, _) => {
            "the gateway restarted before the job started, so the import never ran; submit the build again".to_owned()
        }
        (_, Some(step)) => format!("the gateway restarted during step {step}, which interrupted the import; submit the build again"),
        (_, None) => "the gateway restarted while the job was running, which interrupted the import; submit the build again".to_owned(),
    }
}

/// The open history database. It holds the state directory's lock for as long as it lives.
pub struct Store {
    connection: Connection,
    path: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Opens the history in `dir`, creating the directory (mode 0700) and the database
    /// when missing, and brings the schema up to date. Fails when another server holds
    /// the directory's lock.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::CreateDir { path: dir.to_owned(), source })?;
        let lock = lock_dir(dir)?;

        let path = dir.join(DATABASE_FILE);
        let open_error = |source| StoreError::Open { path: path.clone(), source };
        let mut connection = Connection::open(&path).map_err(open_error)?;
        configure(&connection).map_err(open_error)?;
        migrate(&mut connection, &path)?;

        Ok(Self { connection, path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks every queued or running job as failed by a restart and returns them as
    /// updated. Their last known step goes into the error.
    pub fn mark_interrupted(&mut self, now: DateTime<Utc>) -> Result<Vec<JobRecord>, StoreError> {
        let transaction = self.connection.transaction()?;
        let unfinished = select_jobs(&transaction, "WHERE status IN ('queued', 'running') ORDER BY number", [])?;

        let mut interrupted = Vec::with_capacity(unfinished.len());
        for (mut record, _) in unfinished {
            record.error = Some(interrupted_error(record.status, record.step));
            record.status = JobStatus::Failed;
            record.step = None;
            record.finished_at = Some(now);
            record.failure = Some(FailureKind::Interrupted);
            upsert_job(&transaction, &record)?;
            interrupted.push(record);
        }

        transaction.commit()?;
        Ok(interrupted)
    }

    /// Returns the id of every job in the history.
    pub fn job_ids(&self) -> Result<HashSet<JobId>, StoreError> {
        let mut statement = self.connection.prepare("SELECT number, id FROM jobs")?;
        let mut rows = statement.query([])?;
        let mut ids = HashSet::new();
        while let Some(row) = rows.next()? {
            let number: i64 = row.get(0)?;
            let id: String = row.get(1)?;
            match JobId::parse(&id) {
                Some(id) => ids.insert(id),
                None => {
                    let error = StoreError::InvalidValue { number, column: "id", value: id };
                    tracing::warn!(%error, "skipped a job history row");
                    continue;
                }
            };
        }
        Ok(ids)
    }

    /// Returns the number the next job gets: one more than the highest ever stored.
    pub fn next_number(&self) -> Result<u64, StoreError> {
        let highest: Option<i64> = self.connection.query_row("SELECT max(number) FROM jobs", [], |row| row.get(0))?;
        Ok(highest.map_or(0, |number| from_sql_int(number) + 1))
    }

    /// Returns the newest `limit` finished jobs with their log lines, oldest first.
    pub fn load_finished(&self, limit: usize) -> Result<Vec<StoredJob>, StoreError> {
        let limit = to_sql_int(limit as u64);
        let finished = select_jobs(
            &self.connection,
            "WHERE status IN ('succeeded', 'failed') ORDER BY number DESC LIMIT ?1",
            [limit],
        )?;

        let mut jobs = Vec::with_capacity(finished.len());
        for (record, eviction) in finished.into_iter().rev() {
            let lines = select_lines(&self.connection, record.number)?;
            let (lines, eviction) = contiguous_tail(lines, eviction);
            jobs.push(StoredJob { record, lines, eviction });
        }
        Ok(jobs)
    }

    /// Deletes finished jobs over `bounds` with their log lines and returns how many.
    pub fn prune(&mut self, bounds: HistoryBounds, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let transaction = self.connection.transaction()?;
        let pruned = prune(&transaction, bounds, now)?;
        transaction.commit()?;
        Ok(pruned)
    }

    /// Applies `writes` in one transaction and returns how many jobs were pruned.
    pub fn apply(&mut self, writes: &[&Write]) -> Result<usize, StoreError> {
        let transaction = self.connection.transaction()?;
        let mut pruned = 0;
        for write in writes {
            match write {
                Write::Job(record) => upsert_job(&transaction, record)?,
                Write::Lines { job, lines, eviction } => append_lines(&transaction, *job, lines, *eviction)?,
                Write::Prune(bounds) => pruned += prune(&transaction, *bounds, Utc::now())?,
            }
        }
        transaction.commit()?;
        Ok(pruned)
    }
}

fn lock_dir(dir: &Path) -> Result<Flock<File>, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::OpenLock { path: path.clone(), source })?;

    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, Errno::EWOULDBLOCK)) => Err(StoreError::Locked { dir: dir.to_owned() }),
        Err((_, source)) => Err(StoreError::Lock { path, source }),
    }
}

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // `journal_mode` returns the mode in effect, which stays the old one on a file
    // system that cannot hold the WAL's shared memory.
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "the job history could not switch to WAL mode; it works, with slower commits");
    }
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

fn migrate(connection: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > known {
        return Err(StoreError::NewerSchema { path: path.to_owned(), found: version, known });
    }

    let transaction = connection.transaction()?;
    for (from, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        transaction.execute_batch(migration)?;
        tracing::info!(path = %path.display(), version = from + 1, "job history schema updated");
    }
    transaction.pragma_update(None, "user_version", known)?;
    transaction.commit()?;
    Ok(())
}

fn upsert_job(transaction: &Transaction<'_>, record: &JobRecord) -> Result<(), StoreError> {
    let mut statement = transaction.prepare_cached(
        "INSERT INTO jobs (number, id, name, source, status, step, created_at, started_at, finished_at, snapshot, size_bytes, error, failure)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (number) DO UPDATE SET
             status = excluded.status, step = excluded.step, started_at = excluded.started_at,
             finished_at = excluded.finished_at, snapshot = excluded.snapshot, size_bytes = excluded.size_bytes,
             error = excluded.error, failure = excluded.failure",
    )?;
    statement.execute(params![
        to_sql_int(record.number),
        record.id.to_string(),
        record.name.as_str(),
        record.from.source(),
        record.status.as_str(),
        record.step.map(Step::as_str),
        record.created_at.timestamp_micros(),
        record.started_at.map(|ts| ts.timestamp_micros()),
        record.finished_at.map(|ts| ts.timestamp_micros()),
        record.snapshot,
        record.size_bytes.map(to_sql_int),
        record.error,
        record.failure.map(failure_name),
    ])?;
    Ok(())
}

fn append_lines(transaction: &Transaction<'_>, job: u64, lines: &[LogLine], eviction: Eviction) -> Result<(), StoreError> {
    let job = to_sql_int(job);
    let evicted_up_to = eviction.last.map_or(0, |(seq, _)| seq);

    let mut insert = transaction.prepare_cached(
        "INSERT OR REPLACE INTO log_lines (job, seq, ts, stream, step, text) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    // Lines the buffer already dropped are not written only to be deleted below.
    for line in lines.iter().filter(|line| line.seq > evicted_up_to) {
        insert.execute(params![
            job,
            to_sql_int(line.seq),
            line.ts.timestamp_micros(),
            line.stream.as_str(),
            line.step.as_str(),
            line.text,
        ])?;
    }

    if let Some((seq, ts)) = eviction.last {
        transaction
            .prepare_cached("DELETE FROM log_lines WHERE job = ?1 AND seq <= ?2")?
            .execute(params![job, to_sql_int(seq)])?;
        transaction
            .prepare_cached(
                "UPDATE jobs SET log_evicted = ?2, log_last_evicted_seq = ?3, log_last_evicted_ts = ?4 WHERE number = ?1",
            )?
            .execute(params![job, to_sql_int(eviction.count), to_sql_int(seq), ts.timestamp_micros()])?;
    }
    Ok(())
}

fn prune(transaction: &Transaction<'_>, bounds: HistoryBounds, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let cutoff = (now - bounds.max_age).timestamp_micros();
    // Log lines go with their job through ON DELETE CASCADE.
    let pruned = transaction.execute(
        "DELETE FROM jobs
         WHERE status IN ('succeeded', 'failed')
           AND (coalesce(finished_at, created_at) < ?1
                OR number NOT IN (SELECT number FROM jobs ORDER BY number DESC LIMIT ?2))",
        params![cutoff, to_sql_int(bounds.max_jobs as u64)],
    )?;
    Ok(pruned)
}

fn select_jobs<P: rusqlite::Params>(
    connection: &Connection,
    filter: &str,
    params: P,
) -> Result<Vec<(JobRecord, Eviction)>, StoreError> {
    let mut statement = connection.prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs {filter}"))?;
    let mut rows = statement.query(params)?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next()? {
        // A row this build cannot read, such as one edited by hand, is skipped rather
        // than keeping the server from starting.
        match read_job(row) {
            Ok(job) => jobs.push(job),
            Err(error @ StoreError::InvalidValue { .. }) => tracing::warn!(%error, "skipped a job history row"),
            Err(error) => return Err(error),
        }
    }
    Ok(jobs)
}

fn read_job(row: &Row<'_>) -> Result<(JobRecord, Eviction), StoreError> {
    let number: i64 = row.get("number")?;
    let invalid = |column: &'static str, value: String| StoreError::InvalidValue { number, column, value };

    let id: String = row.get("id")?;
    let name: String = row.get("name")?;
    let source: String = row.get("source")?;
    let status: String = row.get("status")?;
    let step: Option<String> = row.get("step")?;
    let failure: Option<String> = row.get("failure")?;
    let timestamp = |column: &'static str| -> Result<Option<DateTime<Utc>>, StoreError> {
        let micros: Option<i64> = row.get(column)?;
        micros
            .map(|micros| DateTime::from_timestamp_micros(micros).ok_or_else(|| invalid(column, micros.to_string())))
            .transpose()
    };

    let record = JobRecord {
        number: from_sql_int(number),
        id: JobId::parse(&id).ok_or_else(|| invalid("id", id.clone()))?,
        name: TemplateName::parse(&name).map_err(|_| invalid("name", name.clone()))?,
        from: ImageRef::parse_source(&source).map_err(|_| invalid("source", source.clone()))?,
        status: JobStatus::parse(&status).ok_or_else(|| invalid("status", status.clone()))?,
        step: step.map(|step| parse_step(&step).ok_or_else(|| invalid("step", step.clone()))).transpose()?,
        created_at: timestamp("created_at")?.ok_or_else(|| invalid("created_at", "NULL".to_owned()))?,
        started_at: timestamp("started_at")?,
        finished_at: timestamp("finished_at")?,
        snapshot: row.get("snapshot")?,
        size_bytes: row.get::<_, Option<i64>>("size_bytes")?.map(from_sql_int),
        error: row.get("error")?,
        failure: failure.map(|failure| parse_failure(&failure).ok_or_else(|| invalid("failure", failure.clone()))).transpose()?,
    };

    let last_seq: Option<i64> = row.get("log_last_evicted_seq")?;
    let last = match (last_seq, timestamp("log_last_evicted_ts")?) {
        (Some(seq), Some(ts)) => Some((from_sql_int(seq), ts)),
        _ => None,
    };
    let eviction = Eviction { count: from_sql_int(row.get("log_evicted")?), last };

    Ok((record, eviction))
}

fn select_lines(connection: &Connection, job: u64) -> Result<Vec<LogLine>, StoreError> {
    let mut statement = connection.prepare_cached("SELECT seq, ts, stream, step, text FROM log_lines WHERE job = ?1 ORDER BY seq")?;
    let mut rows = statement.query([to_sql_int(job)])?;
    let number = to_sql_int(job);
    let invalid = |column: &'static str, value: String| StoreError::InvalidValue { number, column, value };

    let mut lines = Vec::new();
    let mut skipped = None;
    while let Some(row) = rows.next()? {
        match read_line(row, &invalid)? {
            Ok(line) => lines.push(line),
            Err(error) => skipped = Some(error),
        }
    }

    // A line this build cannot read leaves a gap, and `contiguous_tail` then keeps only the lines after it.
    if let Some(error) = skipped {
        tracing::warn!(%error, "skipped log lines of a job history row");
    }
    Ok(lines)
}

/// Reads one log line. The outer error is SQLite's, the inner one a value this build cannot read.
fn read_line(
    row: &Row<'_>,
    invalid: &impl Fn(&'static str, String) -> StoreError,
) -> Result<Result<LogLine, StoreError>, StoreError> {
    let ts: i64 = row.get(1)?;
    let stream: String = row.get(2)?;
    let step: String = row.get(3)?;
    let text: String = row.get(4)?;
    let seq: i64 = row.get(0)?;

    let Some(ts) = DateTime::from_timestamp_micros(ts) else { return Ok(Err(invalid("log line ts", ts.to_string()))) };
    let Some(stream) = parse_stream(&stream) else { return Ok(Err(invalid("log line stream", stream))) };
    let Some(step) = parse_step(&step) else { return Ok(Err(invalid("log line step", step))) };
    Ok(Ok(LogLine {
        ts,
        // Every line this service stores has the one source, so no column keeps it.
        source: SOURCE.to_owned(),
        stream,
        text,
        step,
        seq: from_sql_int(seq),
    }))
}

/// Keeps the newest run of lines without a `seq` gap, so that the lines fit a
/// [`super::LogBuffer`], and makes `eviction` end right before that run.
///
/// The writer keeps the stored lines of a job contiguous and directly after the
/// stored eviction, so this changes nothing unless a line could not be read or the
/// database was edited by hand.
fn contiguous_tail(mut lines: Vec<LogLine>, eviction: Eviction) -> (Vec<LogLine>, Eviction) {
    let gap = lines.windows(2).rposition(|pair| pair[0].seq + 1 != pair[1].seq).map(|index| index + 1);
    if let Some(start) = gap {
        let dropped = lines.drain(..start).next_back();
        let first = lines[0].seq;
        let ts = dropped.map(|line| line.ts).unwrap_or(lines[0].ts - TimeDelta::microseconds(1));
        return (lines, Eviction { count: first - 1, last: Some((first - 1, ts)) });
    }

    let expected_first = eviction.last.map_or(1, |(seq, _)| seq + 1);
    match lines.first() {
        Some(first) if first.seq != expected_first => {
            let seq = first.seq - 1;
            let last = (seq > 0).then(|| (seq, first.ts - TimeDelta::microseconds(1)));
            let first_seq = first.seq;
            (lines, Eviction { count: first_seq - 1, last })
        }
        _ => (lines, eviction),
    }
}

fn failure_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::InvalidName => "invalid_name",
        FailureKind::AlreadyExists => "already_exists",
        FailureKind::TimedOut => "timed_out",
        FailureKind::Cancelled => "cancelled",
        FailureKind::Interrupted => "interrupted",
        FailureKind::StepFailed => "step_failed",
        FailureKind::Internal => "internal",
    }
}

fn parse_failure(value: &str) -> Option<FailureKind> {
    FailureKind::ALL.into_iter().find(|kind| failure_name(*kind) == value)
}

fn parse_step(value: &str) -> Option<Step> {
    Step::ALL.into_iter().find(|step| step.as_str() == value)
}

fn parse_stream(value: &str) -> Option<Stream> {
    [Stream::Stdout, Stream::Stderr].into_iter().find(|stream| stream.as_str() == value)
}

/// Converts a count or sequence number to SQLite's signed integer. No job reaches
/// 2^63 lines, jobs or bytes, so the saturation is never hit in practice.
fn to_sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_sql_int(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::jobs::{events_path, logs_path, template_path};

    fn ts(micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_777_118_400_000_000 + micros).unwrap()
    }

    fn record(number: u64, status: JobStatus) -> JobRecord {
        JobRecord {
            number,
            id: JobId::new(),
            name: TemplateName::parse(&format!("t{number}")).unwrap(),
            from: ImageRef::parse_source("oci:127.0.0.1:5000/coppice/sample:14").unwrap(),
            status,
            step: None,
            created_at: ts(number as i64 * 1_000_000),
            started_at: None,
            finished_at: None,
            snapshot: None,
            size_bytes: None,
            error: None,
            failure: None,
        }
    }

    fn finished(number: u64, finished_at: DateTime<Utc>) -> JobRecord {
        JobRecord {
            started_at: Some(finished_at - TimeDelta::seconds(1)),
            finished_at: Some(finished_at),
            snapshot: Some(format!("zroot/jails/t{number}-template@base")),
            size_bytes: Some(67_747_840),
            ..record(number, JobStatus::Succeeded)
        }
    }

    fn line(seq: u64) -> LogLine {
        LogLine {
            ts: ts(seq as i64),
            source: SOURCE.to_owned(),
            stream: if seq.is_multiple_of(2) { Stream::Stdout } else { Stream::Stderr },
            text: format!("line {seq} ✓"),
            step: Step::Rsync,
            seq,
        }
    }

    fn lines(seqs: std::ops::RangeInclusive<u64>) -> Vec<LogLine> {
        seqs.map(line).collect()
    }

    fn apply(store: &mut Store, writes: Vec<Write>) {
        store.apply(&writes.iter().collect::<Vec<_>>()).unwrap();
    }

    /// Counts the stored log lines of job `number` through a second connection, as an operator would.
    fn stored_lines(dir: &Path, number: u64) -> i64 {
        let connection = Connection::open(dir.join(DATABASE_FILE)).unwrap();
        connection.query_row("SELECT count(*) FROM log_lines WHERE job = ?1", [number as i64], |row| row.get(0)).unwrap()
    }

    #[test]
    fn job_and_lines_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut job = finished(0, ts(5_000_000));
        job.error = Some("step rsync failed: `rsync` exited with code 23".to_owned());
        job.failure = Some(FailureKind::StepFailed);
        job.status = JobStatus::Failed;

        apply(&mut store, vec![Write::Job(job.clone()), Write::Lines { job: 0, lines: lines(1..=5), eviction: Eviction::default() }]);
        let loaded = store.load_finished(10).unwrap();

        assert_eq!(loaded, [StoredJob { record: job, lines: lines(1..=5), eviction: Eviction::default() }]);
    }

    #[test]
    fn record_from_view_keeps_every_field() {
        let id = JobId::new();
        let name = TemplateName::parse("web").unwrap();
        let view = JobView {
            job_id: id,
            name: name.clone(),
            from: ImageRef::parse_source("oci:127.0.0.1:5000/coppice/sample:14").unwrap(),
            status: JobStatus::Running,
            created_at: ts(1),
            started_at: Some(ts(2)),
            finished_at: None,
            step: Some(Step::Mount),
            snapshot: None,
            size_bytes: None,
            error: None,
            cancelled: false,
            failure: None,
            logs_url: logs_path(id),
            events_url: events_path(id),
            template_url: template_path(&name),
        };

        let record = JobRecord::new(7, &view);

        assert_eq!(record.number, 7);
        assert_eq!(record.id, id);
        assert_eq!(record.status, JobStatus::Running);
        assert_eq!(record.step, Some(Step::Mount));
        assert_eq!(record.started_at, Some(ts(2)));
    }

    #[test]
    fn status_updates_replace_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let queued = record(0, JobStatus::Queued);
        let running = JobRecord { status: JobStatus::Running, step: Some(Step::Pull), started_at: Some(ts(1)), ..queued.clone() };
        let at_rsync = JobRecord { step: Some(Step::Rsync), ..running.clone() };
        let done = JobRecord { status: JobStatus::Succeeded, step: None, finished_at: Some(ts(9)), ..at_rsync.clone() };

        apply(&mut store, vec![Write::Job(queued), Write::Job(running)]);
        let unfinished = store.load_finished(10).unwrap();
        apply(&mut store, vec![Write::Job(at_rsync), Write::Job(done.clone())]);
        let loaded = store.load_finished(10).unwrap();

        assert!(unfinished.is_empty(), "a running job is not loaded as finished");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].record, done);
    }

    #[test]
    fn interrupted_jobs_fail_naming_their_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let running = JobRecord { status: JobStatus::Running, step: Some(Step::Rsync), started_at: Some(ts(1)), ..record(0, JobStatus::Queued) };
        let queued = record(1, JobStatus::Queued);
        let done = finished(2, ts(3));
        apply(&mut store, vec![Write::Job(running.clone()), Write::Job(queued.clone()), Write::Job(done.clone())]);

        let interrupted = store.mark_interrupted(ts(10)).unwrap();
        let loaded: Vec<JobRecord> = store.load_finished(10).unwrap().into_iter().map(|job| job.record).collect();

        assert_eq!(interrupted.iter().map(|job| job.id).collect::<Vec<_>>(), [running.id, queued.id]);
        let error = interrupted[0].error.as_deref().unwrap();
        assert!(error.contains("restarted during step rsync"), "{error}");
        let error = interrupted[1].error.as_deref().unwrap();
        assert!(error.contains("restarted before the job started"), "{error}");
        for job in &interrupted {
            assert_eq!(job.status, JobStatus::Failed);
            assert_eq!(job.step, None);
            assert_eq!(job.finished_at, Some(ts(10)));
            assert_eq!(job.failure, Some(FailureKind::Interrupted));
        }
        assert_eq!(loaded, [interrupted[0].clone(), interrupted[1].clone(), done]);
        assert!(store.mark_interrupted(ts(11)).unwrap().is_empty(), "a second start-up finds nothing to mark");
    }

    #[test]
    fn prune_by_count_removes_oldest_finished() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let now = ts(100_000_000);
        let running = JobRecord { status: JobStatus::Running, ..record(0, JobStatus::Queued) };
        let mut writes = vec![Write::Job(running.clone())];
        writes.extend((1..=4).map(|number| Write::Job(finished(number, now))));
        apply(&mut store, writes);

        let pruned = store.prune(HistoryBounds { max_jobs: 2, max_age: TimeDelta::days(30) }, now).unwrap();
        let kept: Vec<u64> = store.load_finished(10).unwrap().iter().map(|job| job.record.number).collect();

        assert_eq!(pruned, 2);
        assert_eq!(kept, [3, 4]);
        assert!(store.job_ids().unwrap().contains(&running.id), "a running job is never pruned");
    }

    #[test]
    fn prune_by_age_removes_old_finished() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let now = ts(0) + TimeDelta::days(40);
        apply(
            &mut store,
            vec![
                Write::Job(finished(0, ts(0))),
                Write::Job(finished(1, now - TimeDelta::days(31))),
                Write::Job(finished(2, now - TimeDelta::days(29))),
            ],
        );

        let pruned = store.prune(HistoryBounds { max_jobs: 100, max_age: TimeDelta::days(30) }, now).unwrap();
        let kept: Vec<u64> = store.load_finished(10).unwrap().iter().map(|job| job.record.number).collect();

        assert_eq!(pruned, 2);
        assert_eq!(kept, [2]);
    }

    #[test]
    fn pruned_job_takes_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let now = ts(0);
        apply(
            &mut store,
            vec![
                Write::Job(finished(0, now)),
                Write::Lines { job: 0, lines: lines(1..=3), eviction: Eviction::default() },
                Write::Job(finished(1, now)),
                Write::Lines { job: 1, lines: lines(1..=2), eviction: Eviction::default() },
            ],
        );

        store.prune(HistoryBounds { max_jobs: 1, max_age: TimeDelta::days(30) }, now).unwrap();

        assert_eq!(stored_lines(dir.path(), 0), 0);
        assert_eq!(stored_lines(dir.path(), 1), 2);
    }

    #[test]
    fn evicted_lines_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let eviction = Eviction { count: 6, last: Some((6, line(6).ts)) };

        apply(
            &mut store,
            vec![
                Write::Job(finished(0, ts(0))),
                Write::Lines { job: 0, lines: lines(1..=4), eviction: Eviction::default() },
                Write::Lines { job: 0, lines: lines(5..=9), eviction },
            ],
        );
        let loaded = store.load_finished(1).unwrap();

        assert_eq!(stored_lines(dir.path(), 0), 3);
        assert_eq!(loaded[0].lines, lines(7..=9));
        assert_eq!(loaded[0].eviction, eviction);
    }

    #[test]
    fn load_returns_newest_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        apply(&mut store, (0..5).map(|number| Write::Job(finished(number, ts(0)))).collect());

        let loaded: Vec<u64> = store.load_finished(3).unwrap().iter().map(|job| job.record.number).collect();

        assert_eq!(loaded, [2, 3, 4]);
        assert_eq!(store.next_number().unwrap(), 5);
    }

    #[test]
    fn empty_store_numbers_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();

        assert_eq!(store.next_number().unwrap(), 0);
        assert!(store.job_ids().unwrap().is_empty());
    }

    #[test]
    fn open_creates_private_directory() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state").join("coppice");

        let store = Store::open(&dir).unwrap();

        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{mode:o}");
        assert_eq!(store.path(), dir.join(DATABASE_FILE));
        let journal: String = store.connection.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
        assert_eq!(journal, "wal");
    }

    #[test]
    fn second_open_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();

        let error = Store::open(dir.path()).err().unwrap();

        assert!(matches!(error, StoreError::Locked { .. }), "{error}");
        assert!(error.to_string().contains(&dir.path().display().to_string()), "{error}");
    }

    #[test]
    fn reopen_keeps_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let job = finished(0, ts(0));
        {
            let mut store = Store::open(dir.path()).unwrap();
            apply(&mut store, vec![Write::Job(job.clone())]);
        }

        let store = Store::open(dir.path()).unwrap();

        assert_eq!(store.load_finished(1).unwrap()[0].record, job);
    }

    #[test]
    fn unwritable_directory_names_the_path() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("not-a-directory");
        std::fs::write(&file, "").unwrap();

        let error = Store::open(&file.join("state")).err().unwrap();

        assert!(matches!(error, StoreError::CreateDir { .. }), "{error}");
        assert!(error.to_string().contains("not-a-directory/state"), "{error}");
    }

    #[test]
    fn newer_schema_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        Connection::open(dir.path().join(DATABASE_FILE)).unwrap().pragma_update(None, "user_version", 99).unwrap();

        let error = Store::open(dir.path()).err().unwrap();

        assert!(matches!(error, StoreError::NewerSchema { found: 99, .. }), "{error}");
    }

    #[test]
    fn unreadable_row_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        apply(&mut store, vec![Write::Job(finished(0, ts(0))), Write::Job(finished(1, ts(0)))]);
        store.connection.execute("UPDATE jobs SET source = 'docker://x/y' WHERE number = 0", []).unwrap();

        let loaded: Vec<u64> = store.load_finished(10).unwrap().iter().map(|job| job.record.number).collect();

        assert_eq!(loaded, [1]);
    }

    #[test]
    fn unreadable_line_keeps_lines_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        apply(
            &mut store,
            vec![Write::Job(finished(0, ts(0))), Write::Lines { job: 0, lines: lines(1..=5), eviction: Eviction::default() }],
        );
        store.connection.execute("UPDATE log_lines SET stream = 'stdin' WHERE seq = 3", []).unwrap();

        let loaded = store.load_finished(1).unwrap();

        assert_eq!(loaded[0].lines, lines(4..=5));
        assert_eq!(loaded[0].eviction.count, 3);
    }

    #[test]
    fn gap_keeps_newest_contiguous_lines() {
        let mut stored = lines(3..=4);
        stored.extend(lines(7..=9));

        let (kept, eviction) = contiguous_tail(stored, Eviction { count: 2, last: Some((2, line(2).ts)) });

        assert_eq!(kept, lines(7..=9));
        assert_eq!(eviction, Eviction { count: 6, last: Some((6, line(4).ts)) });
    }

    #[test]
    fn lines_after_stale_eviction_start_a_new_one() {
        let (kept, eviction) = contiguous_tail(lines(5..=6), Eviction::default());

        assert_eq!(kept, lines(5..=6));
        assert_eq!(eviction.count, 4);
        assert_eq!(eviction.last.map(|(seq, _)| seq), Some(4));
    }

    #[test]
    fn failure_names_round_trip() {
        for kind in FailureKind::ALL {
            assert_eq!(parse_failure(failure_name(kind)), Some(kind));
        }
    }
}
