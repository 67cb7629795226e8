//! Which files compaction merges: size-tiered, per table and day. Files are grouped in tiers
//! of similar size (each tier `min_files` times the one below, from [`TIER_BASE`]); a tier
//! with at least `min_files` files is merged, in groups of at most `max_bytes`. A merged file
//! lands in a higher tier, so a row is rewritten about log_min_files(max_bytes / TIER_BASE)
//! times over its life, not once per compaction of its day as when a whole day was merged
//! each time; and a day larger than `max_bytes` goes on being compacted in parts instead of
//! never again. Files of at least half of `max_bytes` are finished: never merged again.

use std::collections::BTreeMap;

use crate::tables::{FileMeta, Table};

/// The upper bound of the smallest tier.
pub(super) const TIER_BASE: u64 = 64 << 10;

/// The tier of a file of `size` bytes.
fn tier(size: u64, base: u64) -> u32 {
    let mut t = 0;
    let mut bound = TIER_BASE;
    while size >= bound {
        t += 1;
        bound = bound.saturating_mul(base);
    }
    t
}

/// The groups of files to merge, each of one table and day, at least two files, at most
/// `max_bytes` in all (a single file above that is left alone). `min_files <= 2` (an explicit
/// compaction) merges every unfinished file of a day, whatever its tier.
pub(super) fn plan_merges(
    files: &[FileMeta],
    min_files: usize,
    max_bytes: u64,
) -> Vec<Vec<FileMeta>> {
    let min_files = min_files.max(2);
    let base = (min_files as u64).max(2);
    let mut by: BTreeMap<(Table, &str, u32), Vec<&FileMeta>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.size < max_bytes / 2) {
        let t = if min_files == 2 {
            0
        } else {
            tier(f.size, base)
        };
        by.entry((f.table, f.date.as_str(), t)).or_default().push(f);
    }
    let mut out = Vec::new();
    for mut group in by.into_values().filter(|g| g.len() >= min_files) {
        // Oldest first, so the merged files keep the arrival order of their rows roughly.
        group.sort_by_key(|f| (f.wal_first, f.wal_last));
        let mut cur: Vec<FileMeta> = Vec::new();
        let mut bytes = 0u64;
        for f in group {
            if !cur.is_empty() && bytes + f.size > max_bytes {
                if cur.len() >= 2 {
                    out.push(std::mem::take(&mut cur));
                }
                cur.clear();
                bytes = 0;
            }
            bytes += f.size;
            cur.push(f.clone());
        }
        if cur.len() >= 2 {
            out.push(cur);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(date: &str, n: u64, size: u64) -> FileMeta {
        FileMeta {
            table: Table::Observations,
            path: format!("observations/date={date}/f{n}.parquet").into(),
            date: date.into(),
            wal_first: n,
            wal_last: n,
            size,
        }
    }

    fn names(plan: &[Vec<FileMeta>]) -> Vec<Vec<u64>> {
        plan.iter()
            .map(|g| g.iter().map(|f| f.wal_first).collect())
            .collect()
    }

    #[test]
    fn a_tier_merges_once_it_has_min_files() {
        let small: Vec<FileMeta> = (0..7).map(|n| file("2026-01-01", n, 10_000)).collect();
        assert!(plan_merges(&small, 8, 1 << 30).is_empty());
        let mut eight = small.clone();
        eight.push(file("2026-01-01", 7, 10_000));
        assert_eq!(
            names(&plan_merges(&eight, 8, 1 << 30)),
            vec![(0..8).collect::<Vec<_>>()]
        );
    }

    #[test]
    fn a_merged_file_is_not_rewritten_with_the_next_small_ones() {
        // One earlier merge (a bigger tier) and eight new small files: only the small ones merge.
        let mut files = vec![file("2026-01-01", 100, 80_000 * 8)];
        files.extend((0..8).map(|n| file("2026-01-01", n, 80_000)));
        let plan = plan_merges(&files, 8, 1 << 30);
        assert_eq!(names(&plan), vec![(0..8).collect::<Vec<_>>()]);
    }

    #[test]
    fn days_and_tables_are_never_mixed() {
        let mut files: Vec<FileMeta> = (0..4).map(|n| file("2026-01-01", n, 1000)).collect();
        files.extend((4..8).map(|n| file("2026-01-02", n, 1000)));
        assert!(plan_merges(&files, 8, 1 << 30).is_empty());
        let plan = plan_merges(&files, 2, 1 << 30);
        assert_eq!(names(&plan), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    }

    #[test]
    fn a_day_over_the_bound_is_merged_in_parts() {
        // The whole day (12 x 30 kB) is over 100 kB: merged in groups of at most 100 kB.
        let files: Vec<FileMeta> = (0..12).map(|n| file("2026-01-01", n, 30_000)).collect();
        let plan = plan_merges(&files, 8, 100_000);
        assert_eq!(plan.len(), 4);
        for g in &plan {
            assert!(g.iter().map(|f| f.size).sum::<u64>() <= 100_000);
            assert!(g.len() >= 2);
        }
        // Files of half the bound or more are done.
        let big: Vec<FileMeta> = (0..8).map(|n| file("2026-01-01", n, 50_000)).collect();
        assert!(plan_merges(&big, 2, 100_000).is_empty());
    }
}
