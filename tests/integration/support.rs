//! Shared helpers of the integration tests: the test environment, commands whose
//! failures explain themselves, and guards that remove what a test created.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The environment `scripts/setup` prepares and writes to /var/lib/coppice/test.env.
pub struct TestEnv {
    pub jails: String,
    pub image: String,
    pub xattr_image: String,
    pub registry: String,
}

const SETUP_HINT: &str = "run `bash scripts/setup` and `source /var/lib/coppice/test.env` first (or use `bash scripts/test`)";

fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!("environment variable {name} is not set; {SETUP_HINT}"),
    }
}

pub fn test_env() -> TestEnv {
    TestEnv {
        jails: required("COPPICE_JAILS_DATASET"),
        image: required("COPPICE_TEST_IMAGE"),
        xattr_image: required("COPPICE_TEST_XATTR_IMAGE"),
        registry: required("COPPICE_TEST_REGISTRY"),
    }
}

/// Returns a template name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &suffix[..12])
}

/// Runs a command and returns its output, without judging the exit status.
pub fn run(program: impl AsRef<Path>, args: &[&str]) -> Output {
    let program = program.as_ref();
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("failed to start {} {args:?}: {error}", program.display()))
}

/// Runs a command that must succeed; on failure the panic shows the command and its output.
pub fn run_ok(program: impl AsRef<Path>, args: &[&str]) -> String {
    let output = run(&program, args);
    assert!(output.status.success(), "{}", describe(program.as_ref(), args, &output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Describes a finished command the way a failing test should show it.
pub fn describe(program: &Path, args: &[&str], output: &Output) -> String {
    format!(
        "command: {} {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        program.display(),
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    )
}

pub fn coppice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_coppice"))
}

pub fn dataset_exists(dataset: &str) -> bool {
    run("zfs", &["list", "-H", "-o", "name", dataset]).status.success()
}

/// Destroys a dataset tree, retrying while zfs-fuse reports it busy.
pub fn destroy_dataset(dataset: &str) {
    for attempt in 0..10 {
        let output = run("zfs", &["destroy", "-r", dataset]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() || stderr.contains("does not exist") {
            return;
        }
        if !stderr.contains("busy") || attempt == 9 {
            eprintln!("failed to destroy {dataset}: {stderr}");
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Destroys the template dataset of `name` when dropped, so a failing test leaves no dataset.
pub struct TemplateGuard {
    pub dataset: String,
}

impl TemplateGuard {
    pub fn new(env: &TestEnv, name: &str) -> Self {
        Self { dataset: format!("{}/{name}-template", env.jails) }
    }
}

impl Drop for TemplateGuard {
    fn drop(&mut self) {
        destroy_dataset(&self.dataset);
    }
}

/// Lists the names of the working containers buildah has.
pub fn buildah_containers() -> Vec<String> {
    run_ok("buildah", &["containers", "--all", "--noheading", "--format", "{{.ContainerName}}"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A working container of an image, mounted for a test to read; removed when dropped.
pub struct MountedImage {
    pub container: String,
    pub path: PathBuf,
}

impl MountedImage {
    pub fn new(image: &str) -> Self {
        run_ok("buildah", &["pull", "--os", "freebsd", &format!("docker://{image}")]);
        let container = run_ok("buildah", &["from", "--pull=never", "--name", &unique_name("coppice-test-ref"), image])
            .trim()
            .to_owned();
        let path = PathBuf::from(run_ok("buildah", &["mount", &container]).trim());
        Self { container, path }
    }
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        let _ = run("buildah", &["umount", &self.container]);
        let _ = run("buildah", &["rm", &self.container]);
    }
}

pub fn mountpoint(dataset: &str) -> PathBuf {
    PathBuf::from(run_ok("zfs", &["get", "-H", "-o", "value", "mountpoint", dataset]).trim())
}
