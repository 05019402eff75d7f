//! `GET /healthz`: the versions of buildah, rsync and zfs, or 503 naming what is missing.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::response::{ApiError, Body, json};
use crate::health::{self, Health};
use crate::import::ImportConfig;

/// How long one probe result is served. Load balancers poll health checks often, and
/// each probe starts four processes.
const PROBE_TTL: Duration = Duration::from_secs(5);

/// The last probe result and when it was taken. The lock is held during a probe, so
/// concurrent requests wait for one probe instead of each starting their own.
#[derive(Default)]
pub struct HealthCache {
    last: Mutex<Option<(Instant, Arc<Health>)>>,
}

impl HealthCache {
    async fn get(&self, config: &ImportConfig) -> Arc<Health> {
        let mut last = self.last.lock().await;
        if let Some((taken, health)) = last.as_ref()
            && taken.elapsed() < PROBE_TTL
        {
            return Arc::clone(health);
        }

        let health = Arc::new(health::probe(&config.tools, &config.jails).await);
        *last = Some((Instant::now(), Arc::clone(&health)));
        health
    }
}

#[derive(Serialize)]
struct HealthBody<'a> {
    status: &'static str,
    #[serde(flatten)]
    tools: &'a Health,
}

pub async fn healthz(cache: &HealthCache, config: &ImportConfig) -> Result<Response<Body>, ApiError> {
    let health = cache.get(config).await;

    if !health.is_ok() {
        let problems = health.problems().join("; ");
        tracing::warn!(%problems, "health check failed");
        return Err(ApiError::Unavailable {
            message: format!("not ready: {problems}; install the missing tools or fix the paths given with --buildah, --rsync and --zfs"),
            job: None,
        });
    }
    Ok(json(StatusCode::OK, &HealthBody { status: "ok", tools: &health }))
}
