//! The one body type of every route, JSON responses, and the API's error type.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue, LOCATION};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;

use crate::jobs::{CancelError, JobId, SubmitError};

/// The response body of every route: a whole JSON document or an SSE stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// Serializes `value` as the body of a `status` response.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes(status, bytes),
        Err(error) => ApiError::Internal(format!("failed to encode the response as JSON: {error}")).into_response(),
    }
}

/// Like [`json`], with a `Location` header naming the resource the request created.
pub fn json_created<T: Serialize + ?Sized>(status: StatusCode, location: &str, value: &T) -> Response<Body> {
    let mut response = json(status, value);
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

fn json_bytes(status: StatusCode, mut bytes: Vec<u8>) -> Response<Body> {
    bytes.push(b'\n');
    let mut response = Response::new(full_body(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Errors of the HTTP layer. Each variant has one status code, and every error is
/// sent as `{"code": <status>, "message": "..."}`, plus `jobID` where a job is involved.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),

    #[error("{0}")]
    NotFound(String),

    #[error("missing or wrong X-API-Key header; send the key this server was started with")]
    Unauthorized,

    #[error("method {method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed { method: Method, path: String, allow: &'static str },

    #[error("{message}")]
    Conflict { message: String, job: Option<JobId> },

    #[error("request body is larger than the limit of {limit} bytes; send a smaller JSON document")]
    PayloadTooLarge { limit: usize },

    #[error("unsupported content type {found}; send the body as JSON with `Content-Type: application/json`")]
    UnsupportedMediaType { found: String },

    /// A blocking build that ended in failure.
    #[error("{message}")]
    BuildFailed { status: StatusCode, message: String, job: JobId },

    #[error("{message}")]
    Unavailable { message: String, job: Option<JobId> },

    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    message: &'a str,
    #[serde(rename = "jobID", skip_serializing_if = "Option::is_none")]
    job_id: Option<JobId>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BuildFailed { status, .. } => *status,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn job(&self) -> Option<JobId> {
        match self {
            ApiError::Conflict { job, .. } | ApiError::Unavailable { job, .. } => *job,
            ApiError::BuildFailed { job, .. } => Some(*job),
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let message = self.to_string();
        let body = ErrorBody { code: status.as_u16(), message: &message, job_id: self.job() };
        // serde_json fails only on non-string map keys or a failing Serialize impl, and
        // this struct has neither.
        let bytes = serde_json::to_vec(&body).unwrap_or_default();

        let mut response = json_bytes(status, bytes);
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<CancelError> for ApiError {
    fn from(error: CancelError) -> Self {
        match &error {
            CancelError::NotFound(_) => ApiError::NotFound(error.to_string()),
            CancelError::AlreadyFinished(view) => ApiError::Conflict { message: error.to_string(), job: Some(view.job_id) },
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match &error {
            SubmitError::InvalidName(_) => ApiError::BadRequest(format!("invalid field \"name\": {error}")),
            SubmitError::TemplateExists { .. } => ApiError::Conflict { message: error.to_string(), job: None },
            SubmitError::BuildInProgress { job, .. } => ApiError::Conflict { message: error.to_string(), job: Some(*job) },
            SubmitError::ShuttingDown => ApiError::Unavailable { message: error.to_string(), job: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body_text(response: Response<Body>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn error_body_has_code_and_message() {
        let response = ApiError::NotFound("no job 1".to_owned()).into_response();

        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(body_text(response).await, "{\"code\":404,\"message\":\"no job 1\"}\n");
    }

    #[tokio::test]
    async fn method_not_allowed_sets_allow() {
        let error = ApiError::MethodNotAllowed { method: Method::DELETE, path: "/templates".to_owned(), allow: "GET, POST" };

        let response = error.into_response();

        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET, POST");
    }

    #[tokio::test]
    async fn conflict_carries_job_id() {
        let job = JobId::parse("8b5c0f6e-7d1a-4c1e-9a7e-2f0a7f9e1c3d").unwrap();

        let response = ApiError::Conflict { message: "busy".to_owned(), job: Some(job) }.into_response();

        assert_eq!(
            body_text(response).await,
            "{\"code\":409,\"message\":\"busy\",\"jobID\":\"8b5c0f6e-7d1a-4c1e-9a7e-2f0a7f9e1c3d\"}\n"
        );
    }
}
