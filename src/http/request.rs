//! Reading request input: JSON bodies under a size limit, and query strings.

use std::collections::HashMap;

use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde_json::{Map, Value};

use super::response::ApiError;

/// The largest request body accepted, in bytes. A build request is two short strings.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Reads a JSON object body: 415 unless the content type is JSON, 413 over
/// [`MAX_BODY_BYTES`], and 400 when the body is not a JSON object.
pub async fn read_json_object(request: Request<Incoming>) -> Result<Map<String, Value>, ApiError> {
    check_content_type(&request)?;

    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge { limit: MAX_BODY_BYTES });
    }

    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::PayloadTooLarge { limit: MAX_BODY_BYTES });
        }
        Err(error) => return Err(ApiError::BadRequest(format!("failed to read the request body: {error}"))),
    };

    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(ApiError::BadRequest(format!(
            "invalid request body: expected a JSON object such as {{\"name\": ..., \"from\": ...}}, found {}",
            json_type(&other)
        ))),
        Err(error) => Err(ApiError::BadRequest(format!("invalid JSON in the request body: {error}"))),
    }
}

fn check_content_type(request: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(value) = request.headers().get(CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType { found: "(none)".to_owned() });
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType { found: format!("{text:?}") })
    }
}

/// Returns the string value of a required body field, naming the field when it is
/// missing or not a string.
pub fn required_string<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match object.get(field) {
        Some(Value::String(value)) => Ok(value),
        Some(other) => Err(ApiError::BadRequest(format!("invalid field \"{field}\": expected a string, found {}", json_type(other)))),
        None => Err(ApiError::BadRequest(format!("missing field \"{field}\" in the request body"))),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The decoded parameters of a query string. A repeated parameter keeps its last value.
pub struct Query {
    params: HashMap<String, String>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        let params = form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
        Self { params }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Parses an optional unsigned number, rejecting values outside `min..=max`.
    pub fn number(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        match value.parse::<u64>() {
            Ok(number) if (min..=max).contains(&number) => Ok(Some(number)),
            _ => Err(ApiError::BadRequest(format!(
                "invalid query parameter {name}={value:?}: expected a whole number from {min} to {max}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decodes_percent_and_plus() {
        let query = Query::parse(Some("since=2026-04-25T12%3A00%3A00%2B02%3A00&name=a+b"));

        assert_eq!(query.get("since"), Some("2026-04-25T12:00:00+02:00"));
        assert_eq!(query.get("name"), Some("a b"));
        assert_eq!(query.get("missing"), None);
    }

    #[test]
    fn query_number_checks_range() {
        let query = Query::parse(Some("limit=0&tail=5&after=x"));

        assert!(query.number("limit", 1, 10).unwrap_err().to_string().contains("limit=\"0\""));
        assert_eq!(query.number("tail", 1, 10).unwrap(), Some(5));
        assert!(query.number("after", 0, u64::MAX).is_err());
        assert_eq!(query.number("absent", 1, 10).unwrap(), None);
    }
}
