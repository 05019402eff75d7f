//! Build jobs: the job model and lifecycle (queued → running → succeeded | failed),
//! the atomic reservation of template names, the FIFO queue with its concurrency
//! limit, the bounded log of each job with its live followers, and the durable
//! history of every job in SQLite.

mod history;
mod job;
mod log_buffer;
mod model;
mod registry;
mod store;
mod task;

pub use history::{FLUSH_INTERVAL, History, OpenedHistory, Recovered, open_history};
pub use job::Job;
pub use log_buffer::{
    DEFAULT_MAX_BYTES, DEFAULT_MAX_LINES, EncodedBatch, EncodedLine, Eviction, Followed, LogBatch, LogBuffer,
    LogCursor, LogFollower, LogLimits, LogPage, LogProgress, LogWindow, line_cost,
};
pub use model::{FailureKind, JobId, JobStatus, JobView, events_path, job_path, logs_path, template_path};
pub use job::CancelReason;
pub use registry::{
    CancelError, DEFAULT_MAX_CONCURRENT_BUILDS, DEFAULT_RETAINED_JOBS, JobFilter, JobRegistry, JobsConfig, SubmitError,
};
pub use store::{
    DATABASE_FILE, DEFAULT_HISTORY_MAX_AGE_DAYS, DEFAULT_HISTORY_MAX_JOBS, DEFAULT_STATE_DIR, HistoryBounds, JobRecord,
    LOCK_FILE, Store, StoreError, StoredJob, interrupted_error,
};
