//! The start-up sweep: removes what imports interrupted by a crash left behind.
//!
//! Only marked leftovers are touched: a dataset `<jails>/<name>-template` whose
//! `coppice:job` property names an import the caller says is dead and which has no
//! `@base` snapshot, and a working container named `coppice-<job id>` of such an
//! import. Everything else is left alone.

use std::collections::HashSet;
use std::time::Duration;

use uuid::Uuid;

use crate::exec::{self, Command, ExecError, RunOptions, StepLog};
use crate::line::{LineSink, LineStamper, LogLine, Step};
use crate::names::Dataset;
use crate::steps::{self, BASE_SNAPSHOT, CONTAINER_PREFIX, ContainerName, StepContext, Tools};

/// Time limit of each sweep command.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Result of a sweep: the leftovers it removed and the errors it met.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub destroyed_datasets: Vec<String>,
    pub removed_containers: Vec<String>,
    pub errors: Vec<String>,
}

/// Builds `zfs get` of the `coppice:job` mark over the templates and their snapshots.
pub fn marks_command(tools: &Tools, jails: &Dataset) -> Command {
    Command::new(&tools.zfs).args(["get", "-H", "-d", "2", "-o", "name,value", "coppice:job", jails.as_str()])
}

pub fn containers_command(tools: &Tools) -> Command {
    Command::new(&tools.buildah).args(["containers", "--all", "--noheading", "--format", "{{.ContainerName}}"])
}

/// Picks the unfinished template datasets from `zfs get` rows, with their job ids.
pub fn unfinished_datasets(jails: &Dataset, rows: &[String]) -> Vec<(String, Uuid)> {
    let prefix = format!("{jails}/");
    let snapshots: HashSet<&str> = rows
        .iter()
        .filter_map(|row| row.split('\t').next())
        .filter_map(|name| name.strip_suffix(&format!("@{BASE_SNAPSHOT}")))
        .collect();

    rows.iter()
        .filter_map(|row| row.split_once('\t'))
        .filter(|(name, _)| !name.contains('@'))
        .filter(|(name, _)| {
            name.strip_prefix(&prefix)
                .is_some_and(|rest| !rest.contains('/') && rest.ends_with("-template"))
        })
        .filter(|(name, _)| !snapshots.contains(name))
        .filter_map(|(name, job)| Uuid::parse_str(job.trim()).ok().map(|job| (name.to_owned(), job)))
        .collect()
}

/// Picks the working containers `coppice-<uuid>` from `buildah containers` output.
pub fn working_containers(names: &[String]) -> Vec<(String, Uuid)> {
    names
        .iter()
        .filter_map(|name| {
            let id = name.trim().strip_prefix(CONTAINER_PREFIX)?;
            Uuid::parse_str(id).ok().map(|id| (name.trim().to_owned(), id))
        })
        .collect()
}

/// Removes the leftovers of imports for which `is_dead` returns true.
pub async fn sweep(tools: &Tools, jails: &Dataset, is_dead: impl Fn(Uuid) -> bool) -> SweepReport {
    let sink = TracingSink;
    let stamper = LineStamper::new(&sink);
    let options = RunOptions { timeout: Some(SWEEP_TIMEOUT), ..RunOptions::default() };
    let context = StepContext {
        tools,
        log: StepLog { stamper: &stamper, step: Step::Cleanup },
        options: &options,
        deadline: None,
    };
    let mut report = SweepReport::default();

    match capture(context, &marks_command(tools, jails)).await {
        Ok(rows) => {
            for (dataset, job) in unfinished_datasets(jails, &rows).into_iter().filter(|(_, job)| is_dead(*job)) {
                sweep_dataset(context, &dataset, job, &mut report).await;
            }
        }
        Err(error) => report.errors.push(format!("failed to list marked datasets under {jails}: {error}")),
    }

    match capture(context, &containers_command(tools)).await {
        Ok(names) => {
            for (container, job) in working_containers(&names).into_iter().filter(|(_, job)| is_dead(*job)) {
                sweep_container(context, &container, job, &mut report).await;
            }
        }
        Err(error) => report.errors.push(format!("failed to list working containers: {error}")),
    }

    report
}

async fn sweep_dataset(context: StepContext<'_>, dataset: &str, job: Uuid, report: &mut SweepReport) {
    let Ok(parsed) = Dataset::parse(dataset) else {
        return;
    };
    match steps::destroy_dataset(context, &parsed).await {
        Ok(()) => {
            tracing::info!(%dataset, %job, "sweep destroyed an unfinished template dataset");
            report.destroyed_datasets.push(dataset.to_owned());
        }
        Err(error) => {
            tracing::warn!(%dataset, %job, %error, "sweep failed to destroy an unfinished template dataset");
            report.errors.push(format!("failed to destroy {dataset}: {error}"));
        }
    }
}

async fn sweep_container(context: StepContext<'_>, container: &str, job: Uuid, report: &mut SweepReport) {
    // `buildah umount` of a container that was never mounted fails while `rm` still
    // removes it, so whether the container is gone afterwards is what counts.
    let result = steps::remove_container(context, &ContainerName::from_existing(container)).await;

    if container_exists(context, container).await {
        let error = result.err().map_or_else(|| "it is still listed".to_owned(), |error| error.to_string());
        tracing::warn!(%container, %job, %error, "sweep failed to remove a working container");
        report.errors.push(format!("failed to remove container {container}: {error}"));
    } else {
        tracing::info!(%container, %job, "sweep removed a working container");
        report.removed_containers.push(container.to_owned());
    }
}

async fn container_exists(context: StepContext<'_>, container: &str) -> bool {
    match capture(context, &containers_command(context.tools)).await {
        Ok(names) => names.iter().any(|name| name.trim() == container),
        Err(_) => true,
    }
}

async fn capture(context: StepContext<'_>, command: &Command) -> Result<Vec<String>, ExecError> {
    let options = RunOptions { capture_stdout: true, ..context.options.clone() };
    Ok(exec::run(command, context.log, &options).await?.stdout)
}

/// Sends sweep command output to tracing at debug level; it belongs to no job.
struct TracingSink;

impl LineSink for TracingSink {
    fn line(&self, line: LogLine) {
        tracing::debug!(step = %line.step, stream = line.stream.as_str(), text = %line.text, "sweep output");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_datasets_need_the_mark_and_no_base() {
        let jails = Dataset::parse("zroot/jails").unwrap();
        let job = Uuid::new_v4();
        let other = Uuid::new_v4();
        let rows: Vec<String> = [
            "zroot/jails\t-".to_owned(),
            format!("zroot/jails/half-template\t{job}"),
            format!("zroot/jails/done-template\t{other}"),
            format!("zroot/jails/done-template@base\t{other}"),
            "zroot/jails/hand-template\t-".to_owned(),
            format!("zroot/jails/sandbox1\t{job}"),
            "zroot/jails/odd-template\tnot-a-uuid".to_owned(),
        ]
        .to_vec();

        let found = unfinished_datasets(&jails, &rows);

        assert_eq!(found, [("zroot/jails/half-template".to_owned(), job)]);
    }

    #[test]
    fn working_containers_need_prefix_and_uuid() {
        let id = Uuid::new_v4();
        let names = [format!("coppice-{id}"), "coppice-test-ref-1".to_owned(), "other".to_owned(), format!("x-coppice-{id}")];

        assert_eq!(working_containers(&names), [(format!("coppice-{id}"), id)]);
    }
}
