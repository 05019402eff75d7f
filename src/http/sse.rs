//! Server-Sent Events: an event encoder that cannot emit a broken frame, and a body
//! that produces each frame only when the connection is ready to send it.
//!
//! Frames follow the WHATWG HTML "Server-sent events" format: `field: value` lines
//! ending in `\n` and a blank line after each event. A field value never contains CR
//! or LF, because either would end the field early. Multi-line data becomes several
//! `data:` lines. The client joins those with `\n`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::response::Body;

/// Time without an event after which a comment is sent, so that proxies and clients
/// do not close an idle stream.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// The keep-alive frame: a comment line, which clients ignore.
pub const KEEP_ALIVE_FRAME: &[u8] = b": keep-alive\n\n";

/// One event. Build it with [`Event::new`], then set `id` and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    name: &'static str,
    id: Option<u64>,
    data: Vec<String>,
}

impl Event {
    /// Starts an event of type `name`.
    ///
    /// # Panics
    ///
    /// When `name` contains CR, LF or NUL. Event names are constants of this crate,
    /// so that is a bug here, not bad input.
    pub fn new(name: &'static str) -> Self {
        assert!(!name.contains(['\r', '\n', '\0']), "SSE event name {name:?} contains CR, LF or NUL");
        Self { name, id: None, data: Vec::new() }
    }

    /// Sets the event id, which the client sends back as `Last-Event-ID` when it reconnects.
    pub fn id(mut self, id: u64) -> Self {
        self.id = Some(id);
        self
    }

    /// Appends `text` as data, one `data:` line per line of `text`. A line ends at
    /// `\r\n`, `\r` or `\n`, as the SSE format reads them.
    pub fn data(mut self, text: &str) -> Self {
        self.data.extend(split_lines(text).map(str::to_owned));
        self
    }

    /// Appends `value` as compact JSON on one `data:` line. serde_json escapes every
    /// control character inside strings, so the JSON never contains CR or LF.
    pub fn json_data<T: Serialize>(mut self, value: &T) -> Result<Self, serde_json::Error> {
        self.data.push(serde_json::to_string(value)?);
        Ok(self)
    }

    pub fn encode(&self) -> Bytes {
        let mut frame = String::new();
        self.write_to(&mut frame);
        Bytes::from(frame)
    }

    pub fn write_to(&self, frame: &mut String) {
        frame.push_str("event: ");
        frame.push_str(self.name);
        frame.push('\n');
        if let Some(id) = self.id {
            // `fmt::Write` for String never returns an error.
            let _ = writeln!(frame, "id: {id}");
        }
        for line in &self.data {
            frame.push_str("data: ");
            frame.push_str(line);
            frame.push('\n');
        }
        frame.push('\n');
    }
}

/// Writes one event whose data is JSON serialized elsewhere, such as a log line that
/// many streams share, without copying it into an [`Event`] first.
///
/// Compact JSON from serde_json escapes every control character, so it never contains
/// CR or LF. Text that does anyway goes through [`Event::data`], which splits it into
/// several `data:` lines, so the frame stays intact.
pub fn write_json_event(frame: &mut String, name: &'static str, id: u64, json: &str) {
    if json.bytes().any(|byte| byte == b'\r' || byte == b'\n') {
        Event::new(name).id(id).data(json).write_to(frame);
        return;
    }
    debug_assert!(!name.contains(['\r', '\n', '\0']), "SSE event name {name:?} contains CR, LF or NUL");
    frame.push_str("event: ");
    frame.push_str(name);
    // `fmt::Write` for String never returns an error.
    let _ = write!(frame, "\nid: {id}\ndata: ");
    frame.push_str(json);
    frame.push_str("\n\n");
}

/// Writes `text` as comment lines, one `:` line per line of text. Clients ignore them.
pub fn write_comment(frame: &mut String, text: &str) {
    for line in split_lines(text) {
        frame.push_str(": ");
        frame.push_str(line);
        frame.push('\n');
    }
    frame.push('\n');
}

/// Splits at `\r\n`, `\r` and `\n`. An empty text is one empty line.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            Some(end) => {
                let after = if current[end..].starts_with("\r\n") { end + 2 } else { end + 1 };
                rest = Some(&current[after..]);
                Some(&current[..end])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// A state machine that yields the next SSE frame, or `None` to end the stream.
pub trait FrameSource: Send + Sized + 'static {
    fn next_frame(self) -> impl Future<Output = Option<(Bytes, Self)>> + Send;
}

type NextFrame<S> = Pin<Box<dyn Future<Output = Option<(Bytes, S)>> + Send>>;

/// A response body that polls its [`FrameSource`] for a frame only when hyper polls the
/// body, so a slow client delays only its own stream and nothing queues up for it.
pub struct SseBody<S> {
    next: Option<NextFrame<S>>,
}

impl<S: FrameSource> SseBody<S> {
    pub fn new(source: S) -> Self {
        Self { next: Some(Box::pin(source.next_frame())) }
    }
}

impl<S: FrameSource> HttpBody for SseBody<S> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let Some(next) = this.next.as_mut() else {
            return Poll::Ready(None);
        };

        match next.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.next = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some((bytes, source))) => {
                this.next = Some(Box::pin(source.next_frame()));
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none()
    }
}

/// Builds a `200` response streaming `source` with the SSE headers. `X-Accel-Buffering: no`
/// stops nginx from buffering the stream.
pub fn sse_response<S: FrameSource>(source: S) -> Response<Body> {
    let mut response = Response::new(SseBody::new(source).boxed_unsync());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_with_id_and_one_line() {
        let event = Event::new("log").id(7).data("hello");

        assert_eq!(&event.encode()[..], b"event: log\nid: 7\ndata: hello\n\n");
    }

    #[test]
    fn json_event_is_written_as_is() {
        let mut frame = String::new();

        write_json_event(&mut frame, "log", 9, r#"{"text":"a\nb"}"#);

        assert_eq!(frame, "event: log\nid: 9\ndata: {\"text\":\"a\\nb\"}\n\n");
    }

    #[test]
    fn json_event_with_raw_newline_is_split() {
        let mut frame = String::new();

        write_json_event(&mut frame, "log", 9, "{\n}");

        assert_eq!(frame, "event: log\nid: 9\ndata: {\ndata: }\n\n");
    }

    #[test]
    fn data_with_cr_and_lf_becomes_several_lines() {
        let event = Event::new("log").data("one\r\ntwo\rthree\nfour");

        assert_eq!(&event.encode()[..], b"event: log\ndata: one\ndata: two\ndata: three\ndata: four\n\n");
    }

    #[test]
    fn data_keeps_empty_and_trailing_lines() {
        let event = Event::new("log").data("a\n\nb\n");

        assert_eq!(&event.encode()[..], b"event: log\ndata: a\ndata: \ndata: b\ndata: \n\n");
    }

    #[test]
    fn empty_data_is_one_empty_line() {
        let event = Event::new("ping").data("");

        assert_eq!(&event.encode()[..], b"event: ping\ndata: \n\n");
    }

    #[test]
    fn json_data_stays_on_one_line() {
        #[derive(Serialize)]
        struct Line<'a> {
            text: &'a str,
        }

        let event = Event::new("log").id(3).json_data(&Line { text: "a\r\nb\rc" }).unwrap();

        assert_eq!(&event.encode()[..], b"event: log\nid: 3\ndata: {\"text\":\"a\\r\\nb\\rc\"}\n\n");
    }

    #[test]
    fn comment_lines_are_split() {
        let mut frame = String::new();

        write_comment(&mut frame, "skipped\r\n3 lines");

        assert_eq!(frame, ": skipped\n: 3 lines\n\n");
    }

    #[test]
    #[should_panic(expected = "contains CR, LF or NUL")]
    fn event_name_with_newline_panics() {
        let _ = Event::new("log\ndata: forged");
    }
}
