//! Build routes: `POST /templates/build` (async), `POST /templates` (blocking), and
//! reading jobs.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};

use super::request::{Query, read_json_object, required_string};
use super::response::{ApiError, Body, json, json_created};
use super::routes::App;
use crate::jobs::{FailureKind, JobFilter, JobId, JobStatus, JobView, job_path, template_path};
use crate::names::{ImageRef, TemplateName};

/// A template name whose URL `/templates/<name>` the job listing already uses.
const RESERVED_NAME: &str = "builds";

/// `POST /templates/build`: reserves the name, queues the import and returns `202` at once.
pub async fn create_build(app: &App, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (name, from) = read_build_request(request).await?;

    app.refresh_templates().await;
    let (job, view) = app.jobs().submit(name, from)?;

    Ok(json_created(StatusCode::ACCEPTED, &job_path(job.id()), &view))
}

/// `POST /templates/builds/:job_id/cancel`: stops a queued or running job. Returns `202`
/// with the job; a running job becomes `failed` once its cleanup is done.
pub fn cancel_build(app: &App, id: &str) -> Result<Response<Body>, ApiError> {
    let id = JobId::parse(id).ok_or_else(|| {
        ApiError::NotFound(format!("job {id:?} not found; a job id is a UUID as POST /templates/build returns it"))
    })?;

    let view = app.jobs().cancel(id)?;

    Ok(json(StatusCode::ACCEPTED, &view))
}

/// The `201` body of `POST /templates`.
#[derive(Serialize)]
struct CreatedTemplate {
    name: TemplateName,
    from: ImageRef,
    snapshot: Option<String>,
    #[serde(rename = "sizeBytes")]
    size_bytes: Option<u64>,
    #[serde(rename = "jobID")]
    job_id: JobId,
    #[serde(rename = "templateURL")]
    template_url: String,
}

/// `POST /templates`: the same submission as [`create_build`], then waits for the job.
/// A client that disconnects does not stop the job, which stays listed under its id.
pub async fn create_template(app: &App, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (name, from) = read_build_request(request).await?;

    app.refresh_templates().await;
    let (job, _) = app.jobs().submit(name, from)?;

    let view = tokio::select! {
        view = job.finished() => view,
        () = app.shutdown().cancelled() => {
            return Err(ApiError::Unavailable {
                message: format!("the server is shutting down before job {} finished; submit the build again once the server is back", job.id()),
                job: Some(job.id()),
            });
        }
    };

    if view.status != JobStatus::Succeeded {
        return Err(build_failed(view));
    }
    let template_url = template_path(&view.name);
    let created = CreatedTemplate {
        name: view.name,
        from: view.from,
        snapshot: view.snapshot,
        size_bytes: view.size_bytes,
        job_id: view.job_id,
        template_url,
    };
    Ok(json_created(StatusCode::CREATED, &created.template_url, &created))
}

fn build_failed(view: JobView) -> ApiError {
    let status = match view.failure {
        Some(FailureKind::InvalidName) => StatusCode::BAD_REQUEST,
        Some(FailureKind::AlreadyExists) => StatusCode::CONFLICT,
        Some(FailureKind::TimedOut) => StatusCode::GATEWAY_TIMEOUT,
        Some(FailureKind::Cancelled) => StatusCode::CONFLICT,
        Some(FailureKind::Interrupted) => StatusCode::SERVICE_UNAVAILABLE,
        Some(FailureKind::StepFailed | FailureKind::Internal) | None => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let error = view.error.unwrap_or_else(|| "the build failed without an error message".to_owned());
    ApiError::BuildFailed {
        status,
        message: format!("build of template {} failed: {error}; its logs are at {}", view.name, view.logs_url),
        job: view.job_id,
    }
}

async fn read_build_request(request: Request<Incoming>) -> Result<(TemplateName, ImageRef), ApiError> {
    let object = read_json_object(request).await?;
    parse_build_request(&object)
}

fn parse_build_request(object: &Map<String, Value>) -> Result<(TemplateName, ImageRef), ApiError> {
    let name = required_string(object, "name")?;
    let from = required_string(object, "from")?;

    let name = TemplateName::parse(name).map_err(|error| ApiError::BadRequest(format!("invalid field \"name\": {error}")))?;
    if name.as_str() == RESERVED_NAME {
        return Err(ApiError::BadRequest(format!(
            "invalid field \"name\": {RESERVED_NAME:?} is reserved because /templates/{RESERVED_NAME} lists build jobs; choose another name"
        )));
    }
    let from = ImageRef::parse_source(from).map_err(|error| ApiError::BadRequest(format!("invalid field \"from\": {error}")))?;

    Ok((name, from))
}

/// `GET /templates/builds?status=&name=`: jobs, newest first.
pub fn list_builds(app: &App, query: &Query) -> Result<Response<Body>, ApiError> {
    let status = match query.get("status") {
        Some(value) => Some(JobStatus::parse(value).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid query parameter status={value:?}: expected one of queued, running, succeeded, failed"
            ))
        })?),
        None => None,
    };
    let name = match query.get("name") {
        Some(value) => Some(
            TemplateName::parse(value)
                .map_err(|error| ApiError::BadRequest(format!("invalid query parameter name: {error}")))?,
        ),
        None => None,
    };

    Ok(json(StatusCode::OK, &app.jobs().list(&JobFilter { status, name })))
}

/// `GET /templates/builds/:job_id`.
pub fn get_build(app: &App, id: &str) -> Result<Response<Body>, ApiError> {
    let job = app.job(id)?;
    Ok(json(StatusCode::OK, &job.view()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<(TemplateName, ImageRef), ApiError> {
        let Value::Object(object) = value else { panic!("test input must be an object") };
        parse_build_request(&object)
    }

    #[test]
    fn build_request_accepted() {
        let (name, from) = parse(json!({"name": "fbsd14-min", "from": "oci:127.0.0.1:5000/coppice/sample:14", "extra": 1})).unwrap();

        assert_eq!(name.as_str(), "fbsd14-min");
        assert_eq!(from.source(), "oci:127.0.0.1:5000/coppice/sample:14");
    }

    #[test]
    fn build_request_errors_name_the_field() {
        let cases = [
            (json!({"from": "oci:127.0.0.1:5000/a"}), "missing field \"name\""),
            (json!({"name": "web"}), "missing field \"from\""),
            (json!({"name": 5, "from": "oci:127.0.0.1:5000/a"}), "invalid field \"name\": expected a string, found a number"),
            (json!({"name": "Web", "from": "oci:127.0.0.1:5000/a"}), "invalid field \"name\""),
            (json!({"name": "web", "from": "docker://x/y"}), "invalid field \"from\""),
            (json!({"name": "builds", "from": "oci:127.0.0.1:5000/a"}), "reserved"),
        ];
        for (body, expected) in cases {
            let error = parse(body.clone()).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{body}");
            assert!(error.to_string().contains(expected), "{body}: {error}");
        }
    }
}
