//! `GET /templates/builds/:job_id/logs`: a page of a job's retained log lines.

use chrono::{DateTime, Utc};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::request::Query;
use super::response::{ApiError, Body, json};
use crate::jobs::{Job, LogCursor, LogWindow};
use crate::line::LogLine;

/// Lines returned when the request sets neither `limit` nor `tail`.
pub const DEFAULT_LIMIT: u64 = 1_000;

/// The largest `limit` or `tail`, equal to the default number of retained lines.
pub const MAX_LIMIT: u64 = 10_000;

#[derive(Serialize)]
struct LogsBody<'a> {
    logs: &'a [LogLine],
    truncated: bool,
}

pub fn get_logs(job: &Job, query: &Query) -> Result<Response<Body>, ApiError> {
    let (cursor, window) = parse_logs_query(query)?;

    let page = job.log().query(cursor, window);

    Ok(json(StatusCode::OK, &LogsBody { logs: &page.lines, truncated: page.truncated }))
}

/// Reads `since` or `after` (which lines match) and `limit` or `tail` (which of them
/// to return). Each pair is exclusive, so a request cannot be read two ways.
fn parse_logs_query(query: &Query) -> Result<(LogCursor, LogWindow), ApiError> {
    let after = query.number("after", 0, u64::MAX)?;
    let since = query.get("since").map(parse_since).transpose()?;
    let cursor = match (since, after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "query parameters since and after are exclusive: use since=<RFC 3339 time> or after=<seq>".to_owned(),
            ));
        }
        (Some(since), None) => LogCursor::Since(since),
        (None, Some(after)) => LogCursor::AfterSeq(after),
        (None, None) => LogCursor::Start,
    };

    let limit = query.number("limit", 1, MAX_LIMIT)?;
    let tail = query.number("tail", 1, MAX_LIMIT)?;
    let window = match (limit, tail) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "query parameters limit and tail are exclusive: limit=N returns the oldest N matching lines, tail=N the newest N"
                    .to_owned(),
            ));
        }
        (_, Some(tail)) => LogWindow::Last(to_count(tail)),
        (limit, None) => LogWindow::First(to_count(limit.unwrap_or(DEFAULT_LIMIT))),
    };

    Ok((cursor, window))
}

fn parse_since(value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value).map(|ts| ts.with_timezone(&Utc)).map_err(|error| {
        ApiError::BadRequest(format!(
            "invalid query parameter since={value:?}: {error}; expected an RFC 3339 time such as 2026-04-25T12:00:00Z (write '+' in an offset as %2B)"
        ))
    })
}

/// Converts a count already checked against [`MAX_LIMIT`], which fits any `usize`.
fn to_count(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<(LogCursor, LogWindow), ApiError> {
        parse_logs_query(&Query::parse(Some(query)))
    }

    #[test]
    fn defaults_to_all_lines_first_page() {
        assert_eq!(parse("").unwrap(), (LogCursor::Start, LogWindow::First(1_000)));
    }

    #[test]
    fn reads_cursor_and_window() {
        let since = DateTime::parse_from_rfc3339("2026-04-25T12:00:00Z").unwrap().with_timezone(&Utc);

        assert_eq!(parse("limit=200&since=2026-04-25T12:00:00Z").unwrap(), (LogCursor::Since(since), LogWindow::First(200)));
        assert_eq!(parse("after=17&tail=5").unwrap(), (LogCursor::AfterSeq(17), LogWindow::Last(5)));
        assert_eq!(parse("since=2026-04-25T14:00:00%2B02:00").unwrap().0, LogCursor::Since(since));
    }

    #[test]
    fn rejects_bad_values_naming_the_parameter() {
        let cases = [
            ("limit=0", "limit=\"0\""),
            ("limit=10001", "limit=\"10001\""),
            ("limit=abc", "limit=\"abc\""),
            ("tail=-1", "tail=\"-1\""),
            ("after=x", "after=\"x\""),
            ("since=yesterday", "since=\"yesterday\""),
            ("since=2026-04-25T12:00:00Z&after=1", "since and after are exclusive"),
            ("limit=1&tail=1", "limit and tail are exclusive"),
        ];
        for (query, expected) in cases {
            let error = parse(query).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{query}");
            assert!(error.to_string().contains(expected), "{query}: {error}");
        }
    }
}
