//! The HTTP server loop: accepts connections and serves the router on each, with the
//! connection-level timeouts that `axum::serve` does not offer.
//!
//! `axum::serve` gives hyper no timer, so a connection that sends no request (an idle
//! keep-alive connection, or a client that never finishes its header) stays open forever. Here
//! hyper's HTTP/1 header read timeout runs with a timer: it starts when a connection opens and
//! again each time an answer has been sent, and closes the connection when no complete request
//! header arrives within `idle`. It never runs while a request is being answered, so long
//! streams are unaffected (stalled stream readers are [`crate::stall`]'s job).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::Service;

/// How long shutdown waits for open connections to finish their last answer once every task has
/// ended; a client that keeps reading nothing does not hold the daemon up beyond it.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets each
/// connection finish the answer in progress (at most [`CLOSE_WAIT`]) and returns.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    idle: Duration,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener<Addr = SocketAddr>,
{
    // HTTP/1 only: the automatic HTTP/1-or-2 detection waits for a client's first bytes with no
    // timeout, which would let a silent connection escape `idle`. Browsers speak HTTP/2 only over
    // TLS, which the daemon does not serve; SSE and JSON clients speak HTTP/1.1.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle);
    let mut make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut shutdown => break,
        };
        let service = match make_service.call(addr).await {
            Ok(s) => s,
            Err(never) => match never {},
        };
        let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, peer = %addr, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(CLOSE_WAIT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            wait_s = CLOSE_WAIT.as_secs(),
            "shutdown: some client connections were still open; closing them"
        );
    }
}
