//! SIGINT and SIGTERM as a cancellation token, shared by the foreground import and the server.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Returns a token cancelled by the first SIGINT or SIGTERM. `on_signal` runs with the
/// signal's name first, so the caller can say what the signal now stops.
pub fn cancel_on_signal(on_signal: impl FnOnce(&'static str) + Send + 'static) -> CancellationToken {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            tracing::warn!("failed to install SIGINT and SIGTERM handlers; those signals will stop the process without cleanup");
            return;
        };
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        on_signal(name);
        token.cancel();
    });
    cancel
}
