//! When a service stops: [`signal`] completes on the signals that ask it to.

/// Completes when the process is asked to stop: SIGTERM (what Kubernetes and Docker send before
/// they kill a pod or container) or SIGINT (Ctrl-C). Given as a server's shutdown future, it
/// makes the server stop accepting and finish the requests in flight, so a rolling update or a
/// scale-down loses no answer. A signal that cannot be watched never completes.
pub async fn signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    let name = tokio::select! {
        () = interrupt => "SIGINT",
        () = terminate => "SIGTERM",
    };
    tracing::info!(signal = name, "stopping: no new requests; finishing those in flight");
}
