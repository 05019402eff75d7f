//! Restart recovery of `coppice serve` against the real pipeline: the server is
//! killed with SIGKILL in the middle of an rsync and started again on the same state
//! directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::http_support::{BUILD_TIMEOUT, HttpResponse, fake_tool, parse_events, read_event_stream, request, send};
use crate::support::{TemplateGuard, buildah_containers, coppice_bin, dataset_exists, run, run_ok, test_env, unique_name};

/// Time a server gets to log `listening on`, which includes the start-up sweep.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A `coppice serve` child process on 127.0.0.1 with a port the kernel picked. Its
/// stderr is read line by line, and dropping it kills the process.
struct ServeProcess {
    child: Child,
    addr: SocketAddr,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl ServeProcess {
    fn start(state_dir: &Path, extra: &[&str]) -> Self {
        let env = test_env();
        let state_dir = state_dir.to_str().expect("the state directory path is not UTF-8");
        let mut child = Command::new(coppice_bin())
            .args(["--jails-dataset", &env.jails, "--log-format", "json"])
            .args(extra)
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir", state_dir])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to start coppice serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });

        let mut server = Self { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), lines, log: Vec::new() };
        let line = server.wait_for_log("listening on ", START_TIMEOUT);
        let address = message(&line).strip_prefix("listening on ").unwrap_or_default().to_owned();
        server.addr = address.parse().unwrap_or_else(|error| panic!("bad address {address:?} ({error}) in {line}"));
        server
    }

    /// Reads log lines until one whose message contains `needle` and returns it.
    fn wait_for_log(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if message(&line).contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("no log line containing {needle:?} within {limit:?}; the server logged:\n{}", self.log.join("\n"))
                }
            }
        }
    }

    /// Returns every log line read so far, and those waiting to be read.
    fn log(&mut self) -> Vec<String> {
        self.log.extend(self.lines.try_iter());
        self.log.clone()
    }

    /// Kills the server with SIGKILL, as a crash or an OOM kill would, and reaps it.
    fn kill_hard(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGKILL).expect("failed to send SIGKILL to coppice serve");
        self.child.wait().expect("failed to reap coppice serve");
    }

    async fn get(&self, path: &str) -> HttpResponse {
        request(self.addr, Method::GET, path, &[], None).await
    }

    async fn submit(&self, name: &str, image: &str) -> String {
        let body = Bytes::from(json!({"name": name, "from": format!("oci:{image}")}).to_string());
        let response = request(self.addr, Method::POST, "/templates/build", &[("content-type", "application/json")], Some(body)).await;
        assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.describe());
        response.json()["jobID"].as_str().expect("no jobID in the 202 body").to_owned()
    }

    /// Polls the job until `done` accepts it and returns its last JSON.
    async fn wait_job(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + BUILD_TIMEOUT;
        loop {
            let response = self.get(&format!("/templates/builds/{id}")).await;
            assert_eq!(response.status, StatusCode::OK, "{}", response.describe());
            let job = response.json();
            if done(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} is not {what} after {BUILD_TIMEOUT:?}: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_finished(&self, id: &str) -> Value {
        self.wait_job(id, "finished", |job| matches!(job["status"].as_str(), Some("succeeded" | "failed"))).await
    }

    /// Returns the full event stream of a finished job.
    async fn events(&self, id: &str) -> String {
        let response = send(self.addr, Method::GET, &format!("/templates/builds/{id}/events"), &[], None).await;
        assert_eq!(response.status(), StatusCode::OK);
        read_event_stream(response, Duration::from_secs(30)).await
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn message(line: &str) -> String {
    let record: Value = serde_json::from_str(line).unwrap_or_else(|error| panic!("log line is not JSON ({error}): {line}"));
    record["fields"]["message"].as_str().unwrap_or_default().to_owned()
}

/// An rsync that copies at full speed until the file `slow` exists in its directory.
/// From then on it writes its pid to `rsync.pid` and copies at 2000 KiB/s, so the
/// 64 MiB file of the sample image keeps it busy for about 30 s.
struct SwitchableRsync {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl SwitchableRsync {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("failed to create a temporary directory");
        let real = run_ok("sh", &["-c", "command -v rsync"]).trim().to_owned();
        let here = dir.path().display().to_string();
        let script = format!(
            "if [ -e {here}/slow ]; then echo $$ > {here}/rsync.pid; exec {real} --bwlimit=2000 \"$@\"; fi\nexec {real} \"$@\""
        );
        let path = fake_tool(dir.path(), "rsync", &script);
        Self { dir, path }
    }

    fn slow_down(&self) {
        std::fs::write(self.dir.path().join("slow"), "").expect("failed to create the slow marker");
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("rsync.pid")).ok()?.trim().parse().ok()
    }

    /// Kills the slow rsync's process group. The executor runs every command in its
    /// own process group, so the copy outlives a server killed with SIGKILL. A service
    /// manager kills it with the server (systemd kills the whole cgroup by default),
    /// and this call plays that part.
    fn kill_copy(&self) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        }
    }
}

impl Drop for SwitchableRsync {
    fn drop(&mut self) {
        self.kill_copy();
    }
}

/// Removes a working container a failed test left behind.
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if buildah_containers().contains(&self.0) {
            let _ = run("buildah", &["umount", &self.0]);
            let _ = run("buildah", &["rm", &self.0]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_rsync_then_restart_recovers() {
    let env = test_env();
    let state = tempfile::tempdir().expect("failed to create the state directory");
    let rsync = SwitchableRsync::new();
    let first_name = unique_name("it-restart-done");
    let cut_name = unique_name("it-restart-cut");
    let _first_guard = TemplateGuard::new(&env, &first_name);
    let cut_guard = TemplateGuard::new(&env, &cut_name);
    let rsync_path = rsync.path.to_str().expect("the rsync path is not UTF-8");
    let mut server = ServeProcess::start(state.path(), &["--rsync", rsync_path]);

    let first = server.submit(&first_name, &env.image).await;
    let first_done = server.wait_finished(&first).await;
    assert_eq!(first_done["status"], "succeeded", "{first_done}");
    let first_logs = server.get(&format!("/templates/builds/{first}/logs")).await;
    let first_tail = server.get(&format!("/templates/builds/{first}/logs?tail=3")).await;
    let first_events = server.events(&first).await;

    rsync.slow_down();
    let cut = server.submit(&cut_name, &env.image).await;
    let _container_guard = ContainerGuard(format!("coppice-{cut}"));
    server.wait_job(&cut, "in step rsync", |job| job["step"] == "rsync").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rsync.pid().is_none() {
        assert!(Instant::now() < deadline, "the slow rsync did not start within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A moment of copying, so the dataset contains part of the image when the server dies.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(dataset_exists(&cut_guard.dataset), "the import did not create {}", cut_guard.dataset);
    assert!(buildah_containers().contains(&format!("coppice-{cut}")), "the import has no working container");

    server.kill_hard();
    rsync.kill_copy();
    let mut server = ServeProcess::start(state.path(), &[]);

    let log = server.log();
    let cut_after = server.get(&format!("/templates/builds/{cut}")).await.json();
    assert_eq!(cut_after["status"], "failed", "{cut_after}");
    let error = cut_after["error"].as_str().unwrap_or_default();
    assert!(error.contains("restarted during step rsync"), "{cut_after}");
    assert!(cut_after.get("step").is_none(), "{cut_after}");
    assert!(cut_after["finishedAt"].is_string(), "{cut_after}");
    assert!(!dataset_exists(&cut_guard.dataset), "the sweep left {}", cut_guard.dataset);
    assert!(!buildah_containers().contains(&format!("coppice-{cut}")), "the sweep left the working container");
    assert!(
        log.iter().any(|line| message(line).contains("sweep destroyed an unfinished template dataset") && line.contains(&cut_guard.dataset)),
        "no sweep log line for {}:\n{}",
        cut_guard.dataset,
        log.join("\n")
    );
    assert!(
        log.iter().any(|line| message(line).contains("sweep removed a working container") && line.contains(&cut)),
        "no sweep log line for the container:\n{}",
        log.join("\n")
    );

    let first_after = server.get(&format!("/templates/builds/{first}")).await;
    assert_eq!(first_after.json(), first_done, "the succeeded job reads as before");
    let logs_after = server.get(&format!("/templates/builds/{first}/logs")).await;
    assert_eq!(logs_after.status, StatusCode::OK, "{}", logs_after.describe());
    assert_eq!(logs_after.json(), first_logs.json(), "the logs read as before");
    assert_eq!(server.get(&format!("/templates/builds/{first}/logs?tail=3")).await.json(), first_tail.json());
    let events_after = server.events(&first).await;
    assert_eq!(parse_events(&events_after), parse_events(&first_events), "the event stream replays as before");
    let listed = server.get("/templates/builds").await.json();
    let listed_ids: Vec<&str> = listed.as_array().expect("the listing is an array").iter().filter_map(|job| job["jobID"].as_str()).collect();
    assert_eq!(listed_ids, [cut.as_str(), first.as_str()], "jobs are listed newest first");

    let retry = server.submit(&cut_name, &env.image).await;
    let retried = server.wait_finished(&retry).await;
    assert_eq!(retried["status"], "succeeded", "{retried}");
    assert!(dataset_exists(&format!("{}@base", cut_guard.dataset)), "the retry made no template");
}
