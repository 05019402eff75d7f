//! Cleanup: unmount and remove the working container, and destroy a dataset the
//! import created but did not finish.

use std::time::Duration;

use super::context::{StepContext, StepError, Tools, run_step_command};
use super::mount::ContainerName;
use super::rsync::mentions;
use crate::exec::Command;
use crate::line::Stream;
use crate::names::Dataset;

/// Waits between `zfs destroy` attempts that failed with "dataset is busy". zfs-fuse
/// reports busy once right after an rsync finishes; a short wait clears it.
const DESTROY_BACKOFF: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

pub fn umount_command(tools: &Tools, container: &ContainerName) -> Command {
    Command::new(&tools.buildah).args(["umount", container.as_str()])
}

pub fn rm_command(tools: &Tools, container: &ContainerName) -> Command {
    Command::new(&tools.buildah).args(["rm", container.as_str()])
}

/// Builds `zfs destroy -r`, which also removes the dataset's snapshots.
pub fn destroy_command(tools: &Tools, dataset: &Dataset) -> Command {
    Command::new(&tools.zfs).args(["destroy", "-r", dataset.as_str()])
}

/// Unmounts and removes the working container. Both commands always run, since a
/// failed unmount (the container was never mounted) must not keep the container.
/// Returns the first error.
pub async fn remove_container(context: StepContext<'_>, container: &ContainerName) -> Result<(), StepError> {
    let umount = run_step_command(context, &umount_command(context.tools, container), false).await;
    let rm = run_step_command(context, &rm_command(context.tools, container), false).await;

    umount?;
    rm?;
    Ok(())
}

/// Destroys `dataset` and its snapshots, retrying while ZFS reports it busy.
pub async fn destroy_dataset(context: StepContext<'_>, dataset: &Dataset) -> Result<(), StepError> {
    let command = destroy_command(context.tools, dataset);
    let mut backoff = DESTROY_BACKOFF.iter();

    loop {
        let error = match run_step_command(context, &command, false).await {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };

        let busy = mentions(error.stderr_tail(), "busy");
        let Some(wait) = backoff.next().filter(|_| busy) else {
            return Err(error.into());
        };
        context.log.emit(
            Stream::Stderr,
            format!("coppice: {dataset} is busy, retrying in {} ms", wait.as_millis()),
        );
        tokio::time::sleep(*wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_argvs() {
        let container = ContainerName::from_existing("coppice-1");

        assert_eq!(umount_command(&Tools::default(), &container).arg_strings(), ["umount", "coppice-1"]);
        assert_eq!(rm_command(&Tools::default(), &container).arg_strings(), ["rm", "coppice-1"]);
    }

    #[test]
    fn destroy_argv_is_recursive() {
        let dataset = Dataset::parse("zroot/jails/web-template").unwrap();

        assert_eq!(
            destroy_command(&Tools::default(), &dataset).arg_strings(),
            ["destroy", "-r", "zroot/jails/web-template"]
        );
    }
}
