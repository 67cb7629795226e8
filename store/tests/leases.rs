//! Alert partition leases in a real PostgreSQL server (cluster mode, issue 13): three nodes
//! share the 64 partitions fairly; no partition is ever owned by two nodes at once (sampled
//! all along, across joins, a node cut off and a clean shutdown); a node that stops renewing
//! (cut off or killed: its rows stay until they expire) loses its partitions to the others,
//! and a node that shuts down gives them back at once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use carewatch_fixtures::postgres::Postgres;
use carewatch_store::lease::{Config, Leases, Ownership, PARTITIONS};

fn config(node: &str) -> Config {
    let mut c = Config::new(node);
    c.ttl = Duration::from_secs(2);
    c.renew = Duration::from_millis(300);
    c.margin = Duration::from_millis(300);
    c
}

fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Samples every node's view until stopped: a partition in two views taken one after the
/// other counts as owned twice only if the first node still owns it after the second's look.
fn watch_exclusive(nodes: Vec<Arc<Leases>>, done: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut samples = 0;
        while !done.load(Ordering::SeqCst) {
            for (i, a) in nodes.iter().enumerate() {
                for b in nodes.iter().skip(i + 1) {
                    let before = a.owned();
                    let other = b.owned();
                    let after = a.owned();
                    let twice: Vec<u16> = before
                        .intersection(&other)
                        .filter(|p| after.contains(p))
                        .copied()
                        .collect();
                    assert!(twice.is_empty(), "owned by two nodes at once: {twice:?}");
                }
            }
            samples += 1;
        }
        samples
    })
}

fn sizes(nodes: &[&Arc<Leases>]) -> Vec<usize> {
    nodes.iter().map(|n| n.owned().len()).collect()
}

fn union(nodes: &[&Arc<Leases>]) -> BTreeSet<u16> {
    nodes.iter().flat_map(|n| n.owned()).collect()
}

#[test]
fn partitions_move_from_a_dead_node_and_are_never_owned_twice() {
    let pg = Postgres::start();
    let start = |n: &str| Arc::new(Leases::start(&pg.url, config(n)).expect("leases"));
    let a = start("a");
    assert_eq!(a.owned().len(), 64, "a lone node owns every partition");
    let (b, c) = (start("b"), start("c"));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_exclusive(vec![a.clone(), b.clone(), c.clone()], done.clone());

    wait(
        "every partition owned, none by more than its share (22 = ⌈64 / 3⌉)",
        || {
            sizes(&[&a, &b, &c]).iter().all(|n| (20..=22).contains(n))
                && union(&[&a, &b, &c]).len() == usize::from(PARTITIONS)
        },
    );

    // b stops renewing without a word, as a node cut off from PostgreSQL (or killed) does: it
    // goes on believing in its leases until they lapse on its own clock, and a and c take them
    // only after they expire in PostgreSQL — the watcher sees no overlap.
    let lost = b.owned();
    b.stop(false);
    wait("b's own view to lapse", || b.owned().is_empty());
    wait("a and c own every partition", || {
        union(&[&a, &c]).len() == usize::from(PARTITIONS)
    });
    assert!(
        lost.iter()
            .all(|p| a.owns_partition(*p) || c.owns_partition(*p)),
        "b's partitions moved"
    );
    wait("a and c share them (32 each)", || {
        sizes(&[&a, &c]) == [32, 32]
    });

    // c shuts down cleanly: its leases are free at once and a takes them all.
    c.stop(true);
    wait("a owns everything", || a.owned().len() == 64);

    done.store(true, Ordering::SeqCst);
    let samples = watcher.join().expect("no partition owned twice");
    assert!(samples > 10, "the watcher sampled ({samples})");
}

#[test]
fn the_patient_partition_is_what_ownership_answers_for() {
    let pg = Postgres::start();
    let a = Leases::start(&pg.url, config("solo")).expect("leases");
    let p = carewatch_store::lease::partition_of("patient-7");
    assert!(a.owns_partition(p) && a.owns("patient-7"));
    a.stop(true);
    assert!(!a.owns("patient-7"), "stopped: owns nothing");
    let b = Leases::start(&pg.url, config("next")).expect("leases");
    assert!(
        b.owns("patient-7"),
        "released leases are free for the next node at once"
    );
}
