//! What the kernel says about this process: resident set and CPU time per thread
//! (`/proc/self/status`, `/proc/self/task/*/stat`), so the bench can report memory and the CPU
//! the rules' own threads (`carewatch-rules`) used per second of data.

use std::collections::HashMap;

/// Clock ticks per second of `utime`/`stime` (`USER_HZ`, 100 on every Linux this runs on).
const TICKS: f64 = 100.0;

/// The resident set, MiB.
pub fn rss_mib() -> f64 {
    rss_mib_of("/proc/self/status")
}

/// The resident set (`VmRSS`) from a `/proc/<pid>/status` file, MiB.
pub fn rss_mib_of(path: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) per live thread: thread id -> (name, seconds).
pub fn threads() -> HashMap<u64, (String, f64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `tid (comm) state ppid …`: comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the comm: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
        let ticks = |i: usize| f.get(i - 3).and_then(|s| s.parse::<f64>().ok());
        if let (Some(u), Some(s)) = (ticks(14), ticks(15)) {
            out.insert(tid, (name, (u + s) / TICKS));
        }
    }
    out
}

/// CPU seconds used since `before` by threads whose name starts with `prefix` (all threads
/// for ""), counting threads started since from zero. Threads that ended meanwhile are lost,
/// so take the second sample while the threads of interest are still running.
pub fn cpu_since(before: &HashMap<u64, (String, f64)>, prefix: &str) -> f64 {
    threads()
        .iter()
        .filter(|(_, (name, _))| name.starts_with(prefix))
        .map(|(tid, (_, now))| now - before.get(tid).map_or(0.0, |(_, b)| *b))
        .sum()
}

/// CPU seconds (user + system) of the whole process so far, ended threads included.
pub fn process_cpu() -> f64 {
    cpu_of("/proc/self/stat")
}

/// CPU seconds (user + system) from a `/proc/<pid>/stat` file (after the comm, utime and
/// stime are fields 14 and 15, 1-based, man 5 proc).
pub fn cpu_of(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    let Some(close) = stat.rfind(')') else {
        return f64::NAN;
    };
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|s| s.parse::<f64>().ok());
    match (ticks(14), ticks(15)) {
        (Some(u), Some(s)) => (u + s) / TICKS,
        _ => f64::NAN,
    }
}
