//! `coppice serve`: loads the templates, starts the job registry and serves the HTTP API.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use coppice::http::{ApiKey, App, Server};
use coppice::import::ImportConfig;
use coppice::jobs::JobRegistry;
use coppice::templates::TemplateRegistry;

use super::args::ServeArgs;
use super::commands::EXIT_FAILED;
use super::signals;
use super::state::recover_history;

pub async fn serve(config: ImportConfig, args: ServeArgs) -> ExitCode {
    let api_key = match read_api_key(&args) {
        Ok(key) => key,
        Err(message) => {
            tracing::error!("{message}");
            return ExitCode::from(EXIT_FAILED);
        }
    };

    let templates = Arc::new(TemplateRegistry::default());
    match templates.reload(&config).await {
        Ok(count) => tracing::info!(count, jails = %config.jails, "loaded templates"),
        Err(error) => {
            tracing::error!(jails = %config.jails, %error, "failed to load the templates; check that the jails dataset exists and zfs works");
            return ExitCode::from(EXIT_FAILED);
        }
    }

    // A missing tool does not stop the server (it may be installed later), but builds
    // would fail after minutes of work, so the warning comes now.
    let health = coppice::health::probe(&config.tools, &config.jails).await;
    if !health.is_ok() {
        tracing::warn!(problems = %health.problems().join("; "), "a tool the builds need is not usable; builds will fail until it is fixed");
    }

    let Some((history, recovered)) = recover_history(&config, &args).await else {
        return ExitCode::from(EXIT_FAILED);
    };
    let jobs = JobRegistry::start_with_history(config, args.jobs_config(), templates, history.clone(), recovered);
    let stop_accepting = stop_on_signal();
    let close_streams = CancellationToken::new();
    let app = App::new(Arc::clone(&jobs), close_streams.clone()).with_api_key(api_key.clone());
    let server = match Server::bind(args.listen, app).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(address = %args.listen, %error, "failed to listen; choose another address with --listen");
            return ExitCode::from(EXIT_FAILED);
        }
    };

    let address = server.local_addr().unwrap_or(args.listen);
    if !address.ip().is_loopback() && api_key.is_none() {
        tracing::warn!(%address, "listening on a non-loopback address without an API key; any client that can reach it can start builds");
    }
    tracing::info!(%address, auth = api_key.is_some(), "listening on {address}");
    let server = tokio::spawn(server.run_until(stop_accepting.clone()));

    // Shutdown order: stop accepting, stop the builds (their cleanup runs), then end
    // the event streams, so that each stream's final `done` shows the job's end.
    stop_accepting.cancelled().await;
    let unfinished = jobs.shut_down(Duration::from_secs(args.shutdown_timeout)).await;
    close_streams.cancel();
    if let Err(error) = server.await {
        tracing::error!(%error, "the server task failed");
    }
    // Commits what the stopped jobs recorded, so their final states outlive the exit.
    history.sync().await;

    if unfinished.is_empty() {
        tracing::info!("server stopped");
        ExitCode::SUCCESS
    } else {
        tracing::error!(jobs = unfinished.len(), "server stopped with builds still cleaning up; the next start-up sweeps their leftovers");
        ExitCode::from(EXIT_FAILED)
    }
}

/// Reads the key from `--api-key-file` or `COPPICE_API_KEY`.
fn read_api_key(args: &ServeArgs) -> Result<Option<ApiKey>, String> {
    if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("failed to read the API key file {}: {error}", path.display()))?;
        return ApiKey::new(&text)
            .map(Some)
            .ok_or_else(|| format!("the API key file {} is empty; write the key into it", path.display()));
    }
    match &args.api_key {
        Some(text) => ApiKey::new(text).map(Some).ok_or_else(|| "COPPICE_API_KEY is empty; set it to the key or unset it".to_owned()),
        None => Ok(None),
    }
}

/// Returns a token cancelled by the first SIGINT or SIGTERM.
fn stop_on_signal() -> CancellationToken {
    signals::cancel_on_signal(|name| tracing::info!(signal = name, "shutting down"))
}
