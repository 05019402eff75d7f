//! A `coppice serve` process on loopback whose buildah, zfs and rsync are stand-ins:
//! the import's steps run as usual, but the copy is the generator printing as many
//! lines as a measurement needs, and no dataset or image is touched.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{Connection, Response};

/// The image every stand-in build names. The stand-in buildah never contacts it.
pub const FAKE_FROM: &str = "oci:127.0.0.1:5000/coppice/bench-stand-in:1";

/// Limits `coppice serve` runs with.
#[derive(Clone, Copy)]
pub struct ServeLimits {
    pub log_lines: usize,
    pub log_bytes: usize,
    pub retained_jobs: usize,
    pub max_concurrent_builds: usize,
}

impl Default for ServeLimits {
    /// Returns the defaults of `coppice serve`.
    fn default() -> Self {
        Self { log_lines: 10_000, log_bytes: 16 * 1024 * 1024, retained_jobs: 100, max_concurrent_builds: 2 }
    }
}

pub struct Server {
    child: Child,
    pub address: SocketAddr,
    dir: PathBuf,
}

impl Server {
    pub fn start(coppice: &Path, limits: ServeLimits) -> Self {
        let dir = std::env::temp_dir().join(format!("coppice-bench-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).expect("create the stand-in tool directory");
        write_tools(&dir);
        let address = free_loopback_address();

        let child = Command::new(coppice)
            .args(["serve", "--listen", &address.to_string()])
            .args(["--log-lines", &limits.log_lines.to_string(), "--log-bytes", &limits.log_bytes.to_string()])
            .args(["--retained-jobs", &limits.retained_jobs.to_string()])
            .args(["--max-concurrent-builds", &limits.max_concurrent_builds.to_string()])
            .args(["--jails-dataset", "bench/jails"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("COPPICE_BUILDAH", dir.join("buildah"))
            .env("COPPICE_ZFS", dir.join("zfs"))
            .env("COPPICE_RSYNC", dir.join("rsync"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start coppice serve");
        let server = Self { child, address, dir };
        server.wait_until_ready();
        server
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let runtime = runtime();
        loop {
            let ready = runtime.block_on(async {
                let mut connection = Connection::connect(self.address).await.ok()?;
                connection.get("/templates").await.ok().filter(|response| response.status == 200)
            });
            if ready.is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "coppice serve did not answer on {} within 10 s", self.address);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets what the stand-in rsync of the next build prints: `child generate` arguments.
    pub fn set_output(&self, generate_args: &str) {
        std::fs::write(self.dir.join("rsync.args"), generate_args).expect("write rsync.args");
    }

    /// A file path in this server's directory, such as a start signal for the generator.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads a `kB` field of the server's /proc status, such as `VmRSS:` or `VmHWM:`.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM lets the server shut down; the kill after it is for a server that hangs.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Submits a build and returns its job id.
pub async fn submit(connection: &mut Connection, name: &str) -> String {
    let body = format!(r#"{{"name":"{name}","from":"{FAKE_FROM}"}}"#);
    let response = connection.post("/templates/build", &body).await.expect("POST /templates/build");
    assert_eq!(response.status, 202, "POST /templates/build {name}: {}", response.text());
    let view: Value = response.json();
    view["jobID"].as_str().expect("a jobID").to_owned()
}

/// Polls a job until it has finished and returns its view.
pub async fn wait_finished(connection: &mut Connection, job: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let response: Response = connection.get(&format!("/templates/builds/{job}")).await.expect("GET the job");
        let view: Value = response.json();
        if matches!(view["status"].as_str(), Some("succeeded" | "failed")) {
            return view;
        }
        assert!(Instant::now() < deadline, "job {job} did not finish within {timeout:?}: {view}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Seconds from a job's `startedAt` to its `finishedAt`.
pub fn job_seconds(view: &Value) -> f64 {
    let time = |field: &str| -> chrono::DateTime<chrono::Utc> {
        view[field].as_str().and_then(|text| text.parse().ok()).unwrap_or_else(|| panic!("job without {field}: {view}"))
    };
    (time("finishedAt") - time("startedAt")).num_microseconds().unwrap_or(0) as f64 / 1e6
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn free_loopback_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("the bound address")
}

/// Writes the stand-in tools. They handle exactly the commands that the import, the
/// health check and the start-up sweep run; the rsync execs the generator with the
/// arguments in rsync.args.
fn write_tools(dir: &Path) {
    let generator = std::env::current_exe().expect("own path");
    let buildah = r#"#!/bin/sh
case "$1" in
    --version) echo "buildah version 0.0.0 (benchmark stand-in)" ;;
    pull) echo "Trying to pull (stand-in)..."; echo 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef ;;
    from) echo "$4" ;;
    mount) echo /nonexistent/coppice-bench-mount ;;
    umount|rm) ;;
    containers) ;;
    *) echo "stand-in buildah: unexpected arguments: $*" >&2; exit 2 ;;
esac
"#;
    let zfs = r#"#!/bin/sh
case "$1" in
    version) echo "zfs-0.0.0 (benchmark stand-in)" ;;
    list) case "$5" in
        *-template) echo "cannot open '$5': dataset does not exist" >&2; exit 1 ;;
        *) echo "$5" ;;
    esac ;;
    get) case "$5" in
        mountpoint) echo /nonexistent/coppice-bench-template ;;
        referenced) echo 1000 ;;
        *) ;;
    esac ;;
    create|snapshot|destroy) ;;
    *) echo "stand-in zfs: unexpected arguments: $*" >&2; exit 2 ;;
esac
"#;
    let rsync = format!(
        r#"#!/bin/sh
if [ "$1" = --version ]; then echo "rsync version 0.0.0 (benchmark stand-in)"; exit 0; fi
exec '{}' child generate $(cat '{}')
"#,
        generator.display(),
        dir.join("rsync.args").display()
    );
    for (name, text) in [("buildah", buildah.to_owned()), ("zfs", zfs.to_owned()), ("rsync", rsync)] {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a stand-in tool");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("make it executable");
    }
    std::fs::write(dir.join("rsync.args"), "0").expect("write rsync.args");
}

/// Connects with a few retries, for a server that is busy accepting others.
pub async fn connect(address: SocketAddr) -> io::Result<Connection> {
    let mut last = None;
    for _ in 0..5 {
        match Connection::connect(address).await {
            Ok(connection) => return Ok(connection),
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last.unwrap_or_else(|| io::Error::other("no connection attempt")))
}
