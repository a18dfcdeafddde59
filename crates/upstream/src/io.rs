//! The handler's I/O thread: it owns the runtime that the exchanges (entered from executor
//! threads with `block_on`), the deadline keeper and the health poll run on, and drops it when
//! the handler is closed, on its own thread, never inside another runtime.

use crate::Shared;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long the runtime's tasks (connection drivers, the health poll) get to end at close.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(1);

/// The running I/O thread.
#[derive(Debug)]
pub(crate) struct Io {
    runtime: tokio::runtime::Handle,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Io {
    /// Start the thread and its one-worker runtime; start the health polls if there are any.
    pub(crate) fn start(shared: Arc<Shared>) -> std::io::Result<Io> {
        let (tx, rx) = mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let name = format!("fc-up{}", shared.endpoint.replace('/', "-"));
        std::thread::Builder::new().name(name).spawn(move || {
            let runtime = match relay::io_runtime("fc-upstream-io") {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(runtime.handle().clone()));
            runtime.spawn(crate::deadline::keep(
                shared.deadlines.clone(),
                shared.config.timeout,
            ));
            let polls: Vec<_> = if shared.config.health_path.is_some() {
                (0..shared.servers.len())
                    .map(|server| runtime.spawn(crate::health::poll(shared.clone(), server)))
                    .collect()
            } else {
                Vec::new()
            };
            let _ = runtime.block_on(stopped);
            for poll in polls {
                poll.abort();
            }
            // Exchanges still in flight on the front end's runtime (its own tasks outlive the
            // endpoint's close) keep their deadlines: the keeper runs on until the last has
            // ended, each by its `timeout_ms` at the latest.
            runtime.block_on(shared.deadlines.drained());
            runtime.shutdown_timeout(SHUTDOWN_BOUND);
            tracing::debug!(endpoint = %shared.endpoint, "upstream I/O stopped");
        })?;
        let runtime = rx
            .recv()
            .map_err(|_| std::io::Error::other("the upstream I/O thread ended at start"))??;
        Ok(Io {
            runtime,
            stop: Mutex::new(Some(stop)),
        })
    }

    /// The runtime the exchanges run on.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// End the thread (idempotent): no exchange may run after this.
    pub(crate) fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = stop.send(());
        }
    }
}
