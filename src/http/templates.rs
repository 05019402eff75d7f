//! `GET /templates` and `GET /templates/:name`: the template registry.

use hyper::{Response, StatusCode};

use super::response::{ApiError, Body, json};
use super::routes::App;

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
        None => Err(ApiError::NotFound(format!(
            "template {name:?} not found; GET /templates lists the ready templates, and GET /templates/builds?name={name} shows its builds"
        ))),
    }
}
