//! Command-line arguments. Every option has an environment fallback where an operator
//! would set it once per host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::TimeDelta;
use clap::{Args, Parser, Subcommand, ValueEnum};

use coppice::import::{ImportConfig, StepTimeouts};
use coppice::jobs::{
    DEFAULT_HISTORY_MAX_AGE_DAYS, DEFAULT_HISTORY_MAX_JOBS, DEFAULT_MAX_BYTES, DEFAULT_MAX_CONCURRENT_BUILDS,
    DEFAULT_MAX_LINES, DEFAULT_RETAINED_JOBS, DEFAULT_STATE_DIR, HistoryBounds, JobsConfig, LogLimits,
};
use coppice::names::{Dataset, ImageRef, NameError, TemplateName};
use coppice::steps::{ImageId, Tools};

#[derive(Debug, Parser)]
#[command(name = "coppice", version, about = "Build FreeBSD jail templates (ZFS datasets with a @base snapshot) from OCI images")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import an OCI image as template NAME, printing each output line as it arrives.
    Import(ImportArgs),

    /// Run one step of the import alone, for debugging that step.
    #[command(subcommand)]
    Step(StepCommand),

    /// List the ready templates (datasets <jails>/<name>-template with a @base snapshot).
    Templates(TemplatesArgs),

    /// Serve the HTTP job API: start builds, follow their logs, and list templates.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Settings of every command")]
pub struct GlobalArgs {
    /// ZFS dataset under which templates are created as <dataset>/<name>-template.
    #[arg(long, env = "COPPICE_JAILS_DATASET", value_name = "DATASET", default_value = "zroot/jails", value_parser = parse_dataset, global = true)]
    pub jails_dataset: Dataset,

    /// Path or name of the buildah binary (looked up on PATH when not a path).
    #[arg(long, env = "COPPICE_BUILDAH", value_name = "PATH", default_value = "buildah", global = true)]
    pub buildah: PathBuf,

    /// Path or name of the rsync binary.
    #[arg(long, env = "COPPICE_RSYNC", value_name = "PATH", default_value = "rsync", global = true)]
    pub rsync: PathBuf,

    /// Path or name of the zfs binary.
    #[arg(long, env = "COPPICE_ZFS", value_name = "PATH", default_value = "zfs", global = true)]
    pub zfs: PathBuf,

    /// Image architecture passed to `buildah pull --arch` (for example amd64 or arm64);
    /// the host's architecture when unset.
    #[arg(long, env = "COPPICE_ARCH", value_name = "ARCH", global = true)]
    pub arch: Option<String>,

    /// Time limit of the pull step, in seconds.
    #[arg(long, env = "COPPICE_PULL_TIMEOUT", value_name = "SECONDS", default_value_t = 1800, value_parser = parse_seconds, global = true)]
    pub pull_timeout: u64,

    /// Time limit of the mount step, in seconds.
    #[arg(long, env = "COPPICE_MOUNT_TIMEOUT", value_name = "SECONDS", default_value_t = 300, value_parser = parse_seconds, global = true)]
    pub mount_timeout: u64,

    /// Time limit of the rsync step (dataset creation and copy), in seconds.
    #[arg(long, env = "COPPICE_RSYNC_TIMEOUT", value_name = "SECONDS", default_value_t = 3600, value_parser = parse_seconds, global = true)]
    pub rsync_timeout: u64,

    /// Time limit of the snapshot step, in seconds.
    #[arg(long, env = "COPPICE_SNAPSHOT_TIMEOUT", value_name = "SECONDS", default_value_t = 300, value_parser = parse_seconds, global = true)]
    pub snapshot_timeout: u64,

    /// Time limit of the reload step, in seconds.
    #[arg(long, env = "COPPICE_RELOAD_TIMEOUT", value_name = "SECONDS", default_value_t = 300, value_parser = parse_seconds, global = true)]
    pub reload_timeout: u64,

    /// Time limit of the cleanup step, in seconds.
    #[arg(long, env = "COPPICE_CLEANUP_TIMEOUT", value_name = "SECONDS", default_value_t = 300, value_parser = parse_seconds, global = true)]
    pub cleanup_timeout: u64,

    /// Time between SIGTERM and SIGKILL when a command is stopped, in seconds.
    #[arg(long, env = "COPPICE_KILL_GRACE", value_name = "SECONDS", default_value_t = 10, global = true)]
    pub kill_grace: u64,

    /// Format of the service's own diagnostics on stderr (filtered by RUST_LOG).
    #[arg(long, env = "COPPICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

impl GlobalArgs {
    pub fn import_config(&self) -> ImportConfig {
        ImportConfig {
            tools: Tools {
                buildah: self.buildah.clone(),
                rsync: self.rsync.clone(),
                zfs: self.zfs.clone(),
            },
            jails: self.jails_dataset.clone(),
            arch: self.arch.clone(),
            timeouts: StepTimeouts {
                pull: Duration::from_secs(self.pull_timeout),
                mount: Duration::from_secs(self.mount_timeout),
                rsync: Duration::from_secs(self.rsync_timeout),
                snapshot: Duration::from_secs(self.snapshot_timeout),
                reload: Duration::from_secs(self.reload_timeout),
                cleanup: Duration::from_secs(self.cleanup_timeout),
            },
            grace: Duration::from_secs(self.kill_grace),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print output lines as JSON objects in the log-envelope shape, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Template name: a lowercase letter, then up to 62 lowercase letters, digits, '-' or '_'.
    #[arg(value_parser = parse_name)]
    pub name: TemplateName,

    /// Image source: oci:HOST[:PORT]/PATH[:TAG][@DIGEST], for example oci:127.0.0.1:5000/freebsd/base:14.
    #[arg(value_parser = parse_source)]
    pub from: ImageRef,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum StepCommand {
    /// Pull the image with `buildah pull --os freebsd` and print its image ID.
    Pull {
        /// Image source: oci:HOST[:PORT]/PATH[:TAG][@DIGEST].
        #[arg(value_parser = parse_source)]
        from: ImageRef,

        #[command(flatten)]
        output: OutputArgs,
    },

    /// Create a working container from a pulled image and mount it; prints the container and its path.
    Mount {
        /// Image ID printed by `coppice step pull` (64 hex digits).
        #[arg(value_parser = parse_image_id)]
        image_id: ImageId,

        /// Working container name; coppice-<new UUID> when unset.
        #[arg(long)]
        container: Option<String>,

        #[command(flatten)]
        output: OutputArgs,
    },

    /// Create <jails>/<NAME>-template and rsync a mounted root filesystem into it.
    Rsync {
        /// Template name.
        #[arg(value_parser = parse_name)]
        name: TemplateName,

        /// Mounted root filesystem to copy, as printed by `coppice step mount`.
        mount_path: PathBuf,

        /// Image source recorded in the dataset's coppice:from property.
        #[arg(long, value_parser = parse_source)]
        from: Option<ImageRef>,

        #[command(flatten)]
        output: OutputArgs,
    },

    /// Snapshot <jails>/<NAME>-template@base and print its size.
    Snapshot {
        /// Template name.
        #[arg(value_parser = parse_name)]
        name: TemplateName,

        #[command(flatten)]
        output: OutputArgs,
    },

    /// List the templates from ZFS, as the registry reload does.
    Reload {
        #[command(flatten)]
        output: OutputArgs,
    },

    /// Unmount and remove a working container, and optionally destroy an unfinished template dataset.
    #[command(group(clap::ArgGroup::new("work").required(true).multiple(true).args(["container", "destroy"])))]
    Cleanup {
        /// Working container to unmount and remove.
        #[arg(long)]
        container: Option<String>,

        /// Destroy <jails>/<NAME>-template and its snapshots (`zfs destroy -r`).
        #[arg(long, value_name = "NAME", value_parser = parse_name)]
        destroy: Option<TemplateName>,

        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port the HTTP API listens on. Without an API key, keep it on
    /// loopback unless an authenticating proxy sits in front of it.
    #[arg(long, env = "COPPICE_LISTEN", value_name = "IP:PORT", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// File holding the API key that every request but GET /healthz must send in
    /// X-API-Key (a trailing newline is ignored).
    /// Without this option the key is read from the COPPICE_API_KEY environment
    /// variable, if set.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,

    /// The key from COPPICE_API_KEY. There is deliberately no flag for it, since a
    /// flag's value shows in every process listing.
    #[arg(skip = std::env::var("COPPICE_API_KEY").ok())]
    pub api_key: Option<String>,

    /// Time a shutdown (SIGTERM or SIGINT) gives running builds to stop and clean up,
    /// in seconds, before the process exits anyway.
    #[arg(long, env = "COPPICE_SHUTDOWN_TIMEOUT", value_name = "SECONDS", default_value_t = 60, value_parser = parse_seconds)]
    pub shutdown_timeout: u64,

    /// Imports that run at once; further builds wait as `queued`, first in first out.
    #[arg(long, env = "COPPICE_MAX_CONCURRENT_BUILDS", value_name = "COUNT", default_value_t = DEFAULT_MAX_CONCURRENT_BUILDS, value_parser = parse_count)]
    pub max_concurrent_builds: usize,

    /// Log lines kept per job; the oldest lines are dropped beyond this.
    #[arg(long, env = "COPPICE_LOG_LINES", value_name = "COUNT", default_value_t = DEFAULT_MAX_LINES, value_parser = parse_count)]
    pub log_lines: usize,

    /// Log memory kept per job, in bytes, counted as each line's estimated heap size
    /// (the line and the allocations of its text). The oldest lines are dropped beyond this.
    #[arg(long, env = "COPPICE_LOG_BYTES", value_name = "BYTES", default_value_t = DEFAULT_MAX_BYTES, value_parser = parse_count)]
    pub log_bytes: usize,

    /// Finished jobs kept in memory for clients to inspect; the oldest finished job is
    /// dropped beyond this. Queued and running jobs are always kept.
    #[arg(long, env = "COPPICE_RETAINED_JOBS", value_name = "COUNT", default_value_t = DEFAULT_RETAINED_JOBS, value_parser = parse_count)]
    pub retained_jobs: usize,

    /// Directory of the job history (a SQLite database and its lock file), created with
    /// mode 0700 when missing. Only one server at a time can use a directory.
    #[arg(long, env = "COPPICE_STATE_DIR", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Jobs kept in the job history; beyond this the oldest finished jobs are deleted
    /// with their logs. After a restart the newest --retained-jobs of them are served.
    #[arg(long, env = "COPPICE_HISTORY_MAX_JOBS", value_name = "COUNT", default_value_t = DEFAULT_HISTORY_MAX_JOBS, value_parser = parse_count)]
    pub history_max_jobs: usize,

    /// Age after which a finished job is deleted from the job history with its logs,
    /// in days (at most 36500).
    #[arg(long, env = "COPPICE_HISTORY_MAX_AGE", value_name = "DAYS", default_value_t = DEFAULT_HISTORY_MAX_AGE_DAYS, value_parser = parse_days)]
    pub history_max_age: u64,
}

impl ServeArgs {
    pub fn history_bounds(&self) -> HistoryBounds {
        HistoryBounds {
            max_jobs: self.history_max_jobs,
            // The parser caps the value at 36500 days, far inside TimeDelta's range.
            max_age: TimeDelta::days(self.history_max_age as i64),
        }
    }

    pub fn jobs_config(&self) -> JobsConfig {
        JobsConfig {
            max_concurrent_builds: self.max_concurrent_builds,
            log_limits: LogLimits { max_lines: self.log_lines, max_bytes: self.log_bytes },
            retained_jobs: self.retained_jobs,
        }
    }
}

#[derive(Debug, Args)]
pub struct TemplatesArgs {
    /// Print the templates as a JSON array.
    #[arg(long)]
    pub json: bool,
}

fn parse_name(value: &str) -> Result<TemplateName, NameError> {
    TemplateName::parse(value)
}

fn parse_source(value: &str) -> Result<ImageRef, NameError> {
    ImageRef::parse_source(value)
}

fn parse_dataset(value: &str) -> Result<Dataset, NameError> {
    Dataset::parse(value)
}

fn parse_image_id(value: &str) -> Result<ImageId, String> {
    ImageId::parse(value).ok_or_else(|| {
        format!("invalid image ID {value:?}: use the 64 lowercase hex digits that `coppice step pull` prints")
    })
}

fn parse_seconds(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(0) => Err("0 s would stop every command at once; use at least 1 second".to_owned()),
        Ok(seconds) => Ok(seconds),
        Err(_) => Err(format!("{value:?} is not a whole number of seconds; use an integer of 1 or more, such as 300")),
    }
}

fn parse_count(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("the count must be at least 1".to_owned()),
        Ok(count) => Ok(count),
        Err(_) => Err(format!("{value:?} is not a whole number; use an integer of 1 or more")),
    }
}

fn parse_days(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(days @ 1..=36500) => Ok(days),
        _ => Err(format!("{value:?} is not a number of days from 1 to 36500")),
    }
}

fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("{value:?} is not an IP address and port; use a numeric address such as 127.0.0.1:8080 or [::1]:8080 (host names are not resolved)")
    })
}
