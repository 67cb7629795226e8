//! CPU-heavy background work — a persist's sort and encode, a compaction's merge — on a thread
//! of its own at a lower scheduling priority, so that the work a user waits on (an HTTP append's
//! acknowledgement, the rules' evaluation, a query) is scheduled first when they share the
//! cores. On a 2-core node at 100,000 patients, a persist of a million rows and a merge of
//! 256 MiB each took a core for seconds at the same priority as the rules, and the alerts and
//! acknowledgements of those seconds waited (BENCHMARKS.md, "Load over the network path").
//! RocksDB runs its compactions the same way (a low-priority thread pool).
//!
//! On Linux the nice value is a per-thread attribute and threads inherit it from the thread
//! that starts them, so the encode's column threads run at the same lower priority. An
//! unprivileged thread cannot raise its priority again, which is why the work gets a fresh
//! thread instead of a thread of the shared blocking pool.

use crate::{Error, Result};

/// A persist's sort and encode: below the foreground, above a merge (the buffer's bound
/// depends on persists keeping up).
pub(super) const PERSIST_NICE: i32 = 5;

/// A compaction's merge: nothing waits on it.
pub(super) const MERGE_NICE: i32 = 10;

/// Runs `f` on a new thread named `name` whose nice value is at least `nice`, and waits for it
/// without blocking an async worker.
pub(super) async fn yielding<T: Send + 'static>(
    name: &str,
    nice: i32,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority(nice);
            let _ = tx.send(f());
        })
        .map_err(|e| Error::Io(format!("{name} thread: {e}")))?;
    rx.await
        .map_err(|_| Error::Io(format!("{name} thread ended without a result (a panic)")))?
}

/// Raises the calling thread's nice value to `nice` (never lowers it). Best effort: where the
/// system refuses, the work runs at the priority it has.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // `who = 0` with PRIO_PROCESS is the calling thread on Linux.
        let now = rustix::process::getpriority_process(None).unwrap_or(0);
        if nice > now
            && let Err(e) = rustix::process::setpriority_process(None, nice)
        {
            tracing::debug!(error = %e, nice, "could not lower a background thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice() -> i32 {
        rustix::process::getpriority_process(None).unwrap()
    }

    #[tokio::test]
    async fn background_work_and_the_threads_it_starts_run_at_the_lower_priority() {
        let caller = nice();
        // At nice 19 already (a run under `nice -n 19`) nothing can be lowered further, and the
        // check below only shows that the priority is kept.
        let want = (caller + 3).min(19);
        let (inside, child) = yielding("test-background", want, || {
            let child = std::thread::spawn(nice).join().unwrap();
            Ok((nice(), child))
        })
        .await
        .unwrap();
        assert_eq!(inside, want, "the work's own thread");
        assert_eq!(child, inside, "a thread the work starts inherits it");
        assert_eq!(nice(), caller, "the caller's priority is untouched");
    }

    #[tokio::test]
    async fn a_panic_in_background_work_is_an_error() {
        let r: Result<()> = yielding("test-panic", 1, || panic!("boom")).await;
        assert!(matches!(r, Err(Error::Io(m)) if m.contains("test-panic")));
    }
}
