//! Coppice template builder: imports OCI images as FreeBSD jail templates, a ZFS
//! dataset `<jails>/<name>-template` with a `@base` snapshot that sandboxes clone.
//!
//! Layers, lowest first: [`split`] and [`line`] (output lines), [`exec`] (the one
//! executor), [`steps`] (one file per import step), [`names`] (validated input),
//! [`import`] (the runner), [`templates`] (the registry), [`jobs`] (build jobs and their
//! logs), [`http`] (the API server). Higher layers import lower ones, never the reverse.

pub mod exec;
pub mod health;
pub mod http;
pub mod import;
pub mod jobs;
pub mod line;
pub mod names;
pub mod split;
pub mod steps;
pub mod sweep;
pub mod templates;
