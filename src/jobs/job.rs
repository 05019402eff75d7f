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

/// Reason a job's cancel token was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// A client asked for it with `POST /templates/builds/:job_id/cancel`.
    Request,
    /// The server is shutting down.
    Shutdown,
}

/// Result of a cancel request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CancelOutcome {
    /// The job was queued and is now failed; its name must be released.
    RemovedFromQueue,
    /// The job is running; its import stops and cleans up, then the task records it.
    Stopping,
    /// The job had already finished.
    AlreadyFinished,
}

/// The mutable part of a job, changed by its task and by cancel requests.
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
    cancel_reason: Option<CancelReason>,
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
                cancel_reason: None,
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
            cancelled: state.failure == Some(FailureKind::Cancelled),
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

    /// Moves a queued job to `running`. Returns false when the job left the queue
    /// another way (it was cancelled while it waited).
    pub(super) fn mark_running(&self) -> bool {
        let mut state = self.lock();
        if state.status != JobStatus::Queued {
            return false;
        }
        state.status = JobStatus::Running;
        state.started_at = Some(Utc::now());
        true
    }

    /// Cancels the job for `reason`. A queued job fails at once; a running job's
    /// import is stopped through its cancel token. Deciding under the state lock keeps
    /// a job from being both cancelled in the queue and started.
    pub(super) fn request_cancel(&self, reason: CancelReason) -> CancelOutcome {
        let mut state = self.lock();
        match state.status {
            JobStatus::Succeeded | JobStatus::Failed => CancelOutcome::AlreadyFinished,
            JobStatus::Queued => {
                let (error, failure) = match reason {
                    CancelReason::Request => ("cancelled while queued; the import never started".to_owned(), FailureKind::Cancelled),
                    CancelReason::Shutdown => (
                        "the gateway shut down while the job was queued; the import never started".to_owned(),
                        FailureKind::Interrupted,
                    ),
                };
                state.status = JobStatus::Failed;
                state.finished_at = Some(Utc::now());
                state.error = Some(error);
                state.failure = Some(failure);
                state.cancel_reason = Some(reason);
                self.cancel.cancel();
                CancelOutcome::RemovedFromQueue
            }
            JobStatus::Running => {
                // The first reason wins: a shutdown after a client's cancel is still a cancel.
                state.cancel_reason.get_or_insert(reason);
                self.cancel.cancel();
                CancelOutcome::Stopping
            }
        }
    }

    pub(super) fn cancel_reason(&self) -> Option<CancelReason> {
        self.lock().cancel_reason
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
