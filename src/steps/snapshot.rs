//! Snapshot: `zfs snapshot <dataset>@base`, then a best-effort read of its size.

use super::context::{StepContext, StepError, Tools, last_nonempty, run_step_command};
use crate::exec::{Command, ExecError};
use crate::names::Dataset;

/// The snapshot sandboxes are cloned from. A template is ready exactly when it exists.
pub const BASE_SNAPSHOT: &str = "base";

pub fn snapshot_command(tools: &Tools, dataset: &Dataset) -> Command {
    Command::new(&tools.zfs).arg("snapshot").arg(dataset.snapshot(BASE_SNAPSHOT))
}

/// Builds `zfs get -Hp referenced`; `-p` prints the size as an exact byte count.
pub fn referenced_command(tools: &Tools, snapshot: &str) -> Command {
    Command::new(&tools.zfs).args(["get", "-Hp", "-o", "value", "referenced", snapshot])
}

/// Takes the `@base` snapshot and returns its name and, when it could be read, its size
/// in bytes. A failure to read the size is logged by the executor and does not fail
/// the step.
pub async fn snapshot(context: StepContext<'_>, dataset: &Dataset) -> Result<(String, Option<u64>), StepError> {
    run_step_command(context, &snapshot_command(context.tools, dataset), false).await?;
    let snapshot = dataset.snapshot(BASE_SNAPSHOT);

    let size = match run_step_command(context, &referenced_command(context.tools, &snapshot), true).await {
        Ok(finished) => last_nonempty(&finished.stdout).and_then(|value| value.parse::<u64>().ok()),
        Err(error) => {
            tracing::warn!(%snapshot, %error, "failed to read the snapshot size");
            None
        }
    };
    Ok((snapshot, size))
}

/// Builds `zfs list` of the `@base` snapshot, which fails when it does not exist.
pub fn base_exists_command(tools: &Tools, dataset: &Dataset) -> Command {
    Command::new(&tools.zfs)
        .args(["list", "-H", "-o", "name", "-t", "snapshot"])
        .arg(dataset.snapshot(BASE_SNAPSHOT))
}

/// Tells whether `dataset@base` exists, which makes the dataset a ready template.
pub async fn has_base_snapshot(context: StepContext<'_>, dataset: &Dataset) -> Result<bool, StepError> {
    match run_step_command(context, &base_exists_command(context.tools, dataset), false).await {
        Ok(_) => Ok(true),
        Err(ExecError::Failed { stderr_tail, .. }) if stderr_tail.iter().any(|line| line.contains("does not exist")) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_argv_names_base() {
        let dataset = Dataset::parse("zroot/jails/web-template").unwrap();

        let command = snapshot_command(&Tools::default(), &dataset);

        assert_eq!(command.arg_strings(), ["snapshot", "zroot/jails/web-template@base"]);
    }

    #[test]
    fn base_exists_argv_lists_the_snapshot() {
        let dataset = Dataset::parse("zroot/jails/web-template").unwrap();

        assert_eq!(
            base_exists_command(&Tools::default(), &dataset).arg_strings(),
            ["list", "-H", "-o", "name", "-t", "snapshot", "zroot/jails/web-template@base"]
        );
    }

    #[test]
    fn referenced_argv_is_parsable() {
        let command = referenced_command(&Tools::default(), "zroot/jails/web-template@base");

        assert_eq!(
            command.arg_strings(),
            ["get", "-Hp", "-o", "value", "referenced", "zroot/jails/web-template@base"]
        );
    }
}
