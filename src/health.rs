//! The health probe: which versions of buildah, rsync and zfs this host has.

use std::time::Duration;

use serde::Serialize;

use crate::exec::{self, Command, RunOptions, StepLog};
use crate::line::{DiscardSink, LineStamper, Step};
use crate::names::Dataset;
use crate::steps::Tools;

/// Time limit of each probe command; a tool that cannot print its version this fast is
/// reported as unavailable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// One tool's probe result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ToolStatus {
    pub path: String,
    /// The tool's version line, or `None` when the tool has no version command.
    pub version: Option<String>,
    /// Reason the tool is unusable, or `None` when it works.
    pub error: Option<String>,
}

impl ToolStatus {
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    pub buildah: ToolStatus,
    pub rsync: ToolStatus,
    pub zfs: ToolStatus,
}

impl Health {
    pub fn is_ok(&self) -> bool {
        self.buildah.is_ok() && self.rsync.is_ok() && self.zfs.is_ok()
    }

    /// Names what is missing, for a 503 message.
    pub fn problems(&self) -> Vec<String> {
        [("buildah", &self.buildah), ("rsync", &self.rsync), ("zfs", &self.zfs)]
            .into_iter()
            .filter_map(|(name, status)| status.error.as_ref().map(|error| format!("{name}: {error}")))
            .collect()
    }
}

/// Runs each tool's version command, and checks that zfs can see the jails dataset.
pub async fn probe(tools: &Tools, jails: &Dataset) -> Health {
    let buildah = probe_version(Command::new(&tools.buildah).arg("--version")).await;
    let rsync = probe_version(Command::new(&tools.rsync).arg("--version")).await;
    let zfs = probe_zfs(tools, jails).await;
    Health { buildah, rsync, zfs }
}

async fn probe_version(command: Command) -> ToolStatus {
    let path = command.program().display().to_string();
    match capture(&command).await {
        Ok(lines) => ToolStatus { path, version: lines.first().map(|line| line.trim().to_owned()), error: None },
        Err(error) => ToolStatus { path, version: None, error: Some(error) },
    }
}

/// OpenZFS 0.8 and later have `zfs version`; older ones such as zfs-fuse do not, so a
/// listing of the jails dataset decides whether zfs works.
async fn probe_zfs(tools: &Tools, jails: &Dataset) -> ToolStatus {
    let path = tools.zfs.display().to_string();
    let version = capture(&Command::new(&tools.zfs).arg("version"))
        .await
        .ok()
        .and_then(|lines| lines.first().map(|line| line.trim().to_owned()));

    let list = Command::new(&tools.zfs).args(["list", "-H", "-o", "name", jails.as_str()]);
    match capture(&list).await {
        Ok(_) => ToolStatus { path, version, error: None },
        Err(error) => ToolStatus { path, version, error: Some(error) },
    }
}

async fn capture(command: &Command) -> Result<Vec<String>, String> {
    let stamper = LineStamper::new(&DiscardSink);
    let log = StepLog { stamper: &stamper, step: Step::Reload };
    let options = RunOptions { timeout: Some(PROBE_TIMEOUT), capture_stdout: true, ..RunOptions::default() };
    exec::run(command, log, &options).await.map(|finished| finished.stdout).map_err(|error| error.to_string())
}
