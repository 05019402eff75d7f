//! Part 4: `GET .../logs?limit=200&since=...` under load, against the health check on
//! the same server in the same run, and the cost of `since` and `after` queries at
//! 1,000 and 100,000 retained lines.
//!
//! The load is a fixed number of keep-alive connections on loopback, each sending its
//! next request as soon as the last response is read, for a fixed time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::Settings;
use crate::report::{Row, median};
use crate::server::{ServeLimits, Server, connect, runtime, submit, wait_finished};

const CONNECTIONS: usize = 16;
const HEALTH_RATIO_TARGET: f64 = 0.5;
/// Rate at 100,000 retained lines over the rate at 1,000; below 1 only by noise.
const GROWTH_RATIO_TARGET: f64 = 0.8;

pub fn run(settings: &Settings) -> Vec<Row> {
    // Short rounds, alternated often, so that a slow moment of the shared machine hits
    // both sides of a ratio rather than one.
    let duration = Duration::from_secs(settings.scale(2, 1));
    let runs = settings.runs(7, 1);
    eprintln!("logs: {runs} rounds of {} s with {CONNECTIONS} connections per measurement", duration.as_secs());
    let runtime = runtime();

    let mut rows = against_health(settings, &runtime, duration, runs);
    rows.extend(growth(settings, &runtime, duration, runs));
    rows
}

/// A server whose one finished job retains `lines` lines, and a mid-log cursor of each kind.
struct LoadedServer {
    server: Server,
    job: String,
    middle_seq: u64,
    middle_ts: String,
}

fn loaded_server(settings: &Settings, runtime: &tokio::runtime::Runtime, lines: u64, limits: ServeLimits) -> LoadedServer {
    let server = Server::start(&settings.coppice, limits);
    server.set_output(&format!("{lines} --buffered"));
    runtime.block_on(async {
        let mut connection = connect(server.address).await.expect("connect");
        let job = submit(&mut connection, "logs-job").await;
        let view = wait_finished(&mut connection, &job, Duration::from_secs(120)).await;
        assert_eq!(view["status"], "succeeded", "the stand-in job failed: {view}");

        let tail = connection.get(&format!("/templates/builds/{job}/logs?tail=1")).await.expect("GET logs").json();
        let last_seq = tail["logs"][0]["seq"].as_u64().expect("the last seq");
        let middle_seq = last_seq - (lines / 2);
        let page = connection.get(&format!("/templates/builds/{job}/logs?after={}&limit=1", middle_seq - 1)).await.expect("GET logs").json();
        let middle_ts = page["logs"][0]["ts"].as_str().expect("a ts").to_owned();
        LoadedServer { server, job, middle_seq, middle_ts }
    })
}

fn against_health(settings: &Settings, runtime: &tokio::runtime::Runtime, duration: Duration, runs: usize) -> Vec<Row> {
    let loaded = loaded_server(settings, runtime, 10_000, ServeLimits::default());
    let address = loaded.server.address;
    let health = runtime.block_on(async {
        let mut connection = connect(address).await.expect("connect");
        let status = connection.get("/healthz").await.map(|response| response.status).unwrap_or(0);
        // NOTE: a server without /healthz is compared with GET /templates instead.
        if status == 200 { "/healthz" } else { "/templates" }
    });
    let logs = format!("/templates/builds/{}/logs?limit=200&since={}", loaded.job, loaded.middle_ts);
    // The same route with one line in the response: what the route costs apart from the
    // 200 lines it serializes and sends.
    let one_line = format!("/templates/builds/{}/logs?limit=1&since={}", loaded.job, loaded.middle_ts);
    let response_bytes = runtime.block_on(async {
        let mut connection = connect(address).await.expect("connect");
        connection.get(&logs).await.expect("GET logs").body.len()
    });

    let paths = [health, logs.as_str(), one_line.as_str()];
    let mut rates = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..runs {
        let order = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for index in order {
            rates[index].push(runtime.block_on(load(address, paths[index], duration)));
        }
    }
    let ratio_to_health = |index: usize| -> f64 {
        let ratios: Vec<f64> = rates[index].iter().zip(&rates[0]).map(|(logs, health)| logs / health).collect();
        median(&ratios)
    };
    let ratio = ratio_to_health(1);
    vec![
        Row::from_samples("4 logs", format!("GET {health}, {CONNECTIONS} connections"), &rates[0], per_second),
        Row::from_samples("4 logs", format!("GET logs?limit=200&since=<middle> of 10000 lines ({response_bytes} bytes)"), &rates[1], per_second)
            .ratio(ratio)
            .target(format!("ratio ≥ {HEALTH_RATIO_TARGET}"), ratio >= HEALTH_RATIO_TARGET),
        Row::from_samples("4 logs", "GET logs?limit=1&since=<middle> (route cost without the payload)", &rates[2], per_second)
            .ratio(ratio_to_health(2)),
    ]
}

fn growth(settings: &Settings, runtime: &tokio::runtime::Runtime, duration: Duration, runs: usize) -> Vec<Row> {
    let sizes = [1_000u64, 100_000];
    let servers: Vec<LoadedServer> = sizes
        .iter()
        .map(|lines| {
            let limits = ServeLimits { log_lines: *lines as usize + 100, log_bytes: 1 << 30, ..ServeLimits::default() };
            loaded_server(settings, runtime, *lines, limits)
        })
        .collect();

    let mut rows = Vec::new();
    for cursor in ["since", "after"] {
        let path = |loaded: &LoadedServer| match cursor {
            "since" => format!("/templates/builds/{}/logs?limit=200&since={}", loaded.job, loaded.middle_ts),
            _ => format!("/templates/builds/{}/logs?limit=200&after={}", loaded.job, loaded.middle_seq),
        };
        let mut rates = [Vec::new(), Vec::new()];
        for round in 0..runs {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for index in order {
                let loaded = &servers[index];
                rates[index].push(runtime.block_on(load(loaded.server.address, &path(loaded), duration)));
            }
        }
        let ratios: Vec<f64> = rates[1].iter().zip(&rates[0]).map(|(big, small)| big / small).collect();
        let ratio = median(&ratios);
        rows.push(Row::from_samples("4 logs", format!("{cursor}=<middle>&limit=200, 1000 retained"), &rates[0], per_second));
        rows.push(
            Row::from_samples("4 logs", format!("{cursor}=<middle>&limit=200, 100000 retained"), &rates[1], per_second)
                .ratio(ratio)
                .target(format!("ratio ≥ {GROWTH_RATIO_TARGET}"), ratio >= GROWTH_RATIO_TARGET),
        );
    }
    rows
}

/// Sends GETs of `path` on `CONNECTIONS` connections for `duration`; returns requests per second.
async fn load(address: SocketAddr, path: &str, duration: Duration) -> f64 {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut connection = connect(address).await.expect("connect a load connection");
            let mut done = 0u64;
            while Instant::now() < deadline {
                let response = connection.get(&path).await.expect("a response");
                assert_eq!(response.status, 200, "GET {path}: {}", response.text());
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("a load task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn per_second(value: f64) -> String {
    format!("{value:.0} req/s")
}
