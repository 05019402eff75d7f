//! The job registry: every job by id, the reservation of template names, the FIFO
//! queue with its concurrency limit, and the retention of finished jobs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::history::{History, LogPersister, Recovered};
use super::job::{CancelOutcome, CancelReason, Job};
use super::log_buffer::LogLimits;
use super::model::{JobId, JobStatus, JobView};
use super::store::JobRecord;
use super::task::run_job;
use crate::import::ImportConfig;
use crate::names::{ImageRef, NameError, TemplateName};
use crate::templates::TemplateRegistry;

/// Default number of imports that run at once.
pub const DEFAULT_MAX_CONCURRENT_BUILDS: usize = 2;

/// Default number of finished jobs kept for clients to inspect.
pub const DEFAULT_RETAINED_JOBS: usize = 100;

/// Limits of the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobsConfig {
    /// Imports that run at once; later jobs wait as `queued`. At least 1.
    pub max_concurrent_builds: usize,
    pub log_limits: LogLimits,
    /// Finished jobs kept; the oldest finished job is dropped first. At least 1.
    pub retained_jobs: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_concurrent_builds: DEFAULT_MAX_CONCURRENT_BUILDS,
            log_limits: LogLimits::default(),
            retained_jobs: DEFAULT_RETAINED_JOBS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("invalid template name: {0}")]
    InvalidName(#[from] NameError),

    #[error("template {name} already exists (snapshot {snapshot}); choose another name or destroy the template first")]
    TemplateExists { name: TemplateName, snapshot: String },

    #[error("a build of template {name} is already {status} as job {job}; follow that job instead of starting another")]
    BuildInProgress { name: TemplateName, job: JobId, status: JobStatus },

    #[error("the server is shutting down and accepts no new builds; submit the build again once it is back")]
    ShuttingDown,
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("job {0} not found; GET /templates/builds lists the jobs this server retains")]
    NotFound(JobId),

    #[error("job {} already {}; only a queued or running job can be cancelled", .0.job_id, .0.status)]
    AlreadyFinished(Box<JobView>),
}

/// The filter of a job listing; `None` matches every job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub name: Option<TemplateName>,
}

struct Inner {
    jobs: HashMap<JobId, Arc<Job>>,
    /// The queued or running job of each busy template name.
    active: HashMap<TemplateName, JobId>,
    /// Finished jobs, oldest first, for retention.
    finished: VecDeque<JobId>,
    next_number: u64,
    queue: mpsc::UnboundedSender<Arc<Job>>,
    shutting_down: bool,
}

/// All jobs of this process. A submission checks the template registry and the name
/// reservations under one lock, so two concurrent requests for one name cannot both
/// be accepted.
pub struct JobRegistry {
    import: ImportConfig,
    config: JobsConfig,
    templates: Arc<TemplateRegistry>,
    inner: Mutex<Inner>,
    /// The durable history every job is recorded in, when the server has one.
    history: OnceLock<History>,
}

impl JobRegistry {
    /// Creates the registry and starts its dispatcher on the current tokio runtime.
    pub fn start(import: ImportConfig, config: JobsConfig, templates: Arc<TemplateRegistry>) -> Arc<Self> {
        let config = JobsConfig {
            max_concurrent_builds: config.max_concurrent_builds.max(1),
            retained_jobs: config.retained_jobs.max(1),
            ..config
        };
        let (queue, receiver) = mpsc::unbounded_channel();
        let registry = Arc::new(Self {
            import,
            config,
            templates,
            inner: Mutex::new(Inner {
                jobs: HashMap::new(),
                active: HashMap::new(),
                finished: VecDeque::new(),
                next_number: 0,
                queue,
                shutting_down: false,
            }),
            history: OnceLock::new(),
        });

        let slots = Arc::new(Semaphore::new(config.max_concurrent_builds));
        tokio::spawn(dispatch(Arc::downgrade(&registry), receiver, slots));
        registry
    }

    /// Creates the registry with the finished jobs of an earlier run, and records
    /// every job from now on in `history`.
    pub fn start_with_history(
        import: ImportConfig,
        config: JobsConfig,
        templates: Arc<TemplateRegistry>,
        history: History,
        recovered: Recovered,
    ) -> Arc<Self> {
        let registry = Self::start(import, config, templates);
        registry.restore(recovered);
        // The registry was created just above, so the history is not set yet.
        let _ = registry.history.set(history);
        registry
    }

    /// Adds finished jobs read from the history, oldest first, so that every route
    /// serves them as before. New jobs are numbered after all stored ones, which keeps
    /// listings newest first.
    fn restore(&self, recovered: Recovered) {
        let mut inner = self.lock();
        inner.next_number = inner.next_number.max(recovered.next_number);

        for stored in recovered.jobs {
            let job = Arc::new(Job::restore(stored, self.config.log_limits));
            inner.next_number = inner.next_number.max(job.number() + 1);
            inner.finished.push_back(job.id());
            inner.jobs.insert(job.id(), job);
        }
        while inner.finished.len() > self.config.retained_jobs {
            if let Some(oldest) = inner.finished.pop_front() {
                inner.jobs.remove(&oldest);
            }
        }
    }

    /// Reserves `name` and queues an import of `from` into it. Returns the job and its
    /// view as submitted, taken before the dispatcher can start it.
    ///
    /// Fails when the template is already in the registry or another job for the name
    /// is queued or running. A template present in ZFS but missing from the registry
    /// is still caught: the import's own dataset check fails the job.
    pub fn submit(&self, name: TemplateName, from: ImageRef) -> Result<(Arc<Job>, JobView), SubmitError> {
        self.import.jails.template(&name)?;

        let mut inner = self.lock();

        if inner.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        if let Some(template) = self.templates.get(name.as_str()) {
            return Err(SubmitError::TemplateExists { name, snapshot: template.snapshot });
        }
        if let Some(holder) = inner.active.get(&name).and_then(|id| inner.jobs.get(id)) {
            return Err(SubmitError::BuildInProgress { name, job: holder.id(), status: holder.status() });
        }

        let job = Arc::new(Job::new(inner.next_number, name.clone(), from, self.config.log_limits));
        inner.next_number += 1;
        inner.active.insert(name, job.id());
        inner.jobs.insert(job.id(), Arc::clone(&job));
        let view = job.view();
        // Recorded under the lock, so rows reach the history in submission order.
        self.record_view(job.number(), &view);

        // Sending under the lock keeps the queue in the order names were reserved.
        if inner.queue.send(Arc::clone(&job)).is_err() {
            tracing::error!(job = %job.id(), "the job dispatcher is gone; the job stays queued");
        }

        tracing::info!(job = %job.id(), name = %job.name(), from = %job.from(), "job queued");
        Ok((job, view))
    }

    /// Cancels a queued or running job. A queued job leaves the queue and fails at
    /// once. A running job's current command is terminated, cleanup runs, and the job
    /// then fails with `cancelled: true`. Returns the job's view after the request.
    pub fn cancel(&self, id: JobId) -> Result<JobView, CancelError> {
        let job = self.get(id).ok_or(CancelError::NotFound(id))?;

        match job.request_cancel(CancelReason::Request) {
            CancelOutcome::AlreadyFinished => return Err(CancelError::AlreadyFinished(Box::new(job.view()))),
            CancelOutcome::RemovedFromQueue => {
                tracing::info!(job = %id, name = %job.name(), "job cancelled while queued");
                self.finish_without_task(&job);
            }
            CancelOutcome::Stopping => tracing::info!(job = %id, name = %job.name(), "job cancel requested; stopping its import"),
        }
        Ok(job.view())
    }

    /// Stops accepting builds, cancels every queued and running job, and waits up to
    /// `timeout` for their imports to stop and clean up. Returns the jobs still
    /// unfinished at the deadline.
    pub async fn shut_down(&self, timeout: Duration) -> Vec<JobId> {
        let active: Vec<Arc<Job>> = {
            let mut inner = self.lock();
            inner.shutting_down = true;
            inner.active.values().filter_map(|id| inner.jobs.get(id).cloned()).collect()
        };

        for job in &active {
            if job.request_cancel(CancelReason::Shutdown) == CancelOutcome::RemovedFromQueue {
                self.finish_without_task(job);
            }
        }
        tracing::info!(jobs = active.len(), "shutting down: stopping queued and running jobs");

        let all_finished = wait_for_all(active.iter().map(|job| job.finished()));
        if tokio::time::timeout(timeout, all_finished).await.is_err() {
            let left: Vec<JobId> = active.iter().filter(|job| !job.status().is_finished()).map(|job| job.id()).collect();
            tracing::warn!(jobs = ?left.iter().map(ToString::to_string).collect::<Vec<_>>(), timeout_secs = timeout.as_secs(), "jobs still stopping at the shutdown deadline");
            return left;
        }
        Vec::new()
    }

    /// Ends a job that failed before its task ran: frees its name and closes its log.
    fn finish_without_task(&self, job: &Job) {
        self.release(job);
        job.log().close();
    }

    pub fn get(&self, id: JobId) -> Option<Arc<Job>> {
        self.lock().jobs.get(&id).cloned()
    }

    /// Returns the jobs matching `filter`, newest first.
    pub fn list(&self, filter: &JobFilter) -> Vec<JobView> {
        let mut jobs: Vec<Arc<Job>> = self.lock().jobs.values().cloned().collect();
        jobs.sort_by_key(|job| std::cmp::Reverse(job.number()));

        jobs.iter()
            .filter(|job| filter.name.as_ref().is_none_or(|name| job.name() == name))
            .map(|job| job.view())
            .filter(|view| filter.status.is_none_or(|status| view.status == status))
            .collect()
    }

    pub fn templates(&self) -> &Arc<TemplateRegistry> {
        &self.templates
    }

    pub fn import_config(&self) -> &ImportConfig {
        &self.import
    }

    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    /// Queues the job's current state for the history. Returns at once.
    pub(super) fn record(&self, job: &Job) {
        self.record_view(job.number(), &job.view());
    }

    fn record_view(&self, number: u64, view: &JobView) {
        if let Some(history) = self.history.get() {
            history.record(JobRecord::new(number, view));
        }
    }

    /// Waits until everything sent to the history so far is committed.
    pub(super) async fn sync_history(&self) {
        if let Some(history) = self.history.get() {
            history.sync().await;
        }
    }

    /// Starts copying the job's log lines into the history.
    pub(super) fn persist_log(&self, job: &Job) -> Option<LogPersister> {
        let history = self.history.get()?;
        Some(LogPersister::start(history.clone(), job.number(), Arc::clone(job.log())))
    }

    /// Records the final state of a finished job in the history, frees its name, and
    /// drops the oldest finished jobs over the retention limit.
    pub(super) fn release(&self, job: &Job) {
        self.record(job);
        if let Some(history) = self.history.get() {
            history.prune();
        }

        let mut inner = self.lock();

        if inner.active.get(job.name()) == Some(&job.id()) {
            inner.active.remove(job.name());
        }

        inner.finished.push_back(job.id());
        while inner.finished.len() > self.config.retained_jobs {
            if let Some(oldest) = inner.finished.pop_front() {
                inner.jobs.remove(&oldest);
                tracing::debug!(job = %oldest, "dropped a finished job over the retention limit");
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Starts queued jobs in submission order, each once a slot is free. One task takes
/// jobs off the queue and waits for the semaphore, so the order cannot depend on
/// which spawned task the scheduler happens to poll first.
async fn dispatch(registry: Weak<JobRegistry>, mut queue: mpsc::UnboundedReceiver<Arc<Job>>, slots: Arc<Semaphore>) {
    while let Some(job) = queue.recv().await {
        // A job cancelled while queued has already failed; it needs no slot.
        if job.status().is_finished() {
            continue;
        }
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(registry) = registry.upgrade() else {
            return;
        };
        tokio::spawn(run_job(registry, job, permit));
    }
}

/// Waits for every future in turn, which ends when the slowest one has.
async fn wait_for_all<F: Future>(futures: impl Iterator<Item = F>) {
    for future in futures {
        future.await;
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::jobs::{LogCursor, LogWindow};
    use crate::names::Dataset;
    use crate::steps::{Template, Tools};

    /// Returns an import config whose tools do not exist, so every import fails at once
    /// in its first command without touching ZFS.
    fn failing_config() -> ImportConfig {
        ImportConfig {
            tools: Tools {
                buildah: "/nonexistent/buildah".into(),
                rsync: "/nonexistent/rsync".into(),
                zfs: "/nonexistent/zfs".into(),
            },
            jails: Dataset::parse("zroot/jails").unwrap(),
            arch: None,
            timeouts: Default::default(),
            grace: Duration::from_secs(1),
        }
    }

    fn name(value: &str) -> TemplateName {
        TemplateName::parse(value).unwrap()
    }

    fn image() -> ImageRef {
        ImageRef::parse_source("oci:127.0.0.1:5000/coppice/sample:14").unwrap()
    }

    fn template(name: &str) -> Template {
        Template {
            name: name.to_owned(),
            dataset: format!("zroot/jails/{name}-template"),
            snapshot: format!("zroot/jails/{name}-template@base"),
            size_bytes: None,
            created_at: None,
            from: None,
        }
    }

    #[tokio::test]
    async fn existing_template_is_rejected() {
        let templates = Arc::new(TemplateRegistry::default());
        templates.replace(vec![template("web")]);
        let registry = JobRegistry::start(failing_config(), JobsConfig::default(), templates);

        let error = registry.submit(name("web"), image()).err().unwrap();

        assert!(matches!(error, SubmitError::TemplateExists { .. }), "{error}");
        assert!(error.to_string().contains("zroot/jails/web-template@base"), "{error}");
    }

    #[tokio::test]
    async fn second_submission_names_the_holder() {
        let registry = JobRegistry::start(failing_config(), JobsConfig::default(), Arc::default());

        let (first, _) = registry.submit(name("web"), image()).unwrap();
        let second = registry.submit(name("web"), image()).err().unwrap();

        match second {
            SubmitError::BuildInProgress { job, .. } => assert_eq!(job, first.id()),
            other => panic!("expected BuildInProgress, got {other}"),
        }
    }

    #[tokio::test]
    async fn failed_job_frees_name_keeps_log() {
        let registry = JobRegistry::start(failing_config(), JobsConfig::default(), Arc::default());
        let (job, submitted) = registry.submit(name("web"), image()).unwrap();

        let view = job.finished().await;
        let again = registry.submit(name("web"), image());

        assert_eq!(submitted.status, JobStatus::Queued);
        assert_eq!(view.status, JobStatus::Failed);
        let error = view.error.unwrap();
        assert!(error.contains("/nonexistent/zfs"), "{error}");
        assert!(!job.log().is_empty());
        assert!(again.is_ok());
    }

    #[tokio::test]
    async fn oldest_finished_jobs_are_dropped() {
        let config = JobsConfig { retained_jobs: 2, ..JobsConfig::default() };
        let registry = JobRegistry::start(failing_config(), config, Arc::default());

        let mut ids = Vec::new();
        for value in ["a", "b", "c"] {
            let (job, _) = registry.submit(name(value), image()).unwrap();
            job.finished().await;
            ids.push(job.id());
        }

        assert!(registry.get(ids[0]).is_none());
        assert!(registry.get(ids[1]).is_some());
        assert!(registry.get(ids[2]).is_some());
    }

    #[tokio::test]
    async fn jobs_start_in_submission_order() {
        let config = JobsConfig { max_concurrent_builds: 1, ..JobsConfig::default() };
        let registry = JobRegistry::start(failing_config(), config, Arc::default());

        let jobs: Vec<Arc<Job>> = (0..5).map(|index| registry.submit(name(&format!("t{index}")), image()).unwrap().0).collect();
        let mut views = Vec::new();
        for job in &jobs {
            views.push(job.finished().await);
        }

        for pair in views.windows(2) {
            let (earlier, later) = (&pair[0], &pair[1]);
            assert!(later.started_at >= earlier.finished_at, "{} started before {} finished", later.name, earlier.name);
        }
    }

    #[tokio::test]
    async fn list_is_newest_first_and_filtered() {
        let registry = JobRegistry::start(failing_config(), JobsConfig::default(), Arc::default());
        let (first, _) = registry.submit(name("a"), image()).unwrap();
        first.finished().await;
        let (second, _) = registry.submit(name("b"), image()).unwrap();
        second.finished().await;

        let all = registry.list(&JobFilter::default());
        let only_a = registry.list(&JobFilter { name: Some(name("a")), ..JobFilter::default() });
        let running = registry.list(&JobFilter { status: Some(JobStatus::Running), ..JobFilter::default() });

        assert_eq!(all.iter().map(|view| view.job_id).collect::<Vec<_>>(), [second.id(), first.id()]);
        assert_eq!(only_a.len(), 1);
        assert_eq!(only_a[0].job_id, first.id());
        assert!(running.is_empty());
    }

    /// Starts a registry whose history lives in `dir`, with what an earlier run left there.
    fn start_persistent(dir: &std::path::Path, config: JobsConfig) -> Arc<JobRegistry> {
        let opened = crate::jobs::open_history(dir, Default::default(), config.retained_jobs).unwrap();
        JobRegistry::start_with_history(failing_config(), config, Arc::default(), opened.history, opened.recovered)
    }

    #[tokio::test]
    async fn restart_serves_finished_jobs_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let registry = start_persistent(dir.path(), JobsConfig::default());
        let mut before = Vec::new();
        for value in ["a", "b"] {
            let (job, _) = registry.submit(name(value), image()).unwrap();
            job.finished().await;
            before.push((job.view(), job.log().query(LogCursor::Start, LogWindow::First(1000)), job.log().eviction()));
        }
        drop(registry);
        drop(crate::jobs::history::tests::reopen(dir.path()));

        let registry = start_persistent(dir.path(), JobsConfig::default());
        let listed = registry.list(&JobFilter::default());
        let (next, _) = registry.submit(name("c"), image()).unwrap();
        next.finished().await;
        let relisted = registry.list(&JobFilter::default());

        // The API shows times in microseconds, the precision the history keeps.
        let json = |views: &[JobView]| serde_json::to_value(views).unwrap();
        assert_eq!(json(&listed), json(&[before[1].0.clone(), before[0].0.clone()]), "restored jobs are listed newest first");
        for (view, page, eviction) in &before {
            let job = registry.get(view.job_id).unwrap();
            assert!(job.log().is_closed());
            assert!(!page.lines.is_empty());
            assert_eq!(&job.log().query(LogCursor::Start, LogWindow::First(1000)), page);
            assert_eq!(&job.log().eviction(), eviction);
        }
        assert_eq!(relisted.first().map(|view| view.job_id), Some(next.id()), "a new job is listed first");
        assert!(next.number() > registry.get(before[1].0.job_id).unwrap().number());
    }
}
