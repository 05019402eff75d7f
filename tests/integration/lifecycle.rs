//! Cancel, timeouts, shutdown, the API key and the health check, with faults injected
//! through fake tools that wrap the real ones.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::Value;

use coppice::http::ApiKey;
use coppice::jobs::JobsConfig;

use crate::http_support::{
    SilentRegistry, TestServer, fake_tool, import_config, parse_events, read_event_stream, request, send,
};
use crate::support::{TemplateGuard, buildah_containers, coppice_bin, dataset_exists, test_env, unique_name};

fn job_id(body: &Value) -> String {
    body["jobID"].as_str().unwrap_or_else(|| panic!("no jobID in {body}")).to_owned()
}

fn one_slot() -> JobsConfig {
    JobsConfig { max_concurrent_builds: 1, ..JobsConfig::default() }
}

fn real(program: &str) -> String {
    crate::support::run_ok("sh", &["-c", &format!("command -v {program}")]).trim().to_owned()
}

/// Writes an rsync limited to 2 MB/s, so the sample image's 64 MiB file takes about 30 s.
fn slow_rsync(dir: &std::path::Path) -> std::path::PathBuf {
    fake_tool(dir, "rsync", &format!("exec {} --bwlimit=2000 \"$@\"", real("rsync")))
}

/// Asserts that no working container of job `id` is left.
fn assert_no_container(id: &str) {
    let container = format!("coppice-{id}");
    assert!(!buildah_containers().contains(&container), "container {container} was left behind");
}

async fn cancel(server: &TestServer, id: &str) -> crate::http_support::HttpResponse {
    request(server.addr, Method::POST, &format!("/templates/builds/{id}/cancel"), &[], None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_job_frees_the_name() {
    let env = test_env();
    let registry = SilentRegistry::start().await;
    let server = TestServer::start_with(import_config(&env), one_slot()).await;
    let blocker = job_id(&server.submit("/templates/build", &unique_name("life-blocker"), &registry.image()).await.json());
    server.wait_status(&blocker, "running").await;
    let name = unique_name("life-queued");
    let _guard = TemplateGuard::new(&env, &name);
    let queued = job_id(&server.submit("/templates/build", &name, &env.image).await.json());

    let response = cancel(&server, &queued).await;

    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.describe());
    let job = server.get(&format!("/templates/builds/{queued}")).await.json();
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["cancelled"], true, "{job}");
    assert!(job["error"].as_str().unwrap().contains("cancelled while queued"), "{job}");
    let again = cancel(&server, &queued).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.describe());
    assert_eq!(again.json()["jobID"], queued.as_str());
    let unknown = cancel(&server, "8b5c0f6e-7d1a-4c1e-9a7e-2f0a7f9e1c3d").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.describe());
    let resubmitted = server.submit("/templates/build", &name, &env.image).await;
    assert_eq!(resubmitted.status, StatusCode::ACCEPTED, "{}", resubmitted.describe());
    server.cancel_job(&blocker);
    let retried = server.wait_finished(&job_id(&resubmitted.json())).await;
    assert_eq!(retried["status"], "succeeded", "{retried}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_pull_leaves_nothing() {
    let env = test_env();
    let registry = SilentRegistry::start().await;
    let server = TestServer::start().await;
    let name = unique_name("life-pull");
    let guard = TemplateGuard::new(&env, &name);
    let id = job_id(&server.submit("/templates/build", &name, &registry.image()).await.json());
    let running = server.wait_status(&id, "running").await;
    assert_eq!(running["step"], "pull", "{running}");

    let response = cancel(&server, &id).await;
    let job = server.wait_finished(&id).await;

    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.describe());
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["cancelled"], true, "{job}");
    assert!(job["error"].as_str().unwrap().contains("cancelled during step pull"), "{job}");
    assert!(!dataset_exists(&guard.dataset));
    assert_no_container(&id);
    let retry = server.submit("/templates/build", &name, &env.image).await;
    let retried = server.wait_finished(&job_id(&retry.json())).await;
    assert_eq!(retried["status"], "succeeded", "{retried}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_rsync_destroys_dataset() {
    let env = test_env();
    let dir = tempfile::tempdir().unwrap();
    let mut config = import_config(&env);
    config.tools.rsync = slow_rsync(dir.path());
    let server = TestServer::start_with(config, JobsConfig::default()).await;
    let name = unique_name("life-rsync");
    let guard = TemplateGuard::new(&env, &name);
    let id = job_id(&server.submit("/templates/build", &name, &env.image).await.json());
    wait_for_step(&server, &id, "rsync").await;
    wait_until(|| dataset_exists(&guard.dataset), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let response = cancel(&server, &id).await;
    let job = server.wait_finished(&id).await;

    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.describe());
    assert_eq!(job["cancelled"], true, "{job}");
    assert!(job["error"].as_str().unwrap().contains("cancelled during step rsync"), "{job}");
    assert!(!dataset_exists(&guard.dataset), "the cancelled import left its dataset");
    assert_no_container(&id);
    let logs = server.get(&format!("/templates/builds/{id}/logs")).await.json();
    let texts: Vec<&str> = logs["logs"].as_array().unwrap().iter().filter_map(|line| line["text"].as_str()).collect();
    assert!(texts.iter().any(|text| text.starts_with("$ zfs destroy -r")), "no destroy in the log: {texts:?}");

    let normal = TestServer::start().await;
    let retry = normal.submit("/templates/build", &name, &env.image).await;
    let retried = normal.wait_finished(&job_id(&retry.json())).await;
    assert_eq!(retried["status"], "succeeded", "{retried}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_step_fails_at_its_timeout() {
    let env = test_env();
    let dir = tempfile::tempdir().unwrap();
    let mut config = import_config(&env);
    config.tools.buildah = fake_tool(
        dir.path(),
        "buildah",
        &format!("if [ \"$1\" = pull ]; then trap '' TERM; sleep 300; fi\nexec {} \"$@\"", real("buildah")),
    );
    config.timeouts.pull = Duration::from_secs(2);
    config.grace = Duration::from_secs(1);
    let server = TestServer::start_with(config, JobsConfig::default()).await;
    let name = unique_name("life-hang");
    let guard = TemplateGuard::new(&env, &name);
    let started = Instant::now();

    let id = job_id(&server.submit("/templates/build", &name, &env.image).await.json());
    let job = server.wait_finished(&id).await;

    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["cancelled"], false, "{job}");
    assert!(job["error"].as_str().unwrap().contains("step pull timed out after 2 s"), "{job}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(!dataset_exists(&guard.dataset));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_except_for_health() {
    let env = test_env();
    let key = "test-key-5f2c";
    let server = TestServer::start_with_key(import_config(&env), JobsConfig::default(), ApiKey::new(key)).await;
    let body = serde_json::to_vec(&serde_json::json!({"name": unique_name("life-key"), "from": format!("oci:{}", env.image)})).unwrap();
    let json_header = ("content-type", "application/json");

    let missing = request(server.addr, Method::POST, "/templates/build", &[json_header], Some(body.clone().into())).await;
    let wrong = request(server.addr, Method::POST, "/templates/build", &[json_header, ("x-api-key", "nope")], Some(body.into())).await;
    let list_without = request(server.addr, Method::GET, "/templates/builds", &[], None).await;
    let list_with = request(server.addr, Method::GET, "/templates/builds", &[("x-api-key", key)], None).await;
    let health = request(server.addr, Method::GET, "/healthz", &[], None).await;

    for response in [&missing, &wrong, &list_without] {
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{}", response.describe());
        assert_eq!(response.json()["code"], 401);
    }
    assert_eq!(list_with.status, StatusCode::OK, "{}", list_with.describe());
    assert_eq!(list_with.json(), serde_json::json!([]), "a rejected request created a job");
    assert_eq!(health.status, StatusCode::OK, "{}", health.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_versions_and_missing_tools() {
    let env = test_env();
    let healthy = TestServer::start().await;
    let mut broken_config = import_config(&env);
    broken_config.tools.rsync = "/nonexistent/rsync".into();
    let broken = TestServer::start_with(broken_config, JobsConfig::default()).await;

    let ok = healthy.get("/healthz").await;
    let missing = broken.get("/healthz").await;

    assert_eq!(ok.status, StatusCode::OK, "{}", ok.describe());
    let body = ok.json();
    assert_eq!(body["status"], "ok");
    assert!(body["buildah"]["version"].as_str().unwrap().contains("buildah version"), "{body}");
    assert!(body["rsync"]["version"].as_str().unwrap().contains("rsync"), "{body}");
    assert!(body["zfs"]["error"].is_null(), "{body}");
    assert_eq!(missing.status, StatusCode::SERVICE_UNAVAILABLE, "{}", missing.describe());
    assert!(missing.json()["message"].as_str().unwrap().contains("/nonexistent/rsync"), "{}", missing.describe());
}

/// A `coppice serve` process on a loopback port, killed when dropped.
struct ServeProcess {
    child: Child,
    addr: SocketAddr,
    /// The server's own job history, so parallel servers never share one.
    _state: tempfile::TempDir,
}

impl ServeProcess {
    fn start(extra: &[&str]) -> Self {
        let env = test_env();
        let state = tempfile::tempdir().expect("failed to create the state directory");
        let mut child = Command::new(coppice_bin())
            .args(["--jails-dataset", &env.jails, "--log-format", "json"])
            .args(extra)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(state.path())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to start coppice serve");
        let stderr = child.stderr.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let addr = loop {
            let line = receiver.recv_timeout(Duration::from_secs(30)).expect("no `listening on` line within 30 s");
            let record: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if let Some(address) = record["fields"]["message"].as_str().and_then(|m| m.strip_prefix("listening on ")) {
                break address.parse().unwrap();
            }
        };
        Self { child, addr, _state: state }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_builds_and_ends_streams() {
    let env = test_env();
    let dir = tempfile::tempdir().unwrap();
    let rsync = slow_rsync(dir.path());
    let registry = SilentRegistry::start().await;
    let mut serve = ServeProcess::start(&["--rsync", rsync.to_str().unwrap(), "--kill-grace", "2"]);
    let copying = unique_name("life-term-copy");
    let pulling = unique_name("life-term-pull");
    let copying_guard = TemplateGuard::new(&env, &copying);
    let pulling_guard = TemplateGuard::new(&env, &pulling);
    let body = |name: &str, image: &str| serde_json::to_vec(&serde_json::json!({"name": name, "from": format!("oci:{image}")})).unwrap();
    let header = [("content-type", "application/json")];
    let copy_id = job_id(&request(serve.addr, Method::POST, "/templates/build", &header, Some(body(&copying, &env.image).into())).await.json());
    let pull_id = job_id(&request(serve.addr, Method::POST, "/templates/build", &header, Some(body(&pulling, &registry.image()).into())).await.json());
    wait_for_dataset(&copying_guard.dataset).await;
    let streams: Vec<_> = [&copy_id, &pull_id]
        .into_iter()
        .map(|id| {
            let (addr, path) = (serve.addr, format!("/templates/builds/{id}/events"));
            tokio::spawn(async move { read_event_stream(send(addr, Method::GET, &path, &[], None).await, Duration::from_secs(60)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped_at = Instant::now();

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(serve.child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut texts = Vec::new();
    for stream in streams {
        texts.push(stream.await.unwrap());
    }
    let status = tokio::task::spawn_blocking(move || serve.child.wait()).await.unwrap().unwrap();

    assert!(stopped_at.elapsed() < Duration::from_secs(30), "shutdown took {:?}", stopped_at.elapsed());
    assert!(status.success(), "coppice serve exited with {status}");
    for (text, step) in texts.iter().zip(["rsync", "pull"]) {
        let events = parse_events(text);
        let done = events.last().unwrap_or_else(|| panic!("empty stream:\n{text}"));
        assert_eq!(done.event, "done", "{text}");
        let job = done.json();
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["cancelled"], false, "{job}");
        assert!(job["error"].as_str().unwrap().contains(&format!("shut down during step {step}")), "{job}");
    }
    assert!(!dataset_exists(&copying_guard.dataset), "the interrupted copy left its dataset");
    assert!(!dataset_exists(&pulling_guard.dataset));
    assert_no_container(&copy_id);
    assert_no_container(&pull_id);
}

async fn wait_for_step(server: &TestServer, id: &str, step: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = server.get(&format!("/templates/builds/{id}")).await.json();
        if job["step"] == step {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} never reached step {step}: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_dataset(dataset: &str) {
    let dataset = dataset.to_owned();
    wait_until(move || dataset_exists(&dataset), Duration::from_secs(60)).await;
}

async fn wait_until(condition: impl Fn() -> bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_do_not_cancel_builds() {
    use tokio::io::AsyncWriteExt;

    let env = test_env();
    let server = TestServer::start().await;
    let name = unique_name("life-drop");
    let _guard = TemplateGuard::new(&env, &name);
    let body = serde_json::to_string(&serde_json::json!({"name": name, "from": format!("oci:{}", env.image)})).unwrap();
    let mut blocking = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let raw = format!(
        "POST /templates HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    blocking.write_all(raw.as_bytes()).await.unwrap();
    let id = loop {
        let jobs = server.get(&format!("/templates/builds?name={name}")).await.json();
        if let Some(job) = jobs.as_array().and_then(|jobs| jobs.first()) {
            break job_id(job);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let events = send(server.addr, Method::GET, &format!("/templates/builds/{id}/events"), &[], None).await;
    let before = server.get(&format!("/templates/builds/{id}")).await.json();
    assert!(matches!(before["status"].as_str(), Some("queued" | "running")), "the build ended before the drop: {before}");

    drop(blocking);
    drop(events);
    let job = server.wait_finished(&id).await;

    assert_eq!(job["status"], "succeeded", "a dropped connection stopped the build: {job}");
    assert_eq!(job["cancelled"], false, "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_made_or_destroyed_outside_show_at_once() {
    let env = test_env();
    let server = TestServer::start().await;
    let name = unique_name("life-outside");
    let guard = TemplateGuard::new(&env, &name);
    let from = format!("oci:{}", env.image);

    crate::support::run_ok(coppice_bin(), &["import", &name, &from]);
    let after_import = server.get(&format!("/templates/{name}")).await;
    let conflict = server.submit("/templates/build", &name, &env.image).await;
    crate::support::destroy_dataset(&guard.dataset);
    let after_destroy = server.get(&format!("/templates/{name}")).await;
    let accepted = server.submit("/templates/build", &name, &env.image).await;

    assert_eq!(after_import.status, StatusCode::OK, "{}", after_import.describe());
    assert_eq!(conflict.status, StatusCode::CONFLICT, "{}", conflict.describe());
    assert_eq!(after_destroy.status, StatusCode::NOT_FOUND, "{}", after_destroy.describe());
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.describe());
    let job = server.wait_finished(&job_id(&accepted.json())).await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_the_job_and_frees_space() {
    let env = test_env();
    let jails = format!("{}/{}", env.jails, unique_name("life-quota"));
    crate::support::run_ok("zfs", &["create", "-o", "quota=24M", &jails]);
    let _jails_guard = QuotaGuard(jails.clone());
    let mut config = import_config(&env);
    config.jails = coppice::names::Dataset::parse(&jails).unwrap();
    let server = TestServer::start_with(config, JobsConfig::default()).await;
    let name = unique_name("life-full");

    let id = job_id(&server.submit("/templates/build", &name, &env.image).await.json());
    let job = server.wait_finished(&id).await;

    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("step rsync failed"), "{error}");
    assert!(error.contains("Disk quota exceeded") || error.contains("No space left"), "{error}");
    assert!(!dataset_exists(&format!("{jails}/{name}-template")), "the failed dataset was left");
    assert_no_container(&id);
    let used = || -> u64 {
        crate::support::run_ok("zfs", &["get", "-Hp", "-o", "value", "used", &jails]).trim().parse().unwrap()
    };
    wait_until(|| used() < 1024 * 1024, Duration::from_secs(20)).await;
}

/// Destroys the quota-limited jails dataset of a test, with everything under it.
struct QuotaGuard(String);

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        crate::support::destroy_dataset(&self.0);
    }
}
