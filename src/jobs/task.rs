//! The task of one job: runs the import with the job's log as the line sink.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::job::{CancelReason, Job};
use super::model::FailureKind;
use super::registry::JobRegistry;
use crate::import::{self, ImportError, ImportRequest, Imported};
use crate::line::{LineSink, LineStamper, LogLine, Step};

/// Sends the import's lines into the job's buffer and its step into the job's state
/// and the history.
struct JobSink<'a> {
    job: &'a Job,
    registry: &'a JobRegistry,
}

impl LineSink for JobSink<'_> {
    fn line(&self, line: LogLine) {
        self.job.log().push(line);
    }

    fn lines(&self, lines: Vec<LogLine>) {
        self.job.log().push_all(lines);
    }

    fn step_started(&self, step: Step, _at: DateTime<Utc>) {
        self.job.set_step(step);
        self.registry.record(self.job);
    }
}

/// Runs `job` in the slot `permit` holds, records its result, releases its template
/// name and then closes its log.
pub(super) async fn run_job(registry: Arc<JobRegistry>, job: Arc<Job>, permit: OwnedSemaphorePermit) {
    let span = tracing::info_span!("job", job = %job.id(), name = %job.name());
    async move {
        if !job.mark_running() {
            tracing::info!("job left the queue before it started");
            return;
        }
        registry.record(&job);
        // The row is committed before the import creates a container or a dataset, so
        // after a crash the start-up sweep finds the job that left them in the history.
        registry.sync_history().await;
        let persister = registry.persist_log(&job);
        tracing::info!("job started");

        // The import runs in its own task so that a panic in it fails this job instead
        // of leaving it `running` with its name reserved forever.
        let import = tokio::spawn(import_job(Arc::clone(&registry), Arc::clone(&job)).in_current_span());
        let result = import.await;
        drop(permit);

        // The last lines are committed before the finished status, so a job the history
        // shows as finished has all of its lines.
        if let Some(persister) = persister {
            persister.finish().await;
        }

        match result {
            Ok(Ok(imported)) => {
                job.record_success(&imported);
                tracing::info!(snapshot = %imported.snapshot, size_bytes = ?imported.size_bytes, "job succeeded");
            }
            Ok(Err(ImportError::Cancelled { step })) => {
                let (error, failure) = match job.cancel_reason() {
                    Some(CancelReason::Shutdown) => (
                        format!("the gateway shut down during step {step}; the import was stopped and cleaned up"),
                        FailureKind::Interrupted,
                    ),
                    Some(CancelReason::Request) | None => (
                        format!("cancelled during step {step}; the import was stopped and cleaned up"),
                        FailureKind::Cancelled,
                    ),
                };
                tracing::info!(step = step.as_str(), %error, "job stopped");
                job.record_failure(error, failure);
            }
            Ok(Err(error)) => {
                job.record_failure(error.to_string(), FailureKind::of(&error));
                tracing::warn!(step = ?error.step().map(Step::as_str), %error, "job failed");
            }
            Err(join_error) => {
                let error = format!("internal error: the import task ended without a result ({join_error}); see the service log");
                job.record_failure(error, FailureKind::Internal);
                tracing::error!(error = %join_error, "import task panicked");
            }
        }

        registry.release(&job);
        // Anyone woken by the close, such as a blocking POST /templates, finds the
        // final state already in the history.
        registry.sync_history().await;
        job.log().close();
    }
    .instrument(span)
    .await;
}

async fn import_job(registry: Arc<JobRegistry>, job: Arc<Job>) -> Result<Imported, ImportError> {
    let sink = JobSink { job: &job, registry: &registry };
    let stamper = LineStamper::new(&sink);
    let request = ImportRequest { id: job.id().as_uuid(), name: job.name().clone(), from: job.from().clone() };

    import::run_import(registry.import_config(), &request, &stamper, job.cancel_token(), registry.templates()).await
}
