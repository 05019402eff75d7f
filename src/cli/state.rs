//! Start-up of the job history for `coppice serve`: open it, mark the jobs a stop
//! interrupted, and sweep the leftovers of their imports.

use std::collections::HashSet;

use uuid::Uuid;

use coppice::import::ImportConfig;
use coppice::jobs::{History, Recovered, open_history};
use coppice::sweep;

use super::args::ServeArgs;

/// Opens the history in `--state-dir` and sweeps the leftovers of interrupted imports.
/// Returns `None` after logging why the history could not be opened.
pub async fn recover_history(config: &ImportConfig, args: &ServeArgs) -> Option<(History, Recovered)> {
    let dir = args.state_dir.clone();
    let bounds = args.history_bounds();
    let load = args.retained_jobs;
    let opened = match tokio::task::spawn_blocking(move || open_history(&dir, bounds, load)).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(error)) => {
            tracing::error!(state_dir = %args.state_dir.display(), %error, "failed to open the job history");
            return None;
        }
        Err(error) => {
            tracing::error!(state_dir = %args.state_dir.display(), %error, "the job history start-up task failed");
            return None;
        }
    };

    tracing::info!(
        state_dir = %args.state_dir.display(),
        known_jobs = opened.known_jobs.len(),
        restored_jobs = opened.recovered.jobs.len(),
        pruned_jobs = opened.pruned,
        "opened the job history"
    );
    for record in &opened.interrupted {
        tracing::warn!(job = %record.id, name = %record.name, error = record.error.as_deref().unwrap_or_default(), "marked an interrupted job as failed");
    }

    sweep_leftovers(config, &opened.known_jobs).await;
    Some((opened.history, opened.recovered))
}

/// Removes the unfinished datasets and working containers of jobs in this history.
///
/// A job counts as dead only when this server's own history contains it, and at
/// start-up none of those jobs runs. Another server with its own state directory, or
/// a `coppice import` in a terminal, may be importing on the same pool right now. Its
/// job id is not in this history, so its dataset and container are left alone.
async fn sweep_leftovers(config: &ImportConfig, known_jobs: &HashSet<Uuid>) {
    let report = sweep::sweep(&config.tools, &config.jails, |job| known_jobs.contains(&job)).await;

    if report.errors.is_empty() {
        tracing::info!(
            destroyed_datasets = report.destroyed_datasets.len(),
            removed_containers = report.removed_containers.len(),
            "start-up sweep finished"
        );
    } else {
        tracing::warn!(
            destroyed_datasets = report.destroyed_datasets.len(),
            removed_containers = report.removed_containers.len(),
            errors = ?report.errors,
            "start-up sweep finished with errors; the leftovers it could not remove stay until the next start-up"
        );
    }
}
