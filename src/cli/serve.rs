//! `coppice serve`: loads the templates, starts the job registry and serves the HTTP API.

use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use coppice::http::{App, Server};
use coppice::import::ImportConfig;
use coppice::jobs::JobRegistry;
use coppice::templates::TemplateRegistry;

use super::args::ServeArgs;
use super::commands::EXIT_FAILED;
use super::state::recover_history;

pub async fn serve(config: ImportConfig, args: ServeArgs) -> ExitCode {
    let templates = Arc::new(TemplateRegistry::default());
    match templates.reload(&config).await {
        Ok(count) => tracing::info!(count, jails = %config.jails, "loaded templates"),
        Err(error) => {
            tracing::error!(jails = %config.jails, %error, "failed to load the templates; check that the jails dataset exists and zfs works");
            return ExitCode::from(EXIT_FAILED);
        }
    }

    let Some((history, recovered)) = recover_history(&config, &args).await else {
        return ExitCode::from(EXIT_FAILED);
    };
    let jobs = JobRegistry::start_with_history(config, args.jobs_config(), templates, history.clone(), recovered);
    let shutdown = shutdown_on_signal();
    let server = match Server::bind(args.listen, App::new(jobs, shutdown)).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(address = %args.listen, %error, "failed to listen; choose another address with --listen");
            return ExitCode::from(EXIT_FAILED);
        }
    };

    let address = server.local_addr().unwrap_or(args.listen);
    if !address.ip().is_loopback() {
        tracing::warn!(%address, "listening on a non-loopback address; the API has no authentication");
    }
    tracing::info!(%address, "listening on {address}");

    server.run().await;
    history.sync().await;

    // TODO: jobs still running here are dropped with the runtime, which kills their
    // commands without cleanup; waiting for them belongs with job cancellation.
    tracing::info!("server stopped");
    ExitCode::SUCCESS
}

/// Returns a token cancelled by the first SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};

    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            tracing::warn!("failed to install signal handlers; SIGINT and SIGTERM will not shut the server down gracefully");
            return;
        };
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutting down");
        token.cancel();
    });
    shutdown
}
