//! `GET /templates/builds/:job_id/events`: a job's log as Server-Sent Events.
//!
//! The stream replays the retained lines after the client's cursor, follows live
//! lines from the same cursor (so nothing is sent twice or skipped between the two),
//! and ends with one `done` event carrying the final job.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::Response;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::response::{ApiError, Body};
use super::sse::{Event, FrameSource, KEEP_ALIVE_FRAME, KEEP_ALIVE_INTERVAL, sse_response, write_comment, write_json_event};
use crate::jobs::{EncodedBatch, EncodedLine, Followed, Job, LogFollower};

/// Lines sent in one frame at most, so a long replay goes out in pieces.
const LINES_PER_FRAME: usize = 256;

/// The SSE header a reconnecting client sends with the last `id` it received.
const LAST_EVENT_ID: &str = "last-event-id";

/// Builds the event stream of `job`, resuming after the `Last-Event-ID` header.
pub fn job_events(job: Arc<Job>, headers: &HeaderMap, shutdown: CancellationToken) -> Result<Response<Body>, ApiError> {
    let after = last_event_id(headers)?;
    let follower = job.log().follow(after);
    let done = Box::new(move || done_event(&job));

    Ok(sse_response(LogEvents::new(follower, done, shutdown, KEEP_ALIVE_INTERVAL)))
}

fn last_event_id(headers: &HeaderMap) -> Result<u64, ApiError> {
    let Some(value) = headers.get(LAST_EVENT_ID) else {
        return Ok(0);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid Last-Event-ID header {value:?}: expected the id of a log event, a whole number"
            ))
        })
}

fn done_event(job: &Job) -> Bytes {
    match Event::new("done").json_data(&job.view()) {
        Ok(event) => event.encode(),
        Err(error) => {
            tracing::error!(job = %job.id(), %error, "failed to encode the final job");
            Event::new("done").data("{}").encode()
        }
    }
}

/// The frame source of one event stream: a cursor into the job's log, the
/// keep-alive timer, and the final event still to send.
pub struct LogEvents {
    follower: LogFollower,
    done: Option<Box<dyn FnOnce() -> Bytes + Send>>,
    shutdown: CancellationToken,
    keep_alive: Duration,
    keep_alive_at: Instant,
}

enum Next {
    Shutdown,
    Log(Followed<EncodedBatch>),
    KeepAlive,
}

impl LogEvents {
    pub fn new(
        follower: LogFollower,
        done: Box<dyn FnOnce() -> Bytes + Send>,
        shutdown: CancellationToken,
        keep_alive: Duration,
    ) -> Self {
        Self { follower, done: Some(done), shutdown, keep_alive, keep_alive_at: Instant::now() + keep_alive }
    }
}

impl FrameSource for LogEvents {
    async fn next_frame(mut self) -> Option<(Bytes, Self)> {
        // `done` is taken when the final event is sent, so the stream ends after it.
        self.done.as_ref()?;

        let next = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Next::Shutdown,
            followed = self.follower.next_encoded(LINES_PER_FRAME) => Next::Log(followed),
            () = sleep_until(self.keep_alive_at) => Next::KeepAlive,
        };
        self.keep_alive_at = Instant::now() + self.keep_alive;

        let frame = match next {
            // The server winds jobs down before it closes streams, so the job is
            // usually final here; either way the client gets its current state.
            Next::Shutdown => (self.done.take()?)(),
            Next::KeepAlive => Bytes::from_static(KEEP_ALIVE_FRAME),
            Next::Log(Followed::Lines(batch)) => encode_lines(&batch.lines, batch.skipped),
            Next::Log(Followed::Closed) => (self.done.take()?)(),
        };
        Some((frame, self))
    }
}

/// Builds one frame from lines the log buffer serialized once for every stream, so a
/// stream only copies their JSON.
fn encode_lines(lines: &[EncodedLine], skipped: u64) -> Bytes {
    let size: usize = lines.iter().map(|line| line.json.len() + 40).sum();
    let mut frame = String::with_capacity(size);
    if skipped > 0 {
        write_comment(&mut frame, &format!("{skipped} lines were dropped from the job's log buffer before this client read them"));
    }
    for line in lines {
        write_json_event(&mut frame, "log", line.seq, &line.json);
    }
    Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeDelta};
    use http_body_util::BodyExt;

    use hyper::StatusCode;

    use super::*;
    use crate::http::sse::SseBody;
    use crate::jobs::{LogBuffer, LogLimits};
    use crate::line::{LogLine, SOURCE, Step, Stream};

    fn line(seq: u64) -> LogLine {
        LogLine {
            ts: DateTime::from_timestamp_micros(1_777_118_400_000_000).unwrap() + TimeDelta::microseconds(seq as i64),
            source: SOURCE.to_owned(),
            stream: Stream::Stderr,
            text: format!("line {seq}"),
            step: Step::Pull,
            seq,
        }
    }

    fn log_frame(seq: u64) -> String {
        format!(
            "event: log\nid: {seq}\ndata: {{\"ts\":\"2026-04-25T12:00:00.{seq:06}Z\",\"source\":\"template-build\",\"stream\":\"stderr\",\"text\":\"line {seq}\",\"step\":\"pull\",\"seq\":{seq}}}\n\n"
        )
    }

    const DONE: &str = "event: done\ndata: {}\n\n";

    fn body(buffer: &Arc<LogBuffer>, after: u64, shutdown: &CancellationToken) -> SseBody<LogEvents> {
        let done = Box::new(|| Event::new("done").data("{}").encode());
        SseBody::new(LogEvents::new(buffer.follow(after), done, shutdown.clone(), KEEP_ALIVE_INTERVAL))
    }

    async fn next_text(body: &mut SseBody<LogEvents>) -> Option<String> {
        let frame = body.frame().await?.unwrap();
        Some(String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap())
    }

    fn buffer_with(lines: u64) -> Arc<LogBuffer> {
        let buffer = Arc::new(LogBuffer::new(LogLimits::default()));
        for seq in 1..=lines {
            buffer.push(line(seq));
        }
        buffer
    }

    #[tokio::test(start_paused = true)]
    async fn finished_log_replays_then_done() {
        let buffer = buffer_with(2);
        buffer.close();
        let mut body = body(&buffer, 0, &CancellationToken::new());

        let replay = next_text(&mut body).await;
        let done = next_text(&mut body).await;
        let end = next_text(&mut body).await;

        assert_eq!(replay.unwrap(), format!("{}{}", log_frame(1), log_frame(2)));
        assert_eq!(done.as_deref(), Some(DONE));
        assert_eq!(end, None);
    }

    #[tokio::test(start_paused = true)]
    async fn resume_sends_only_later_lines() {
        let buffer = buffer_with(3);
        buffer.close();
        let mut body = body(&buffer, 2, &CancellationToken::new());

        assert_eq!(next_text(&mut body).await.unwrap(), log_frame(3));
        assert_eq!(next_text(&mut body).await.as_deref(), Some(DONE));
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_resets_on_event() {
        let buffer = buffer_with(0);
        let start = Instant::now();
        let writer = {
            let buffer = Arc::clone(&buffer);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(20)).await;
                buffer.push(line(1));
                tokio::time::sleep(Duration::from_secs(40)).await;
                buffer.close();
            })
        };
        let mut body = body(&buffer, 0, &CancellationToken::new());

        let mut frames = Vec::new();
        while let Some(text) = next_text(&mut body).await {
            frames.push((start.elapsed().as_secs(), text));
        }
        writer.await.unwrap();

        let keep_alive = String::from_utf8(KEEP_ALIVE_FRAME.to_vec()).unwrap();
        assert_eq!(
            frames,
            [
                (15, keep_alive.clone()),
                (20, log_frame(1)),
                (35, keep_alive.clone()),
                (50, keep_alive),
                (60, DONE.to_owned()),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_done_and_ends() {
        let buffer = buffer_with(1);
        let shutdown = CancellationToken::new();
        let mut body = body(&buffer, 0, &shutdown);

        let first = next_text(&mut body).await;
        shutdown.cancel();
        let last = next_text(&mut body).await;
        let after = next_text(&mut body).await;

        assert_eq!(first.unwrap(), log_frame(1));
        assert_eq!(last.as_deref(), Some(DONE));
        assert_eq!(after, None);
    }

    #[tokio::test(start_paused = true)]
    async fn evicted_lines_are_announced() {
        let buffer = Arc::new(LogBuffer::new(LogLimits { max_lines: 2, max_bytes: usize::MAX }));
        for seq in 1..=5 {
            buffer.push(line(seq));
        }
        buffer.close();
        let mut body = body(&buffer, 1, &CancellationToken::new());

        let replay = next_text(&mut body).await.unwrap();

        assert_eq!(
            replay,
            format!(": 2 lines were dropped from the job's log buffer before this client read them\n\n{}{}", log_frame(4), log_frame(5))
        );
    }

    #[test]
    fn last_event_id_parsing() {
        let mut headers = HeaderMap::new();
        assert_eq!(last_event_id(&headers).unwrap(), 0);

        headers.insert(LAST_EVENT_ID, "42".parse().unwrap());
        assert_eq!(last_event_id(&headers).unwrap(), 42);

        headers.insert(LAST_EVENT_ID, "abc".parse().unwrap());
        let error = last_event_id(&headers).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert!(error.to_string().contains("Last-Event-ID"), "{error}");
    }
}
