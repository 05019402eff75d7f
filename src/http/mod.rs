//! The HTTP API on bare hyper: routing, JSON bodies and errors, and Server-Sent Events.
//! It calls jobs and templates and never runs a command itself.

mod auth;
mod builds;
mod events;
mod health;
mod logs;
mod request;
mod response;
mod routes;
mod server;
pub mod sse;
mod templates;

pub use auth::{API_KEY_HEADER, ApiKey};
pub use logs::{DEFAULT_LIMIT, MAX_LIMIT};
pub use request::MAX_BODY_BYTES;
pub use response::{ApiError, Body};
pub use routes::App;
pub use server::{DEFAULT_SHUTDOWN_TIMEOUT, HEADER_READ_TIMEOUT, Server};
