//! Rsync: create the template dataset, find where it is mounted, and copy the
//! container's root filesystem into it.

use std::path::{Path, PathBuf};

use super::context::{StepContext, StepError, Tools, last_nonempty, run_step_command};
use crate::exec::{Command, ExecError};
use crate::names::Dataset;

/// A ZFS user property set on the dataset when it is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetProperty {
    pub name: &'static str,
    pub value: String,
}

/// Builds `zfs create` without `-p`, so an existing dataset makes it fail instead of
/// being reused: the import never writes into a dataset it did not create.
pub fn create_command(tools: &Tools, dataset: &Dataset, properties: &[DatasetProperty]) -> Command {
    let mut command = Command::new(&tools.zfs).arg("create");
    for property in properties {
        command = command.arg("-o").arg(format!("{}={}", property.name, property.value));
    }
    command.arg(dataset.as_str())
}

pub fn mountpoint_command(tools: &Tools, dataset: &Dataset) -> Command {
    Command::new(&tools.zfs).args(["get", "-H", "-o", "value", "mountpoint", dataset.as_str()])
}

pub fn exists_command(tools: &Tools, dataset: &Dataset) -> Command {
    Command::new(&tools.zfs).args(["list", "-H", "-o", "name", dataset.as_str()])
}

/// Builds the copy. `-aHAX --numeric-ids` keeps modes, owners by number, hard links,
/// ACLs and extended attributes. The trailing slashes copy the contents of `source`
/// into `target` rather than the directory itself.
///
/// The target is always a dataset this import just created, so rsync has nothing to
/// compare against and nothing to protect. `--inplace` writes each file directly
/// instead of to a temporary file that is then renamed. On the 190 MB bench image
/// copied into zfs-fuse, that cut rsync from 4.8 s to 3.5 s (medians of three runs of
/// `scripts/bench` on a 2-core VM; BENCHMARKS.md has the table).
/// A copy that fails halfway leaves partial files, but cleanup then destroys the
/// dataset. `--whole-file` is already rsync's default between local paths, and is
/// spelled out so that no delta transfer is ever attempted.
pub fn rsync_command(tools: &Tools, source: &Path, target: &Path) -> Command {
    Command::new(&tools.rsync)
        .args(["-aHAX", "--numeric-ids", "--delete", "--inplace", "--whole-file"])
        .arg(with_trailing_slash(source))
        .arg(with_trailing_slash(target))
}

fn with_trailing_slash(path: &Path) -> String {
    let mut text = path.to_string_lossy().into_owned();
    if !text.ends_with('/') {
        text.push('/');
    }
    text
}

/// Tells whether `dataset` exists. A missing dataset is the expected "no"; any other
/// failure of `zfs list` is an error.
pub async fn dataset_exists(context: StepContext<'_>, dataset: &Dataset) -> Result<bool, StepError> {
    match run_step_command(context, &exists_command(context.tools, dataset), false).await {
        Ok(_) => Ok(true),
        Err(ExecError::Failed { stderr_tail, .. }) if mentions(&stderr_tail, "does not exist") => Ok(false),
        Err(error) => Err(error.into()),
    }
}

pub async fn create_dataset(
    context: StepContext<'_>,
    dataset: &Dataset,
    properties: &[DatasetProperty],
) -> Result<(), StepError> {
    match run_step_command(context, &create_command(context.tools, dataset, properties), false).await {
        Ok(_) => Ok(()),
        Err(ExecError::Failed { stderr_tail, .. }) if mentions(&stderr_tail, "already exists") => {
            Err(StepError::DatasetExists { dataset: dataset.to_string() })
        }
        Err(error) => Err(error.into()),
    }
}

/// Reads where `dataset` is mounted; this is never assumed to be `/<dataset>`.
pub async fn read_mountpoint(context: StepContext<'_>, dataset: &Dataset) -> Result<PathBuf, StepError> {
    let command = mountpoint_command(context.tools, dataset);
    let finished = run_step_command(context, &command, true).await?;

    match last_nonempty(&finished.stdout) {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        other => Err(StepError::UnexpectedOutput {
            command: command.to_string(),
            expected: "mount path (is the dataset mounted?)",
            last_line: other.map(str::to_owned),
        }),
    }
}

pub async fn copy(context: StepContext<'_>, source: &Path, target: &Path) -> Result<(), StepError> {
    run_step_command(context, &rsync_command(context.tools, source, target), false).await?;
    Ok(())
}

pub(super) fn mentions(stderr_tail: &[String], needle: &str) -> bool {
    stderr_tail.iter().any(|line| line.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> Dataset {
        Dataset::parse("zroot/jails/web-template").unwrap()
    }

    #[test]
    fn create_argv_has_no_p_and_sets_properties() {
        let properties = [
            DatasetProperty { name: "coppice:from", value: "oci:127.0.0.1:5000/a:1".to_owned() },
            DatasetProperty { name: "coppice:job", value: "42".to_owned() },
        ];

        let command = create_command(&Tools::default(), &dataset(), &properties);

        assert_eq!(command.program().to_str(), Some("zfs"));
        assert_eq!(
            command.arg_strings(),
            [
                "create",
                "-o",
                "coppice:from=oci:127.0.0.1:5000/a:1",
                "-o",
                "coppice:job=42",
                "zroot/jails/web-template"
            ]
        );
    }

    #[test]
    fn mountpoint_argv_reads_the_property() {
        let command = mountpoint_command(&Tools::default(), &dataset());

        assert_eq!(command.arg_strings(), ["get", "-H", "-o", "value", "mountpoint", "zroot/jails/web-template"]);
    }

    #[test]
    fn rsync_argv_copies_contents() {
        let command = rsync_command(&Tools::default(), Path::new("/var/mnt/root"), Path::new("/jails/web-template/"));

        assert_eq!(command.program().to_str(), Some("rsync"));
        assert_eq!(
            command.arg_strings(),
            ["-aHAX", "--numeric-ids", "--delete", "--inplace", "--whole-file", "/var/mnt/root/", "/jails/web-template/"]
        );
    }
}
