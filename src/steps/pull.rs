//! Pull: `buildah pull --os freebsd [--arch ARCH] docker://REF`, keeping the image ID.

use std::fmt;

use super::context::{StepContext, StepError, Tools, last_nonempty, run_step_command};
use crate::exec::Command;
use crate::names::ImageRef;

/// The ID buildah gives a pulled image: 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageId(String);

impl ImageId {
    pub fn parse(value: &str) -> Option<Self> {
        let valid = value.len() == 64 && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds the pull command. The image goes through the `docker://` transport, so buildah
/// never reads the reference as a local path or an `oci:` layout directory.
pub fn pull_command(tools: &Tools, image: &ImageRef, arch: Option<&str>) -> Command {
    let mut command = Command::new(&tools.buildah).args(["pull", "--os", "freebsd"]);
    if let Some(arch) = arch {
        command = command.args(["--arch", arch]);
    }
    command.arg(image.transport_ref())
}

/// Finds the image ID, which buildah prints as the last line of stdout.
pub fn parse_image_id(stdout: &[String]) -> Option<ImageId> {
    last_nonempty(stdout).and_then(ImageId::parse)
}

pub async fn pull(context: StepContext<'_>, image: &ImageRef, arch: Option<&str>) -> Result<ImageId, StepError> {
    let command = pull_command(context.tools, image, arch);

    let finished = run_step_command(context, &command, true).await?;

    parse_image_id(&finished.stdout).ok_or_else(|| StepError::UnexpectedOutput {
        command: command.to_string(),
        expected: "image ID",
        last_line: last_nonempty(&finished.stdout).map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_argv_uses_docker_transport() {
        let image = ImageRef::parse_source("oci:127.0.0.1:5000/coppice/sample:14").unwrap();

        let command = pull_command(&Tools::default(), &image, None);

        assert_eq!(command.program().to_str(), Some("buildah"));
        assert_eq!(command.arg_strings(), ["pull", "--os", "freebsd", "docker://127.0.0.1:5000/coppice/sample:14"]);
    }

    #[test]
    fn pull_argv_with_arch() {
        let image = ImageRef::parse_source("oci:quay.io/dougrabson/freebsd14-minimal").unwrap();

        let command = pull_command(&Tools::default(), &image, Some("arm64"));

        assert_eq!(
            command.arg_strings(),
            ["pull", "--os", "freebsd", "--arch", "arm64", "docker://quay.io/dougrabson/freebsd14-minimal"]
        );
    }

    #[test]
    fn image_id_is_the_last_stdout_line() {
        let id = "6e8eb0ef685e750daada7db641143b1cb5195bd5ca0a511d650b4b6b55126e48";
        let stdout = vec!["Trying to pull ...".to_owned(), id.to_owned(), String::new()];

        assert_eq!(parse_image_id(&stdout).unwrap().as_str(), id);
        assert!(parse_image_id(&["not an id".to_owned()]).is_none());
        assert!(parse_image_id(&[]).is_none());
        assert!(parse_image_id(&[id.to_uppercase()]).is_none());
    }
}
