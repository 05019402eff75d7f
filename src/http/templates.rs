//! `GET /templates` and `GET /templates/:name`: the template registry.

use hyper::{Response, StatusCode};

use super::response::{ApiError, Body, json};
use super::routes::App;
use crate::names::TemplateName;

/// `GET /templates`: every ready template, sorted by name.
pub async fn list_templates(app: &App) -> Response<Body> {
    app.refresh_templates().await;
    json(StatusCode::OK, app.jobs().templates().list().as_slice())
}

/// `GET /templates/:name`.
pub async fn get_template(app: &App, name: &str) -> Result<Response<Body>, ApiError> {
    app.refresh_templates().await;
    match app.jobs().templates().get(name) {
        Some(template) => Ok(json(StatusCode::OK, &template)),
        // Only a valid name can have builds, so only then is the build listing suggested.
        None if TemplateName::parse(name).is_ok() => Err(ApiError::NotFound(format!(
            "template {name:?} not found; GET /templates lists the ready templates, and GET /templates/builds?name={name} shows its builds"
        ))),
        None => Err(ApiError::NotFound(format!(
            "template {name:?} not found; it is not a valid template name either, and GET /templates lists the ready templates"
        ))),
    }
}
