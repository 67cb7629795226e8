//! Every carewatch process's log and the ids a test used, kept for scripts/check_logs_phi.py.

use std::path::{Path, PathBuf};

use super::BIN;

/// Where end-to-end tests keep the log (stdout and stderr) of every carewatch process they start
/// and the ids and tokens they used, for scripts/check_logs_phi.py: `$CAREWATCH_TEST_LOGS`, else
/// `test-logs/` in the cargo target directory (beside `debug/`, found from the binary's path).
pub fn test_logs_dir() -> PathBuf {
    let dir = std::env::var_os("CAREWATCH_TEST_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(BIN)
                .parent()
                .and_then(Path::parent)
                .map(|t| t.join("test-logs"))
                .unwrap_or_else(|| PathBuf::from("target/test-logs"))
        });
    std::fs::create_dir_all(&dir).expect("test log dir");
    dir
}

/// `<test crate>.<test function>.<pid>`: libtest runs each test on a thread named after it.
fn test_stem() -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("main").replace("::", ".");
    format!("{}.{name}.{}", env!("CARGO_CRATE_NAME"), std::process::id())
}

/// A new log file for this test's next `what` process (`<stem>.<n>-<what>.log`).
pub fn log_file(what: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    test_logs_dir().join(format!("{}.{n}-{what}.log", test_stem()))
}

/// Marks a console line (stdout) in a saved log, so scripts/check_logs_phi.py can tell it from
/// the tracing records of stderr.
pub const STDOUT: &str = "[stdout] ";

/// Saves a finished carewatch process's stdout (lines marked [`STDOUT`]) and stderr as one of
/// this test's logs.
pub fn save_output(what: &str, out: &std::process::Output) {
    let mut text: Vec<u8> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .flat_map(|l| format!("{STDOUT}{l}\n").into_bytes())
        .collect();
    text.extend_from_slice(&out.stderr);
    std::fs::write(log_file(what), text).expect("save log");
}

/// Records an identifier this test gives carewatch (`kind`: `patient`, `device` or `token`) in
/// the test's sidecar `<stem>.ids` (`kind<TAB>value` lines): no log line at INFO or above may
/// contain it (scripts/check_logs_phi.py).
pub fn note_id(kind: &str, value: &str) {
    use std::io::Write;
    if value.is_empty() {
        return;
    }
    let path = test_logs_dir().join(format!("{}.ids", test_stem()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("ids file");
    f.write_all(format!("{kind}\t{value}\n").as_bytes())
        .expect("ids file");
}
