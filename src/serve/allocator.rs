//! The allocator's own view of memory on `/metrics`: bytes the program holds (`allocated`)
//! against pages jemalloc keeps mapped (`resident`), so a memory figure can tell data from what
//! the allocator has not returned to the system yet; and the allocator's settings for a server.

use std::sync::Arc;

use tikv_jemalloc_ctl::{Access, AsName};

/// How long freed pages stay resident before jemalloc returns them to the system, in ms.
/// jemalloc's default is 10 s; a persist or a merge at 100,000 patients frees a few hundred MB
/// every few seconds, so with 10 s of decay about that much was always resident beyond what the
/// program held (~0.3 GiB of RSS over `allocated` in the 85-minute soak, BENCHMARKS.md). Pages
/// that are reused within a second are not returned; those that are, fault back in at ~1 µs a
/// page.
const DECAY_MS: isize = 1000;

/// Sets the allocator up for a long-running server: freed pages go back to the system after
/// [`DECAY_MS`] (dirty) and at once after that (muzzy, `MADV_FREE` pages the kernel would count
/// as resident until it needs them), on jemalloc's background threads, so an idle arena returns
/// its pages too. A setting that cannot be made is logged; the defaults stay.
pub(super) fn tune() {
    // `arena.4096` is every existing arena (MALLCTL_ARENAS_ALL); `arenas.*` those made later.
    let settings: [(&[u8], isize); 4] = [
        (b"arenas.dirty_decay_ms\0", DECAY_MS),
        (b"arenas.muzzy_decay_ms\0", 0),
        (b"arena.4096.dirty_decay_ms\0", DECAY_MS),
        (b"arena.4096.muzzy_decay_ms\0", 0),
    ];
    for (name, value) in settings {
        if let Err(e) = name.name().write(value) {
            tracing::warn!(setting = %String::from_utf8_lossy(name), error = %e, "allocator setting not made");
        }
    }
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "allocator background threads not started");
    }
}

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

#[cfg(test)]
mod tests {
    use tikv_jemalloc_ctl::{Access, AsName};

    #[test]
    fn a_server_returns_freed_pages_within_a_second_on_background_threads() {
        super::tune();
        let dirty: isize = b"arenas.dirty_decay_ms\0".name().read().expect("read");
        let muzzy: isize = b"arenas.muzzy_decay_ms\0".name().read().expect("read");
        let arena0: isize = b"arena.0.dirty_decay_ms\0".name().read().expect("read");
        assert_eq!(
            (dirty, muzzy, arena0),
            (super::DECAY_MS, 0, super::DECAY_MS)
        );
        assert!(tikv_jemalloc_ctl::background_thread::read().expect("read"));
    }
}
