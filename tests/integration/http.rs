//! The HTTP job API against the real pipeline: each test starts a server on
//! 127.0.0.1:0 in this process and talks HTTP/1.1 to it.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use coppice::import::ImportConfig;
use coppice::jobs::JobsConfig;

use crate::http_support::{
    SilentRegistry, TestServer, fake_tool, import_config, parse_events, raw_exchange, read_event_stream, request, send,
};
use crate::support::{TemplateGuard, dataset_exists, test_env, unique_name};

/// Maximum time an event stream of one build may stay open.
const STREAM_TIMEOUT: Duration = Duration::from_secs(180);

fn job_id(body: &Value) -> String {
    body["jobID"].as_str().unwrap_or_else(|| panic!("no jobID in {body}")).to_owned()
}

fn seqs(logs: &Value) -> Vec<u64> {
    logs.as_array().unwrap_or_else(|| panic!("logs is not an array: {logs}")).iter().map(|line| line["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_build_succeeds_with_logs_and_events() {
    let env = test_env();
    let name = unique_name("http-async");
    let _guard = TemplateGuard::new(&env, &name);
    let server = TestServer::start().await;

    let accepted = server.submit("/templates/build", &name, &env.image).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.describe());
    let job = accepted.json();
    let id = job_id(&job);
    let events = send(server.addr, Method::GET, &format!("/templates/builds/{id}/events"), &[], None).await;
    let finished = server.wait_finished(&id).await;
    let stream = read_event_stream(events, STREAM_TIMEOUT).await;

    assert_eq!(job["name"], name.as_str());
    assert_eq!(job["from"], format!("oci:{}", env.image));
    assert_eq!(job["status"], "queued");
    assert!(job["createdAt"].as_str().is_some_and(|ts| ts.ends_with('Z')), "{job}");
    assert_eq!(job["logsURL"], format!("/templates/builds/{id}/logs"));
    assert_eq!(job["eventsURL"], format!("/templates/builds/{id}/events"));
    assert_eq!(job["templateURL"], format!("/templates/{name}"));
    assert_eq!(accepted.header("location"), Some(format!("/templates/builds/{id}").as_str()));

    let snapshot = format!("{}/{name}-template@base", env.jails);
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert_eq!(finished["snapshot"], snapshot.as_str());
    assert!(finished["sizeBytes"].as_u64().is_some_and(|size| size > 0), "{finished}");
    assert!(finished["startedAt"].is_string(), "{finished}");
    assert!(finished["finishedAt"].is_string(), "{finished}");
    assert!(finished.get("step").is_none(), "a finished job has no step: {finished}");
    assert!(finished.get("error").is_none(), "{finished}");

    let events = parse_events(&stream);
    let (done, lines) = events.split_last().unwrap_or_else(|| panic!("empty event stream:\n{stream}"));
    assert_eq!(done.event, "done", "{stream}");
    assert_eq!(done.json(), finished, "the done event carries the final job");
    assert!(lines.iter().all(|event| event.event == "log"), "{stream}");
    let ids: Vec<u64> = lines.iter().map(|event| event.id.unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "ids replay and follow without gaps or duplicates");
    for event in lines {
        assert_eq!(event.json()["seq"].as_u64(), event.id, "{event:?}");
    }

    let logs = server.get(&format!("/templates/builds/{id}/logs")).await;
    assert_eq!(logs.status, StatusCode::OK, "{}", logs.describe());
    let logs = logs.json();
    assert_eq!(logs["truncated"], false);
    assert_eq!(seqs(&logs["logs"]), ids, "the logs hold the same lines as the stream");
    let first = &logs["logs"][0];
    assert_eq!(first["source"], "template-build");
    assert!(first["ts"].is_string(), "{first}");
    assert!(first["stream"].is_string(), "{first}");
    assert_eq!(first["step"], "pull", "{first}");
    let texts: Vec<&str> = logs["logs"].as_array().unwrap().iter().map(|line| line["text"].as_str().unwrap()).collect();
    assert!(texts.iter().any(|text| text.starts_with("$ buildah pull")), "{texts:?}");
    assert!(texts.iter().any(|text| text.starts_with("$ rsync")), "{texts:?}");
    assert!(texts.iter().any(|text| text.starts_with("$ zfs snapshot")), "{texts:?}");

    let template = server.get(&format!("/templates/{name}")).await;
    assert_eq!(template.status, StatusCode::OK, "{}", template.describe());
    assert_eq!(template.json()["snapshot"], snapshot.as_str());
    let templates = server.get("/templates").await.json();
    assert!(templates.as_array().unwrap().iter().any(|template| template["name"] == name.as_str()), "{templates}");

    let by_name = server.get(&format!("/templates/builds?name={name}")).await.json();
    assert_eq!(by_name.as_array().map(Vec::len), Some(1), "{by_name}");
    assert_eq!(by_name[0]["jobID"], id.as_str());
    let succeeded = server.get("/templates/builds?status=succeeded").await.json();
    assert!(succeeded.as_array().unwrap().iter().any(|job| job["jobID"] == id.as_str()), "{succeeded}");
    let failed = server.get("/templates/builds?status=failed").await.json();
    assert!(failed.as_array().unwrap().iter().all(|job| job["jobID"] != id.as_str()), "{failed}");

    let replay = send(server.addr, Method::GET, &format!("/templates/builds/{id}/events"), &[], None).await;
    assert_eq!(replay.headers()["content-type"], "text/event-stream");
    assert_eq!(replay.headers()["cache-control"], "no-cache");
    assert_eq!(replay.headers()["x-accel-buffering"], "no");
    let replay = parse_events(&read_event_stream(replay, Duration::from_secs(10)).await);
    assert_eq!(replay, events, "a finished job's stream replays everything and ends with done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_query_since_after_tail_limit() {
    let env = test_env();
    let name = unique_name("http-logs");
    let _guard = TemplateGuard::new(&env, &name);
    let server = TestServer::start().await;
    let id = job_id(&server.submit("/templates/build", &name, &env.image).await.json());
    server.wait_finished(&id).await;
    let path = format!("/templates/builds/{id}/logs");
    let all = server.get(&path).await.json();
    let all_seqs = seqs(&all["logs"]);
    let count = all_seqs.len() as u64;
    assert!(count >= 6, "expected several log lines: {all}");
    let third_ts = all["logs"][2]["ts"].as_str().unwrap().to_owned();

    let limited = server.get(&format!("{path}?limit=2")).await.json();
    let since = server.get(&format!("{path}?since={third_ts}")).await.json();
    let after = server.get(&format!("{path}?after=3&limit=2")).await.json();
    let after_end = server.get(&format!("{path}?after={count}")).await.json();
    let tail = server.get(&format!("{path}?tail=2")).await.json();
    let tail_all = server.get(&format!("{path}?tail={count}")).await.json();

    assert_eq!(seqs(&limited["logs"]), [1, 2]);
    assert_eq!(limited["truncated"], true);
    assert_eq!(seqs(&since["logs"]), (4..=count).collect::<Vec<_>>(), "since is strictly after");
    assert_eq!(since["truncated"], false);
    assert_eq!(seqs(&after["logs"]), [4, 5]);
    assert_eq!(after["truncated"], true);
    assert!(seqs(&after_end["logs"]).is_empty());
    assert_eq!(after_end["truncated"], false);
    assert_eq!(seqs(&tail["logs"]), [count - 1, count]);
    assert_eq!(tail["truncated"], true, "older lines matched but are not in the response");
    assert_eq!(seqs(&tail_all["logs"]), all_seqs);
    assert_eq!(tail_all["truncated"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_log_buffer_evicts_and_truncates() {
    let env = test_env();
    let name = unique_name("http-evict");
    let _guard = TemplateGuard::new(&env, &name);
    let config = JobsConfig { log_limits: coppice::jobs::LogLimits { max_lines: 4, max_bytes: usize::MAX }, ..JobsConfig::default() };
    let server = TestServer::start_with(import_config(&env), config).await;
    let id = job_id(&server.submit("/templates/build", &name, &env.image).await.json());
    let finished = server.wait_finished(&id).await;

    let logs = server.get(&format!("/templates/builds/{id}/logs")).await.json();
    let stream = send(server.addr, Method::GET, &format!("/templates/builds/{id}/events"), &[], None).await;
    let stream = read_event_stream(stream, Duration::from_secs(10)).await;

    assert_eq!(finished["status"], "succeeded", "{finished}");
    let kept = seqs(&logs["logs"]);
    assert_eq!(kept.len(), 4, "{logs}");
    assert!(kept[0] > 1, "the oldest lines were evicted: {logs}");
    assert_eq!(logs["truncated"], true);
    assert!(stream.starts_with(&format!(": {} lines were dropped", kept[0] - 1)), "{stream}");
    let events = parse_events(&stream);
    assert_eq!(events.iter().filter_map(|event| event.id).collect::<Vec<_>>(), kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_create_returns_201() {
    let env = test_env();
    let name = unique_name("http-sync");
    let _guard = TemplateGuard::new(&env, &name);
    let server = TestServer::start().await;

    let created = server.submit("/templates", &name, &env.image).await;

    assert_eq!(created.status, StatusCode::CREATED, "{}", created.describe());
    let body = created.json();
    assert_eq!(body["name"], name.as_str());
    assert_eq!(body["from"], format!("oci:{}", env.image));
    assert_eq!(body["snapshot"], format!("{}/{name}-template@base", env.jails));
    assert!(body["sizeBytes"].as_u64().is_some_and(|size| size > 0), "{body}");
    assert_eq!(created.header("location"), Some(format!("/templates/{name}").as_str()));
    let id = job_id(&body);
    let job = server.get(&format!("/templates/builds/{id}")).await.json();
    assert_eq!(job["status"], "succeeded", "the blocking build is a job too: {job}");
    assert!(dataset_exists(&format!("{}/{name}-template", env.jails)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_template_conflicts() {
    let env = test_env();
    let name = unique_name("http-exists");
    let _guard = TemplateGuard::new(&env, &name);
    let server = TestServer::start().await;
    let created = server.submit("/templates", &name, &env.image).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.describe());

    let async_again = server.submit("/templates/build", &name, &env.image).await;
    let sync_again = server.submit("/templates", &name, &env.image).await;

    for response in [&async_again, &sync_again] {
        assert_eq!(response.status, StatusCode::CONFLICT, "{}", response.describe());
        let body = response.json();
        assert_eq!(body["code"], 409);
        assert!(body["message"].as_str().unwrap().contains("already exists"), "{body}");
        assert!(body.get("jobID").is_none(), "no build holds the name: {body}");
    }
}

/// A build that occupies the only slot in its pull step, so the builds behind it stay
/// `queued` for as long as the test needs.
async fn start_blocker(server: &TestServer, registry: &SilentRegistry) -> String {
    let accepted = server.submit("/templates/build", &unique_name("http-blocker"), &registry.image()).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.describe());
    let id = job_id(&accepted.json());
    server.wait_status(&id, "running").await;
    id
}

fn one_slot() -> JobsConfig {
    JobsConfig { max_concurrent_builds: 1, ..JobsConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_one_accepted() {
    let env = test_env();
    let name = unique_name("http-race");
    let _guard = TemplateGuard::new(&env, &name);
    let registry = SilentRegistry::start().await;
    let server = TestServer::start_with(import_config(&env), one_slot()).await;
    let blocker = start_blocker(&server, &registry).await;

    let requests = (0..20).map(|_| {
        let (addr, name, image) = (server.addr, name.clone(), env.image.clone());
        tokio::spawn(async move {
            let body = serde_json::to_vec(&json!({"name": name, "from": format!("oci:{image}")})).unwrap();
            request(addr, Method::POST, "/templates/build", &[("content-type", "application/json")], Some(body.into())).await
        })
    });
    let mut responses = Vec::new();
    for handle in requests.collect::<Vec<_>>() {
        responses.push(handle.await.unwrap());
    }
    server.cancel_job(&blocker);

    let accepted: Vec<_> = responses.iter().filter(|response| response.status == StatusCode::ACCEPTED).collect();
    assert_eq!(accepted.len(), 1, "statuses: {:?}", responses.iter().map(|response| response.status).collect::<Vec<_>>());
    let winner = job_id(&accepted[0].json());
    for response in responses.iter().filter(|response| response.status != StatusCode::ACCEPTED) {
        assert_eq!(response.status, StatusCode::CONFLICT, "{}", response.describe());
        let body = response.json();
        assert_eq!(body["jobID"], winner.as_str(), "the 409 names the build to attach to: {body}");
        assert!(body["message"].as_str().unwrap().contains("queued"), "{body}");
    }
    let finished = server.wait_finished(&winner).await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_beyond_limit_queue_in_order() {
    let env = test_env();
    let names = [unique_name("http-fifo-a"), unique_name("http-fifo-b")];
    let _guards = names.iter().map(|name| TemplateGuard::new(&env, name)).collect::<Vec<_>>();
    let registry = SilentRegistry::start().await;
    let server = TestServer::start_with(import_config(&env), one_slot()).await;
    let blocker = start_blocker(&server, &registry).await;

    let mut ids = Vec::new();
    for name in &names {
        ids.push(job_id(&server.submit("/templates/build", name, &env.image).await.json()));
    }
    let queued = server.get("/templates/builds?status=queued").await.json();
    let blocking_post = server.submit("/templates", &names[0], &env.image).await;
    server.cancel_job(&blocker);
    let cancelled = server.wait_finished(&blocker).await;
    let first = server.wait_finished(&ids[0]).await;
    let second = server.wait_finished(&ids[1]).await;

    let queued_ids: Vec<&str> = queued.as_array().unwrap().iter().map(|job| job["jobID"].as_str().unwrap()).collect();
    assert_eq!(queued_ids, [ids[1].as_str(), ids[0].as_str()], "queued jobs, newest first");
    assert_eq!(blocking_post.status, StatusCode::CONFLICT, "{}", blocking_post.describe());
    assert_eq!(blocking_post.json()["jobID"], ids[0].as_str());
    assert_eq!(cancelled["status"], "failed");
    assert!(cancelled["error"].as_str().unwrap().contains("cancelled"), "{cancelled}");
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(second["status"], "succeeded", "{second}");
    let (first_finished, second_started) = (first["finishedAt"].as_str().unwrap(), second["startedAt"].as_str().unwrap());
    assert!(second_started >= first_finished, "the second build started at {second_started}, before the first finished at {first_finished}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_fails_and_keeps_logs() {
    let env = test_env();
    let name = unique_name("http-missing");
    let _guard = TemplateGuard::new(&env, &name);
    let server = TestServer::start().await;
    let image = format!("{}/coppice/{}:1", env.registry, unique_name("missing"));

    let accepted = server.submit("/templates/build", &name, &image).await;
    let id = job_id(&accepted.json());
    let failed = server.wait_finished(&id).await;
    let logs = server.get(&format!("/templates/builds/{id}/logs")).await.json();
    let stream = send(server.addr, Method::GET, &format!("/templates/builds/{id}/events"), &[], None).await;
    let events = parse_events(&read_event_stream(stream, Duration::from_secs(10)).await);
    let template = server.get(&format!("/templates/{name}")).await;

    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.describe());
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap_or_else(|| panic!("no error in {failed}"));
    assert!(error.contains("step pull failed"), "{error}");
    assert!(error.contains(&format!("buildah pull --os freebsd docker://{image}")), "{error}");
    assert!(error.contains("exited with code"), "{error}");
    assert!(failed.get("snapshot").is_none(), "{failed}");
    assert!(!seqs(&logs["logs"]).is_empty(), "a failed job keeps its logs: {logs}");
    assert_eq!(events.last().map(|event| event.json()["status"].clone()), Some(json!("failed")));
    assert_eq!(template.status, StatusCode::NOT_FOUND, "{}", template.describe());
    assert!(!dataset_exists(&format!("{}/{name}-template", env.jails)), "a failed build leaves no dataset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_copy_leaves_no_dataset() {
    let env = test_env();
    let name = unique_name("http-rsync-fails");
    let _guard = TemplateGuard::new(&env, &name);
    let tools = tempfile::tempdir().expect("failed to create a temporary directory");
    let rsync = fake_tool(tools.path(), "rsync", "echo 'rsync: simulated write failure' >&2\nexit 11");
    let import = ImportConfig { tools: coppice::steps::Tools { rsync, ..import_config(&env).tools }, ..import_config(&env) };
    let server = TestServer::start_with(import, JobsConfig::default()).await;

    let failed = server.submit("/templates", &name, &env.image).await;

    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", failed.describe());
    let body = failed.json();
    assert_eq!(body["code"], 500);
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("step rsync failed"), "{message}");
    assert!(message.contains("exited with code 11"), "{message}");
    assert!(message.contains("simulated write failure"), "{message}");
    let job = server.get(&format!("/templates/builds/{}", job_id(&body))).await.json();
    assert_eq!(job["status"], "failed", "{job}");
    assert!(!dataset_exists(&format!("{}/{name}-template", env.jails)), "cleanup destroyed the unfinished dataset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_resume_after_last_event_id() {
    let env = test_env();
    let name = unique_name("http-resume");
    let _guard = TemplateGuard::new(&env, &name);
    let server = TestServer::start().await;
    let id = job_id(&server.submit("/templates/build", &name, &env.image).await.json());
    let path = format!("/templates/builds/{id}/events");

    let first = send(server.addr, Method::GET, &path, &[], None).await;
    let full = parse_events(&read_event_stream(first, STREAM_TIMEOUT).await);
    let resume_after = full[full.len() / 2].id.unwrap_or_else(|| panic!("no id in the middle event: {full:?}"));
    let resumed = send(server.addr, Method::GET, &path, &[("last-event-id", &resume_after.to_string())], None).await;
    let resumed = parse_events(&read_event_stream(resumed, Duration::from_secs(10)).await);
    let past_end = send(server.addr, Method::GET, &path, &[("last-event-id", "999999")], None).await;
    let past_end = parse_events(&read_event_stream(past_end, Duration::from_secs(10)).await);

    let expected: Vec<_> = full.iter().filter(|event| event.id.is_none_or(|id| id > resume_after)).cloned().collect();
    assert_eq!(resumed, expected);
    assert_eq!(resumed.first().and_then(|event| event.id), Some(resume_after + 1));
    assert_eq!(past_end.len(), 1, "{past_end:?}");
    assert_eq!(past_end[0].event, "done");
}

/// One bad request and what the error response must contain.
struct BadInput {
    method: Method,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    status: StatusCode,
    message: &'static str,
}

fn bad(method: Method, path: impl Into<String>, status: StatusCode, message: &'static str) -> BadInput {
    BadInput { method, path: path.into(), headers: Vec::new(), body: "", status, message }
}

fn bad_json(path: &str, body: &'static str, status: StatusCode, message: &'static str) -> BadInput {
    BadInput { headers: vec![("content-type", "application/json")], body, ..bad(Method::POST, path, status, message) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_return_json_errors() {
    let env = test_env();
    let server = TestServer::start().await;
    let missing = format!("{}/coppice/{}:1", env.registry, unique_name("missing"));
    let id = job_id(&server.submit("/templates/build", &unique_name("http-bad"), &missing).await.json());
    server.wait_finished(&id).await;
    let unknown = uuid::Uuid::new_v4();
    let too_big: &'static str = Box::leak(format!("{{\"name\": \"{}\"}}", "x".repeat(70_000)).into_boxed_str());

    let cases = [
        bad_json("/templates/build", "{\"name\": ", StatusCode::BAD_REQUEST, "invalid JSON"),
        bad_json("/templates/build", "[1, 2]", StatusCode::BAD_REQUEST, "expected a JSON object"),
        bad_json("/templates/build", "{\"from\": \"oci:127.0.0.1:5000/a\"}", StatusCode::BAD_REQUEST, "missing field \"name\""),
        bad_json("/templates/build", "{\"name\": \"ok\"}", StatusCode::BAD_REQUEST, "missing field \"from\""),
        bad_json("/templates/build", "{\"name\": \"Bad Name\", \"from\": \"oci:127.0.0.1:5000/a\"}", StatusCode::BAD_REQUEST, "invalid field \"name\""),
        bad_json("/templates/build", "{\"name\": \"ok\", \"from\": \"quay.io/a/b\"}", StatusCode::BAD_REQUEST, "invalid field \"from\""),
        bad_json("/templates/build", "{\"name\": \"ok\", \"from\": 5}", StatusCode::BAD_REQUEST, "invalid field \"from\": expected a string"),
        bad_json("/templates", "{\"name\": \"ok\"}", StatusCode::BAD_REQUEST, "missing field \"from\""),
        bad_json("/templates/build", too_big, StatusCode::PAYLOAD_TOO_LARGE, "larger than the limit of 65536 bytes"),
        BadInput { headers: vec![("content-type", "text/plain")], body: "{}", ..bad(Method::POST, "/templates/build", StatusCode::UNSUPPORTED_MEDIA_TYPE, "text/plain") },
        BadInput { body: "{}", ..bad(Method::POST, "/templates", StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type: application/json") },
        bad(Method::GET, "/nothing/here", StatusCode::NOT_FOUND, "no route for /nothing/here"),
        bad(Method::GET, format!("/templates/builds/{unknown}"), StatusCode::NOT_FOUND, "not found"),
        bad(Method::GET, "/templates/builds/not-a-uuid/logs", StatusCode::NOT_FOUND, "not found"),
        bad(Method::GET, format!("/templates/builds/{unknown}/events"), StatusCode::NOT_FOUND, "not found"),
        bad(Method::GET, "/templates/no-such-template", StatusCode::NOT_FOUND, "not found"),
        bad(Method::DELETE, "/templates", StatusCode::METHOD_NOT_ALLOWED, "use GET, POST"),
        bad(Method::GET, "/templates/builds?status=done", StatusCode::BAD_REQUEST, "status=\"done\""),
        bad(Method::GET, "/templates/builds?name=Bad", StatusCode::BAD_REQUEST, "invalid query parameter name"),
        bad(Method::GET, format!("/templates/builds/{id}/logs?limit=0"), StatusCode::BAD_REQUEST, "limit=\"0\""),
        bad(Method::GET, format!("/templates/builds/{id}/logs?limit=100000"), StatusCode::BAD_REQUEST, "from 1 to 10000"),
        bad(Method::GET, format!("/templates/builds/{id}/logs?since=yesterday"), StatusCode::BAD_REQUEST, "since=\"yesterday\""),
        bad(Method::GET, format!("/templates/builds/{id}/logs?after=1&since=2026-01-01T00:00:00Z"), StatusCode::BAD_REQUEST, "exclusive"),
        bad(Method::GET, format!("/templates/builds/{id}/logs?tail=5&limit=5"), StatusCode::BAD_REQUEST, "exclusive"),
        BadInput { headers: vec![("last-event-id", "abc")], ..bad(Method::GET, format!("/templates/builds/{id}/events"), StatusCode::BAD_REQUEST, "Last-Event-ID") },
    ];

    for case in cases {
        let body = (!case.body.is_empty()).then(|| bytes::Bytes::from_static(case.body.as_bytes()));
        let response = request(server.addr, case.method.clone(), &case.path, &case.headers, body).await;
        let described = response.describe();
        assert_eq!(response.status, case.status, "{described}");
        assert_eq!(response.header("content-type"), Some("application/json"), "{described}");
        let error = response.json();
        assert_eq!(error["code"], case.status.as_u16(), "{described}");
        assert!(error["message"].as_str().is_some_and(|message| message.contains(case.message)), "expected {:?} in {described}", case.message);
    }

    let not_allowed = [("/templates", Method::PUT, "GET, POST"), ("/templates/build", Method::DELETE, "GET, POST"), ("/templates/builds", Method::POST, "GET")];
    for (path, method, allow) in not_allowed {
        let response = request(server.addr, method, path, &[], None).await;
        assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED, "{}", response.describe());
        assert_eq!(response.header("allow"), Some(allow), "{}", response.describe());
    }

    let chunked = raw_exchange(
        server.addr,
        format!(
            "POST /templates/build HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            too_big.len(),
            too_big
        )
        .as_bytes(),
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "a chunked body over the limit without Content-Length: {chunked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_command_logs_listening_and_stops() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let env = test_env();
    let state = tempfile::tempdir().expect("failed to create the state directory");
    let mut child = Command::new(crate::support::coppice_bin())
        .args(["--jails-dataset", &env.jails, "--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start coppice serve");
    let guard = ChildGuard(child.id());
    let stderr = child.stderr.take().unwrap();

    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let address = loop {
        let line = lines_rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no `listening on` line; stderr so far:\n{}", seen.join("\n")));
        let record: Value = serde_json::from_str(&line).unwrap_or_else(|error| panic!("log line is not JSON ({error}): {line}"));
        seen.push(line);
        let message = record["fields"]["message"].as_str().unwrap_or_default();
        if let Some(address) = message.strip_prefix("listening on ") {
            assert_eq!(record["level"], "INFO", "{record}");
            break address.parse::<std::net::SocketAddr>().unwrap_or_else(|error| panic!("{address:?}: {error}"));
        }
    };

    let templates = request(address, Method::GET, "/templates", &[], None).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard.0 as i32), nix::sys::signal::Signal::SIGTERM).expect("failed to send SIGTERM");
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().expect("failed to wait for coppice serve");
    std::mem::forget(guard);

    assert!(address.ip().is_loopback(), "{address}");
    assert_eq!(templates.status, StatusCode::OK, "{}", templates.describe());
    assert!(templates.json().is_array(), "{}", templates.describe());
    assert!(status.success(), "coppice serve exited with {status} after SIGTERM");
}

/// Kills the child with this pid when a test fails before waiting for it.
struct ChildGuard(u32);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), nix::sys::signal::Signal::SIGKILL);
    }
}
