//! Mount: `buildah from` a working container of the pulled image, then `buildah mount` it.

use std::fmt;
use std::path::PathBuf;

use uuid::Uuid;

use super::context::{StepContext, StepError, Tools, last_nonempty, run_step_command};
use super::pull::ImageId;
use crate::exec::Command;

/// Prefix of every working container this service creates; the start-up sweep looks for it.
pub const CONTAINER_PREFIX: &str = "coppice-";

/// Name of an import's working container, unique per import so imports can run side by side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerName(String);

impl ContainerName {
    pub fn for_import(id: Uuid) -> Self {
        Self(format!("{CONTAINER_PREFIX}{id}"))
    }

    /// Accepts an existing container name, for the single-step CLI.
    pub fn from_existing(name: &str) -> Self {
        Self(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A mounted working container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    pub container: ContainerName,
    pub path: PathBuf,
}

/// Builds `buildah from`. `--pull=never` makes it use the image the pull step fetched
/// and nothing else.
pub fn from_command(tools: &Tools, image: &ImageId, container: &ContainerName) -> Command {
    Command::new(&tools.buildah)
        .args(["from", "--pull=never", "--name", container.as_str()])
        .arg(image.as_str())
}

pub fn mount_command(tools: &Tools, container: &ContainerName) -> Command {
    Command::new(&tools.buildah).args(["mount", container.as_str()])
}

/// Creates the working container and mounts it. The caller must run cleanup whenever
/// this was called, even when it failed, because `buildah from` may have created the
/// container before a later command failed.
pub async fn mount(context: StepContext<'_>, image: &ImageId, container: &ContainerName) -> Result<Mounted, StepError> {
    run_step_command(context, &from_command(context.tools, image, container), false).await?;

    let command = mount_command(context.tools, container);
    let finished = run_step_command(context, &command, true).await?;

    let Some(path) = last_nonempty(&finished.stdout).filter(|line| line.starts_with('/')) else {
        return Err(StepError::UnexpectedOutput {
            command: command.to_string(),
            expected: "mount path",
            last_line: last_nonempty(&finished.stdout).map(str::to_owned),
        });
    };
    Ok(Mounted { container: container.clone(), path: PathBuf::from(path) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_argv_never_pulls() {
        let image = ImageId::parse(&"ab".repeat(32)).unwrap();
        let container = ContainerName::for_import(Uuid::nil());

        let command = from_command(&Tools::default(), &image, &container);

        assert_eq!(
            command.arg_strings(),
            ["from", "--pull=never", "--name", "coppice-00000000-0000-0000-0000-000000000000", &"ab".repeat(32)]
        );
    }

    #[test]
    fn mount_argv_names_the_container() {
        let container = ContainerName::from_existing("coppice-x");

        assert_eq!(mount_command(&Tools::default(), &container).arg_strings(), ["mount", "coppice-x"]);
    }
}
