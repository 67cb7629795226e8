//! The rules' own threads: evaluation runs on a dedicated Tokio runtime, so analysts' queries
//! (which execute on the server's runtime) cannot take the worker threads the rules need. With
//! the rules' own session and memory pool ([`super::rules_context`]) and the per-rule timeout,
//! an analyst can slow alerting down only as much as the OS shares the CPU.

use tokio_util::sync::CancellationToken;

use super::AlertEngine;

impl AlertEngine {
    /// Runs [`AlertEngine::run`] on a dedicated runtime (`threads` workers) on the blocking
    /// pool; the handle finishes when `shutdown` is cancelled. If the runtime cannot be built
    /// the loop runs on the caller's runtime instead.
    pub fn spawn_dedicated(
        self,
        threads: usize,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("carewatch-rules")
            .enable_all()
            .build();
        match rt {
            Ok(rt) => tokio::task::spawn_blocking(move || {
                let task = rt.spawn(self.run(shutdown));
                let _ = rt.block_on(task);
                rt.shutdown_background();
            }),
            Err(e) => {
                tracing::warn!(error = %e, "no dedicated runtime for the rules; sharing the server's");
                tokio::spawn(self.run(shutdown))
            }
        }
    }
}
