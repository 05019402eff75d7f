//! The import runner: calls the steps in order, always cleans up, and destroys only
//! what this import created. The CLI and the HTTP jobs both run imports through here.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::exec::{ExecError, RunOptions, StepLog};
use crate::line::{LineStamper, Step, Stream};
use crate::names::{Dataset, ImageRef, NameError, TemplateName};
use crate::steps::{self, ContainerName, DatasetProperty, StepContext, StepError, Template, Tools};
use crate::templates::TemplateRegistry;

/// Time limits of the steps. Pull and rsync get long defaults because a slow registry
/// or a large base system can take many minutes. The other steps only run local tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepTimeouts {
    pub pull: Duration,
    pub mount: Duration,
    pub rsync: Duration,
    pub snapshot: Duration,
    pub reload: Duration,
    pub cleanup: Duration,
}

impl Default for StepTimeouts {
    fn default() -> Self {
        Self {
            pull: Duration::from_secs(1800),
            mount: Duration::from_secs(300),
            rsync: Duration::from_secs(3600),
            snapshot: Duration::from_secs(300),
            reload: Duration::from_secs(300),
            cleanup: Duration::from_secs(300),
        }
    }
}

impl StepTimeouts {
    pub fn for_step(&self, step: Step) -> Duration {
        match step {
            Step::Pull => self.pull,
            Step::Mount => self.mount,
            Step::Rsync => self.rsync,
            Step::Snapshot => self.snapshot,
            Step::Reload => self.reload,
            Step::Cleanup => self.cleanup,
        }
    }
}

/// Settings shared by every import.
#[derive(Clone, Debug)]
pub struct ImportConfig {
    pub tools: Tools,
    pub jails: Dataset,
    /// Passed to `buildah pull --arch`; `None` lets buildah pick the host's.
    pub arch: Option<String>,
    pub timeouts: StepTimeouts,
    /// Time between SIGTERM and SIGKILL when a command is stopped.
    pub grace: Duration,
}

/// One import: its id (the job id when it runs as a job), the template and the image.
#[derive(Clone, Debug)]
pub struct ImportRequest {
    pub id: Uuid,
    pub name: TemplateName,
    pub from: ImageRef,
}

/// A finished import.
#[derive(Clone, Debug)]
pub struct Imported {
    pub snapshot: String,
    pub size_bytes: Option<u64>,
    pub template: Option<Template>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    InvalidName(#[from] NameError),

    #[error(
        "dataset {dataset} for template {name} already exists, so this import left it untouched; choose another name, or if it is an unfinished leftover (no @base snapshot) of an import that is not running, destroy it with `zfs destroy -r {dataset}`"
    )]
    AlreadyExists { name: TemplateName, dataset: String },

    #[error("jails dataset {jails} does not exist; create it (zfs create -p {jails}) or choose another with --jails-dataset")]
    JailsMissing { jails: String },

    #[error("template {name} is ready ({dataset}@base exists), so cleanup leaves it; destroy a ready template with `zfs destroy -r {dataset}` once no sandbox uses it")]
    Ready { name: TemplateName, dataset: String },

    #[error("step {step} failed: {source}")]
    Step {
        step: Step,
        #[source]
        source: StepError,
    },

    #[error("step {step} timed out after {} s", after.as_secs())]
    TimedOut {
        step: Step,
        after: Duration,
        #[source]
        source: StepError,
    },

    #[error("import cancelled during step {step}")]
    Cancelled { step: Step },
}

impl ImportError {
    /// Returns the step the import failed in, when it got that far.
    pub fn step(&self) -> Option<Step> {
        match self {
            ImportError::InvalidName(_)
            | ImportError::AlreadyExists { .. }
            | ImportError::JailsMissing { .. }
            | ImportError::Ready { .. } => None,
            ImportError::Step { step, .. } | ImportError::TimedOut { step, .. } | ImportError::Cancelled { step } => {
                Some(*step)
            }
        }
    }

    pub fn is_cancelled(&self) -> bool {
        matches!(self, ImportError::Cancelled { .. })
    }

    /// Returns the failed command's error, for callers that show its outcome.
    pub fn exec(&self) -> Option<&ExecError> {
        match self {
            ImportError::Step { source, .. } | ImportError::TimedOut { source, .. } => source.exec(),
            _ => None,
        }
    }
}

/// Record of what the import has created, so that cleanup undoes only that.
#[derive(Default)]
struct Progress {
    container: Option<ContainerName>,
    dataset_created: bool,
    snapshot_taken: bool,
}

/// Runs one import end to end. Output lines go through `stamper`; cancelling `cancel`
/// stops the running command and fails the import with [`ImportError::Cancelled`].
/// Cleanup runs whatever happened and cannot be cancelled.
pub async fn run_import(
    config: &ImportConfig,
    request: &ImportRequest,
    stamper: &LineStamper<'_>,
    cancel: &CancellationToken,
    registry: &TemplateRegistry,
) -> Result<Imported, ImportError> {
    let span = tracing::info_span!("import", job = %request.id, name = %request.name);
    async {
        let dataset = config.jails.template(&request.name)?;
        tracing::info!(from = %request.from, %dataset, "import started");

        let mut progress = Progress::default();
        let result = run_steps(config, request, &dataset, stamper, cancel, registry, &mut progress).await;

        cleanup(config, &dataset, &progress, result.is_err(), stamper).await;

        match &result {
            Ok(imported) => tracing::info!(snapshot = %imported.snapshot, size_bytes = ?imported.size_bytes, "import succeeded"),
            Err(error) => tracing::info!(step = ?error.step().map(Step::as_str), %error, "import failed"),
        }
        result
    }
    .instrument(span)
    .await
}

async fn run_steps(
    config: &ImportConfig,
    request: &ImportRequest,
    dataset: &Dataset,
    stamper: &LineStamper<'_>,
    cancel: &CancellationToken,
    registry: &TemplateRegistry,
    progress: &mut Progress,
) -> Result<Imported, ImportError> {
    let options = RunOptions { cancel: cancel.clone(), grace: config.grace, ..RunOptions::default() };
    let runner = StepRunner { config, stamper, options: &options };

    let context = runner.enter(Step::Pull);
    // The dataset checks run before the pull, so a missing jails dataset or a taken
    // name fails in a second rather than after a long download. `zfs create` without -p stays the authoritative check.
    if !runner.step(Step::Pull, steps::dataset_exists(context, &config.jails)).await? {
        return Err(ImportError::JailsMissing { jails: config.jails.to_string() });
    }
    if runner.step(Step::Pull, steps::dataset_exists(context, dataset)).await? {
        return Err(ImportError::AlreadyExists { name: request.name.clone(), dataset: dataset.to_string() });
    }
    let image = runner.step(Step::Pull, steps::pull(context, &request.from, config.arch.as_deref())).await?;

    let context = runner.enter(Step::Mount);
    let container = ContainerName::for_import(request.id);
    progress.container = Some(container.clone());
    let mounted = runner.step(Step::Mount, steps::mount(context, &image, &container)).await?;

    let context = runner.enter(Step::Rsync);
    let properties = [
        DatasetProperty { name: "coppice:from", value: request.from.source() },
        DatasetProperty { name: "coppice:job", value: request.id.to_string() },
    ];
    runner.step(Step::Rsync, steps::create_dataset(context, dataset, &properties)).await?;
    progress.dataset_created = true;
    let mountpoint = runner.step(Step::Rsync, steps::read_mountpoint(context, dataset)).await?;
    runner.step(Step::Rsync, steps::copy(context, &mounted.path, &mountpoint)).await?;

    let context = runner.enter(Step::Snapshot);
    let (snapshot, size_bytes) = runner.step(Step::Snapshot, steps::snapshot(context, dataset)).await?;
    progress.snapshot_taken = true;

    let context = runner.enter(Step::Reload);
    let ticket = registry.ticket();
    let templates = runner.step(Step::Reload, steps::list_templates(context, &config.jails)).await?;
    let template = templates.iter().find(|template| template.name == request.name.as_str()).cloned();
    registry.replace_from(ticket, templates);

    Ok(Imported { snapshot, size_bytes, template })
}

/// Builds each step's context and maps step errors to import errors. The CLI's
/// single-step commands use it too, so one step alone runs exactly as in an import.
pub struct StepRunner<'a> {
    config: &'a ImportConfig,
    stamper: &'a LineStamper<'a>,
    options: &'a RunOptions,
}

impl<'a> StepRunner<'a> {
    pub fn new(config: &'a ImportConfig, stamper: &'a LineStamper<'a>, options: &'a RunOptions) -> Self {
        Self { config, stamper, options }
    }

    /// Starts `step`: logs it, notifies the sink, and starts the step's time limit.
    pub fn enter(&self, step: Step) -> StepContext<'a> {
        tracing::info!(step = step.as_str(), "step started");
        self.stamper.step_started(step);
        StepContext {
            tools: &self.config.tools,
            log: StepLog { stamper: self.stamper, step },
            options: self.options,
            deadline: Some(Instant::now() + self.config.timeouts.for_step(step)),
        }
    }

    /// Awaits a step's work and maps its error to an [`ImportError`] of that step.
    pub async fn step<T>(&self, step: Step, work: impl Future<Output = Result<T, StepError>>) -> Result<T, ImportError> {
        work.await.map_err(|source| classify(self.config, step, source))
    }
}

fn classify(config: &ImportConfig, step: Step, source: StepError) -> ImportError {
    match source.exec() {
        Some(ExecError::Cancelled { .. }) => ImportError::Cancelled { step },
        Some(ExecError::TimedOut { .. }) => ImportError::TimedOut { step, after: config.timeouts.for_step(step), source },
        _ => ImportError::Step { step, source },
    }
}

/// Removes the working container and, when the import failed before its snapshot,
/// the dataset it created. Errors are logged, not returned: the import's own result
/// is what the caller needs, and a leftover is swept by the next start-up.
async fn cleanup(config: &ImportConfig, dataset: &Dataset, progress: &Progress, failed: bool, stamper: &LineStamper<'_>) {
    // Cleanup gets its own token: a cancel stops the import, never its cleanup.
    let options = RunOptions { grace: config.grace, ..RunOptions::default() };
    let runner = StepRunner { config, stamper, options: &options };
    let context = runner.enter(Step::Cleanup);

    if let Some(container) = &progress.container
        && let Err(error) = steps::remove_container(context, container).await
    {
        tracing::warn!(%container, %error, "failed to remove the working container");
        context.log.emit(Stream::Stderr, format!("coppice: failed to remove container {container}: {error}"));
    }

    // A dataset with @base is a ready template even if a later step failed, so only an
    // unfinished one is destroyed.
    if failed
        && progress.dataset_created
        && !progress.snapshot_taken
        && let Err(error) = steps::destroy_dataset(context, dataset).await
    {
        tracing::warn!(%dataset, %error, "failed to destroy the unfinished dataset");
        context.log.emit(Stream::Stderr, format!("coppice: failed to destroy {dataset}: {error}"));
    }
}
