//! One build job: its request, its state, its log and its cancel token.

use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::log_buffer::{LogBuffer, LogLimits};
use super::model::{FailureKind, JobId, JobStatus, JobView, events_path, logs_path, template_path};
use super::store::StoredJob;
use crate::import::Imported;
use crate::line::Step;
use crate::names::{ImageRef, TemplateName};
use crate::steps::Template;

/// The mutable part of a job, changed only by its task.
struct JobState {
    status: JobStatus,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    step: Option<Step>,
    snapshot: Option<String>,
    size_bytes: Option<u64>,
    template: Option<Template>,
    error: Option<String>,
    failure: Option<FailureKind>,
}

pub struct Job {
    id: JobId,
    /// Submission order, which breaks ties between jobs created in the same microsecond.
    number: u64,
    name: TemplateName,
    from: ImageRef,
    created_at: DateTime<Utc>,
    cancel: CancellationToken,
    log: Arc<LogBuffer>,
    state: Mutex<JobState>,
}

impl Job {
    pub(super) fn new(number: u64, name: TemplateName, from: ImageRef, limits: LogLimits) -> Self {
        Self {
            id: JobId::new(),
            number,
            name,
            from,
            created_at: Utc::now(),
            cancel: CancellationToken::new(),
            log: Arc::new(LogBuffer::new(limits)),
            state: Mutex::new(JobState {
                status: JobStatus::Queued,
                started_at: None,
                finished_at: None,
                step: None,
                snapshot: None,
                size_bytes: None,
                template: None,
                error: None,
                failure: None,
            }),
        }
    }

    /// Rebuilds a finished job from the job history, with its log closed. Its
    /// `template` stays unset, since only the import's reload step fills that in.
    pub(super) fn restore(stored: StoredJob, limits: LogLimits) -> Self {
        let StoredJob { record, lines, eviction } = stored;

        // Starting from a new job keeps every field a restored job does not store at
        // the value a new job has.
        let mut job = Self::new(record.number, record.name, record.from, limits);
        job.id = record.id;
        job.created_at = record.created_at;
        job.log = Arc::new(LogBuffer::restored(limits, eviction, lines));

        {
            let mut state = job.lock();
            state.status = record.status;
            state.started_at = record.started_at;
            state.finished_at = record.finished_at;
            state.step = record.step;
            state.snapshot = record.snapshot;
            state.size_bytes = record.size_bytes;
            state.error = record.error;
            state.failure = record.failure;
        }
        job
    }

    pub fn id(&self) -> JobId {
        self.id
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    pub fn name(&self) -> &TemplateName {
        &self.name
    }

    pub fn from(&self) -> &ImageRef {
        &self.from
    }

    pub fn log(&self) -> &Arc<LogBuffer> {
        &self.log
    }

    /// Returns the token that stops this job's import. The runner passes it to every command.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn status(&self) -> JobStatus {
        self.lock().status
    }

    /// Returns the template the job created, once it succeeded and the reload listed it.
    pub fn template(&self) -> Option<Template> {
        self.lock().template.clone()
    }

    pub fn view(&self) -> JobView {
        let state = self.lock();
        JobView {
            job_id: self.id,
            name: self.name.clone(),
            from: self.from.clone(),
            status: state.status,
            created_at: self.created_at,
            started_at: state.started_at,
            finished_at: state.finished_at,
            step: state.step,
            snapshot: state.snapshot.clone(),
            size_bytes: state.size_bytes,
            error: state.error.clone(),
            failure: state.failure,
            logs_url: logs_path(self.id),
            events_url: events_path(self.id),
            template_url: template_path(&self.name),
        }
    }

    /// Waits until the job succeeded or failed and returns its final view.
    pub async fn finished(&self) -> JobView {
        self.log.closed().await;
        self.view()
    }

    pub(super) fn mark_running(&self) {
        let mut state = self.lock();
        state.status = JobStatus::Running;
        state.started_at = Some(Utc::now());
    }

    pub(super) fn set_step(&self, step: Step) {
        let mut state = self.lock();
        if state.status == JobStatus::Running {
            state.step = Some(step);
        }
    }

    /// Records a successful import. The log stays open: the registry closes it after
    /// releasing the name, so that anyone woken by the close can submit the name again.
    pub(super) fn record_success(&self, imported: &Imported) {
        let mut state = self.lock();
        state.status = JobStatus::Succeeded;
        state.finished_at = Some(Utc::now());
        state.step = None;
        state.snapshot = Some(imported.snapshot.clone());
        state.size_bytes = imported.size_bytes.or_else(|| imported.template.as_ref().and_then(|template| template.size_bytes));
        state.template = imported.template.clone();
    }

    /// Records a failed import. `error` is the sentence clients see.
    pub(super) fn record_failure(&self, error: String, failure: FailureKind) {
        let mut state = self.lock();
        state.status = JobStatus::Failed;
        state.finished_at = Some(Utc::now());
        state.step = None;
        state.error = Some(error);
        state.failure = Some(failure);
    }

    fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
