//! The application state shared by every request, and routing as a match on the
//! method and the path segments.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use tokio_util::sync::CancellationToken;

use super::auth::ApiKey;
use super::builds::{cancel_build, create_build, create_template, get_build, list_builds};
use super::health::{HealthCache, healthz};
use super::events::job_events;
use super::logs::get_logs;
use super::request::Query;
use super::response::{ApiError, Body};
use super::templates::{get_template, list_templates};
use crate::jobs::{Job, JobId, JobRegistry};

/// The state every route reads: the job registry, which contains the template registry,
/// and the shutdown signal that ends waiting requests and open event streams.
pub struct App {
    jobs: Arc<JobRegistry>,
    shutdown: CancellationToken,
    api_key: Option<ApiKey>,
    health: HealthCache,
}

impl App {
    pub fn new(jobs: Arc<JobRegistry>, shutdown: CancellationToken) -> Self {
        Self { jobs, shutdown, api_key: None, health: HealthCache::default() }
    }

    /// Requires `X-API-Key` with this key on every route but `GET /healthz`.
    pub fn with_api_key(mut self, key: Option<ApiKey>) -> Self {
        self.api_key = key;
        self
    }

    pub fn jobs(&self) -> &Arc<JobRegistry> {
        &self.jobs
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Reloads the template registry from ZFS, so that templates made or destroyed
    /// outside this server (by `coppice import` or `zfs destroy`) show up at once. A
    /// failed reload keeps the last listing, which is logged.
    pub async fn refresh_templates(&self) {
        if let Err(error) = self.jobs.templates().reload(self.jobs.import_config()).await {
            tracing::warn!(%error, "failed to reload the templates from ZFS; serving the last listing");
        }
    }

    /// Looks up a job by the id in a URL path. An id that is not a UUID gets the same
    /// 404 as one that is no longer retained.
    pub fn job(&self, id: &str) -> Result<Arc<Job>, ApiError> {
        JobId::parse(id).and_then(|id| self.jobs.get(id)).ok_or_else(|| {
            ApiError::NotFound(format!(
                "job {id:?} not found; GET /templates/builds lists the jobs this server retains (finished jobs are dropped oldest first)"
            ))
        })
    }

    /// Handles one request. Errors become JSON error responses here, so every route
    /// returns the same error shape.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();

        let response = match self.route(request).await {
            Ok(response) => response,
            Err(error) => {
                if error.status().is_server_error() {
                    tracing::warn!(%method, %path, status = error.status().as_u16(), job = ?error.job().map(|id| id.to_string()), %error, "request failed");
                }
                error.into_response()
            }
        };

        tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
        response
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let path = request.uri().path().to_owned();
        let query = Query::parse(request.uri().query());
        let method = request.method().clone();
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(&path).split('/').collect();
        let not_allowed = |allow: &'static str| ApiError::MethodNotAllowed { method: method.clone(), path: path.clone(), allow };

        // The health check stays open so that a load balancer needs no key.
        if segments.as_slice() != ["healthz"]
            && let Some(key) = &self.api_key
            && !key.accepts(request.headers())
        {
            tracing::info!(%method, %path, "rejected a request without a valid API key");
            return Err(ApiError::Unauthorized);
        }

        match (segments.as_slice(), &method) {
            (["healthz"], &Method::GET) => healthz(&self.health, self.jobs.import_config()).await,
            (["healthz"], _) => Err(not_allowed("GET")),

            (["templates"], &Method::GET) => Ok(list_templates(self).await),
            (["templates"], &Method::POST) => create_template(self, request).await,
            (["templates"], _) => Err(not_allowed("GET, POST")),

            // A template named "build" is still readable, since this path is POST-only for builds.
            (["templates", "build"], &Method::POST) => create_build(self, request).await,
            (["templates", "build"], &Method::GET) => get_template(self, "build").await,
            (["templates", "build"], _) => Err(not_allowed("GET, POST")),

            (["templates", "builds"], &Method::GET) => list_builds(self, &query),
            (["templates", "builds"], _) => Err(not_allowed("GET")),

            (["templates", "builds", id], &Method::GET) => get_build(self, id),
            (["templates", "builds", _], _) => Err(not_allowed("GET")),

            (["templates", "builds", id, "logs"], &Method::GET) => get_logs(&*self.job(id)?, &query),
            (["templates", "builds", _, "logs"], _) => Err(not_allowed("GET")),

            (["templates", "builds", id, "events"], &Method::GET) => {
                job_events(self.job(id)?, request.headers(), self.shutdown.clone())
            }
            (["templates", "builds", _, "events"], _) => Err(not_allowed("GET")),

            (["templates", "builds", id, "cancel"], &Method::POST) => cancel_build(self, id),
            (["templates", "builds", _, "cancel"], _) => Err(not_allowed("POST")),

            (["templates", name], &Method::GET) => get_template(self, name).await,
            (["templates", _], _) => Err(not_allowed("GET")),

            _ => Err(ApiError::NotFound(format!(
                "no route for {path}; the API serves /templates, /templates/build, /templates/builds and /healthz"
            ))),
        }
    }
}
