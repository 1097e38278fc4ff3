//! Accepting connections for the routes, with limits a slow or idle client cannot outlast:
//! a cap on open connections (the rest are closed as they arrive, so descriptors never run
//! out), a time limit on a request's headers (also the longest an idle keep-alive
//! connection is kept) and on its body, and a graceful stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::openai::ApiError;

/// Limits on connections and requests.
///
/// ```
/// use std::time::Duration;
/// use rocm_llama::server::ConnectionLimits;
///
/// let limits = ConnectionLimits::default().max_connections(256).header_timeout(Duration::from_secs(10));
/// assert_eq!(limits.body_timeout, Duration::from_secs(60));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// Connections open at once (default 512); one more is closed as soon as it is accepted.
    /// Keep it below the process's descriptor limit.
    pub max_connections: usize,
    /// The longest a client may take to send a request's headers, counted from when the
    /// connection opens or the previous answer ends (default 30 s): a connection idle longer
    /// is closed.
    pub header_timeout: Duration,
    /// The longest a client may take to send a request's body (default 60 s): 408 after it.
    pub body_timeout: Duration,
    /// The largest request body accepted (default 2 MiB, as axum's own limit): 413 above it.
    pub max_body_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 512,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            max_body_bytes: 2 << 20,
        }
    }
}

crate::config::setters!(ConnectionLimits {
    max_connections: usize,
    header_timeout: Duration,
    body_timeout: Duration,
    max_body_bytes: usize,
});

/// Serves `app` on `listener` within `limits` until `shutdown` completes; then accepts no
/// more connections and returns once those open have finished their requests (wrap the
/// returned future in a timeout to bound that).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(Arc::new(limits.clone()), read_body));
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (or a connection reset before accept): wait a little
                    // rather than spin.
                    tracing::warn!("serve: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::warn!("serve: {} connections open already: closing a new one", limits.max_connections);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            // hyper counts the header time from the request's first byte; a connection that
            // sends nothing at all gets the same limit here.
            let mut first = [0u8; 1];
            if !matches!(tokio::time::timeout(header_timeout, stream.peek(&mut first)).await, Ok(Ok(1..))) {
                drop(permit);
                return;
            }
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let _ = watcher.watch(conn).await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Reads the whole request body within the time and size limits before any route sees it.
async fn read_body(
    axum::extract::State(limits): axum::extract::State<Arc<ConnectionLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(limits.body_timeout, axum::body::to_bytes(body, limits.max_body_bytes)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(_)) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than {} bytes, or was cut off", limits.max_body_bytes),
        )
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!("the request body did not arrive within {} s", limits.body_timeout.as_secs()),
        )
        .into_response(),
    }
}
