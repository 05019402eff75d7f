//! The accept loop: one hyper HTTP/1.1 connection task per client, and a graceful
//! shutdown bounded by a timeout.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::routes::App;

/// Time a client has to send the request headers before its connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Time open connections get to finish after the shutdown signal.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept`, such as when the process is out of file
/// descriptors, so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    shutdown_timeout: Duration,
}

impl Server {
    pub async fn bind(address: SocketAddr, app: App) -> io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        Ok(Self::from_listener(listener, app))
    }

    pub fn from_listener(listener: TcpListener, app: App) -> Self {
        Self { listener, app: Arc::new(app), shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT }
    }

    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the app's shutdown token is cancelled, then stops as
    /// [`Server::run_until`] does.
    pub async fn run(self) {
        let stop = self.app.shutdown().clone();
        self.run_until(stop).await;
    }

    /// Accepts connections until `stop` is cancelled, then waits for open connections
    /// to finish. Event streams end when the app's shutdown token is cancelled, which
    /// may come later than `stop` (the server first winds its jobs down). From then on
    /// the wait is bounded by the shutdown timeout.
    pub async fn run_until(self, stop: CancellationToken) {
        let Server { listener, app, shutdown_timeout } = self;
        let graceful = GracefulShutdown::new();

        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.cancelled() => break,
            };
            match accepted {
                Ok((stream, peer)) => serve_connection(stream, peer, Arc::clone(&app), &graceful),
                Err(error) => {
                    tracing::warn!(%error, "failed to accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }

        drop(listener);
        tracing::info!("shutting down: no longer accepting connections");
        let streams_closed_then_timeout = async {
            app.shutdown().cancelled().await;
            tokio::time::sleep(shutdown_timeout).await;
        };
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = streams_closed_then_timeout => {
                tracing::warn!(timeout_secs = shutdown_timeout.as_secs(), "connections still open after the shutdown timeout; closing them");
            }
        }
    }
}

fn serve_connection(stream: TcpStream, peer: SocketAddr, app: Arc<App>, graceful: &GracefulShutdown) {
    let service = service_fn(move |request| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(app.handle(request).await) }
    });

    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    let connection = graceful.watch(connection);

    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    });
}
