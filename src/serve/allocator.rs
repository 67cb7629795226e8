//! The allocator's own view of memory on `/metrics`: bytes the program holds (`allocated`)
//! against pages jemalloc keeps mapped (`resident`), so a memory figure can tell data from what
//! the allocator has not returned to the system yet.

use std::sync::Arc;

/// The `/metrics` lines (none when the allocator's statistics cannot be read).
pub(super) fn metrics() -> carewatch_web::ExtraMetrics {
    Arc::new(|out: &mut String| {
        use std::fmt::Write as _;
        // The statistics are a snapshot taken when the epoch advances.
        if tikv_jemalloc_ctl::epoch::advance().is_err() {
            return;
        }
        let stats = [
            (
                "allocated",
                "Bytes allocated by the program (jemalloc).",
                tikv_jemalloc_ctl::stats::allocated::read(),
            ),
            (
                "resident",
                "Bytes in pages the allocator keeps mapped and resident (jemalloc).",
                tikv_jemalloc_ctl::stats::resident::read(),
            ),
        ];
        for (name, help, value) in stats {
            if let Ok(v) = value {
                let _ = writeln!(
                    out,
                    "# HELP carewatch_allocator_{name}_bytes {help}\n# TYPE carewatch_allocator_{name}_bytes gauge\ncarewatch_allocator_{name}_bytes {v}"
                );
            }
        }
    })
}
