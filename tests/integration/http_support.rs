//! Helpers of the HTTP API tests: an in-process server on 127.0.0.1:0 that shuts down
//! when dropped, a small HTTP/1.1 client on hyper's connection API, an SSE frame
//! parser, and a loopback "registry" that accepts connections and never responds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use coppice::http::{ApiKey, App, Server};
use coppice::import::{ImportConfig, StepTimeouts};
use coppice::jobs::{JobRegistry, JobsConfig};
use coppice::names::Dataset;
use coppice::steps::Tools;
use coppice::templates::TemplateRegistry;

use crate::support::{TestEnv, test_env};

/// Maximum wait for a build of the sample image to finish.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

/// Returns the import settings of the tests: the real tools on PATH and the test jails dataset.
pub fn import_config(env: &TestEnv) -> ImportConfig {
    ImportConfig {
        tools: Tools::default(),
        jails: Dataset::parse(&env.jails).unwrap_or_else(|error| panic!("COPPICE_JAILS_DATASET is invalid: {error}")),
        arch: None,
        timeouts: StepTimeouts::default(),
        grace: Duration::from_secs(5),
    }
}

/// The API served in this process. Dropping it cancels every job the test started
/// (so their cleanup removes what they made) and shuts the server down.
pub struct TestServer {
    pub addr: SocketAddr,
    pub jobs: Arc<JobRegistry>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(import_config(&test_env()), JobsConfig::default()).await
    }

    pub async fn start_with(import: ImportConfig, config: JobsConfig) -> Self {
        Self::start_with_key(import, config, None).await
    }

    /// Starts a server that requires `key` in `X-API-Key` when it is set.
    pub async fn start_with_key(import: ImportConfig, config: JobsConfig, key: Option<ApiKey>) -> Self {
        let templates = Arc::new(TemplateRegistry::default());
        if let Err(error) = templates.reload(&import).await {
            panic!("failed to list the templates under {}: {error}; run `bash scripts/setup` first", import.jails);
        }

        let jobs = JobRegistry::start(import, config, templates);
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("failed to bind 127.0.0.1:0");
        let app = App::new(Arc::clone(&jobs), shutdown.clone()).with_api_key(key);
        let server = Server::from_listener(listener, app)
            .with_shutdown_timeout(Duration::from_secs(2));
        let addr = server.local_addr().expect("listener has no local address");
        let task = tokio::spawn(server.run());

        Self { addr, jobs, shutdown, task }
    }

    /// Stops the import of job `id` through its cancel token.
    pub fn cancel_job(&self, id: &str) {
        let id = coppice::jobs::JobId::parse(id).unwrap_or_else(|| panic!("{id:?} is not a job id"));
        let job = self.jobs.get(id).unwrap_or_else(|| panic!("job {id} is not in the registry"));
        job.cancel_token().cancel();
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        request(self.addr, Method::GET, path, &[], None).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> HttpResponse {
        let body = Bytes::from(serde_json::to_vec(body).unwrap());
        request(self.addr, Method::POST, path, &[("content-type", "application/json")], Some(body)).await
    }

    /// Posts a build of `name` from `oci:<image>` to `path` and returns the response.
    pub async fn submit(&self, path: &str, name: &str, image: &str) -> HttpResponse {
        self.post_json(path, &serde_json::json!({"name": name, "from": format!("oci:{image}")})).await
    }

    /// Polls the job until it succeeded or failed and returns its last JSON.
    pub async fn wait_finished(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + BUILD_TIMEOUT;
        loop {
            let response = self.get(&format!("/templates/builds/{id}")).await;
            assert_eq!(response.status, StatusCode::OK, "{}", response.describe());
            let job = response.json();
            if matches!(job["status"].as_str(), Some("succeeded" | "failed")) {
                return job;
            }
            assert!(tokio::time::Instant::now() < deadline, "job {id} did not finish within {BUILD_TIMEOUT:?}: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls the job until its status is `status`.
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + BUILD_TIMEOUT;
        loop {
            let job = self.get(&format!("/templates/builds/{id}")).await.json();
            if job["status"] == status {
                return job;
            }
            assert!(tokio::time::Instant::now() < deadline, "job {id} did not reach {status} within {BUILD_TIMEOUT:?}: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        for view in self.jobs.list(&Default::default()) {
            if let Some(job) = self.jobs.get(view.job_id) {
                job.cancel_token().cancel();
            }
        }
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// A whole response, read to the end.
pub struct HttpResponse {
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| panic!("body is not JSON ({error}): {}", self.describe()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Describes the request and response, for assertion messages.
    pub fn describe(&self) -> String {
        format!("{} {} -> {}\nheaders: {:?}\nbody: {}", self.method, self.path, self.status, self.headers, self.text())
    }
}

/// Sends one request on a new connection and returns the response with its body unread.
pub async fn send(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Bytes>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap_or_else(|error| panic!("failed to connect to {addr}: {error}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap_or_else(|error| panic!("HTTP handshake with {addr} failed: {error}"));
    tokio::spawn(connection);

    let mut builder = Request::builder().method(method.clone()).uri(path).header("host", addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body.unwrap_or_default())).expect("invalid test request");

    sender
        .send_request(request)
        .await
        .unwrap_or_else(|error| panic!("{method} {path} failed: {error}"))
}

pub async fn request(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Bytes>) -> HttpResponse {
    let response = send(addr, method.clone(), path, headers, body).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: body not complete within 30 s"))
        .unwrap_or_else(|error| panic!("{method} {path}: failed to read the body: {error}"))
        .to_bytes();
    HttpResponse { method, path: path.to_owned(), status, headers, body }
}

/// Writes `raw` to a new connection and returns everything the server sends back
/// before it closes the connection or goes quiet for a second.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|error| panic!("failed to connect to {addr}: {error}"));
    // The server may respond and close before it read everything, so a failed write is expected.
    let _ = stream.write_all(raw).await;

    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => received.extend_from_slice(&chunk[..read]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// One parsed SSE event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<u64>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|error| panic!("event data is not JSON ({error}): {self:?}"))
    }
}

/// Reads an event stream to its end, frame by frame, and returns the raw text. Fails
/// if the stream stays open past `timeout`.
pub async fn read_event_stream(response: Response<Incoming>, timeout: Duration) -> String {
    let mut body = response.into_body();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(frame)) => frame.unwrap_or_else(|error| panic!("event stream failed: {error}\nread so far:\n{text}")),
            Ok(None) => return text,
            Err(_) => panic!("event stream still open after {timeout:?}; read so far:\n{text}"),
        };
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

/// Parses SSE text into events, skipping comment lines.
pub fn parse_events(text: &str) -> Vec<SseEvent> {
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|block| !block.is_empty()) {
        let mut event = SseEvent { event: "message".to_owned(), id: None, data: String::new() };
        let mut data_lines = Vec::new();
        for line in block.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "event" => event.event = value.to_owned(),
                "id" => event.id = Some(value.parse().unwrap_or_else(|_| panic!("bad SSE id line {line:?}"))),
                "data" => data_lines.push(value),
                other => panic!("unexpected SSE field {other:?} in {block:?}"),
            }
        }
        if data_lines.is_empty() && event.id.is_none() && event.event == "message" {
            continue;
        }
        event.data = data_lines.join("\n");
        events.push(event);
    }
    events
}

/// A loopback TCP port that accepts connections and never responds, so a `buildah pull`
/// from it stays in the pull step until the job is cancelled.
pub struct SilentRegistry {
    pub host: String,
    task: JoinHandle<()>,
}

impl SilentRegistry {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("failed to bind 127.0.0.1:0");
        let host = listener.local_addr().expect("listener has no local address").to_string();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Self { host, task }
    }

    /// Returns an image reference on this port, without `oci:`.
    pub fn image(&self) -> String {
        format!("{}/coppice/never:1", self.host)
    }
}

impl Drop for SilentRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes an executable shell script into `dir` and returns its path.
pub fn fake_tool(dir: &std::path::Path, name: &str, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;

    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("failed to write a fake tool");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("failed to make a fake tool executable");
    path
}
