//! One suite, both backends: the registry log file (single node) and PostgreSQL (cluster
//! mode, a real server started for each test by `carewatch_fixtures::postgres`). Each test
//! opens the registry twice at one place — two processes on a data directory, or two nodes
//! on one database — and checks what users rely on: nothing written is lost, each opener sees
//! the other's changes (before its own writes, and on refresh, also across a compaction), a
//! revocation reaches the other, and parallel writers lose nothing and never deadlock.

use std::sync::Arc;
use std::time::Duration;

use carewatch_fixtures::postgres::Postgres;

use super::*;

/// Where a registry lives.
enum Place {
    Dir(tempfile::TempDir),
    Pg(Postgres),
}

impl Place {
    fn open(&self) -> (Registry, Option<String>) {
        match self {
            Place::Dir(d) => Registry::open(d.path()).expect("open file registry"),
            Place::Pg(p) => Registry::open_postgres(&p.url)
                .unwrap_or_else(|e| panic!("open postgres registry: {e}\n{}", p.log())),
        }
    }
}

fn both(test: fn(&Place)) {
    test(&Place::Dir(tempfile::tempdir().expect("tmp")));
    test(&Place::Pg(Postgres::start()));
}

fn admin_once_and_writes_survive_reopening(at: &Place) {
    let (a, admin) = at.open();
    let admin = admin.expect("the first opener creates an admin");
    let (b, again) = at.open();
    assert_eq!(again, None, "the second opener finds it");
    assert_eq!(b.authenticate(&admin).map(|p| p.role), Some(Role::Admin));
    let s = a.register_device("w1", "alice", Some(1)).expect("register");
    a.set_care_team("alice", "north").expect("team");
    drop((a, b));
    let (r, none) = at.open();
    assert_eq!(none, None);
    assert!(r.device_login("w1", &s));
    assert_eq!(r.care_team("alice").as_deref(), Some("north"));
    assert_eq!(r.authenticate(&admin).map(|p| p.role), Some(Role::Admin));
}

#[test]
fn both_backends_create_one_admin_and_keep_what_was_written() {
    both(admin_once_and_writes_survive_reopening);
}

fn openers_see_each_other_across_compaction(at: &Place) {
    let (a, _) = at.open();
    let (b, _) = at.open();
    let sa = a.register_device("wa", "pa", Some(1)).expect("a writes");
    let sb = b.register_device("wb", "pb", Some(1)).expect("b writes");
    assert!(
        b.device_login("wa", &sa),
        "b read a's change before writing"
    );
    assert!(a.device_login("wb", &sb), "an unknown token makes a look");
    a.compact_now();
    let sc = a
        .register_device("wc", "pc", Some(1))
        .expect("after compaction");
    b.refresh();
    assert!(b.device_login("wc", &sc), "b reloads the compacted history");
    assert!(b.device_login("wa", &sa) && b.device_login("wb", &sb));
    // A revocation on one is seen by the other at its next refresh.
    assert!(b.revoke_device("wa").expect("revoke"));
    a.refresh();
    assert!(!a.device_login("wa", &sa), "a refuses the revoked device");
    let sd = b
        .register_device("wd", "pd", Some(1))
        .expect("b writes after");
    drop((a, b));
    let (r, _) = at.open();
    for (d, s) in [("wb", &sb), ("wc", &sc), ("wd", &sd)] {
        assert!(r.device_login(d, s), "{d}");
    }
    assert!(!r.device_login("wa", &sa));
}

#[test]
fn both_backends_let_two_openers_see_each_other_across_compaction() {
    both(openers_see_each_other_across_compaction);
}

/// Four writer threads on one opener, two on another, and readers looking up unknown tokens
/// (which makes them look for others' changes): every write is there afterwards, on both. A
/// watchdog turns a hang into a failure.
fn parallel_writers_lose_nothing(at: &Place) {
    let (a, _) = at.open();
    let (b, _) = at.open();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut threads = Vec::new();
    for w in 0..6 {
        let r = if w < 4 { a.clone() } else { b.clone() };
        threads.push(std::thread::spawn(move || {
            for i in 0..25 {
                r.register_device(&format!("w{w}-{i}"), &format!("p{w}-{i}"), Some(1))
                    .expect("register");
            }
        }));
    }
    for r in [a.clone(), b.clone()] {
        threads.push(std::thread::spawn(move || {
            for i in 0..200 {
                assert!(r.authenticate(&format!("cw_unknown{i}")).is_none());
                r.refresh();
            }
        }));
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for t in threads {
            t.join().expect("thread");
        }
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(180))
        .expect("registry writers deadlocked");
    a.refresh();
    b.refresh();
    assert_eq!(a.devices().len(), 150);
    assert_eq!(b.devices().len(), 150);
}

#[test]
fn both_backends_keep_every_parallel_write() {
    both(parallel_writers_lose_nothing);
}

#[test]
fn an_unreachable_postgres_is_a_clear_error() {
    let e = Registry::open_postgres("postgres://carewatch@127.0.0.1:1/postgres")
        .expect_err("nothing listens on port 1");
    let msg = e.to_string();
    assert!(msg.contains("postgres"), "{msg}");
    assert!(
        !msg.contains("carewatch@"),
        "no connection string in errors: {msg}"
    );
}

/// A reading of a device another opener enrolled a moment ago (sent under a gateway's or
/// service token, so no unknown credential made this one look) is attributed, not dead-lettered
/// as an unknown device until the next refresh.
fn a_device_just_enrolled_elsewhere_is_attributed_at_once(at: &Place) {
    let (a, _) = at.open();
    let (b, _) = at.open();
    assert_eq!(b.attribute("fresh", 5_000), Attribution::UnknownDevice);
    // Past the least time between two such looks.
    std::thread::sleep(Duration::from_millis(60));
    a.register_device("fresh", "pf", Some(1)).expect("enrol");
    assert_eq!(
        b.attribute("fresh", 5_000),
        Attribution::Patient("pf".into()),
        "b looked before answering"
    );
}

#[test]
fn both_backends_attribute_a_device_enrolled_on_another_node_at_once() {
    both(a_device_just_enrolled_elsewhere_is_attributed_at_once);
}

/// Runs `f` while another thread holds `r`'s backend for 300 ms (as a refresh or a write does).
fn while_busy<T>(r: &Registry, f: impl FnOnce() -> T) -> T {
    std::thread::scope(|s| {
        let (held, is_held) = std::sync::mpsc::channel();
        s.spawn(move || {
            let _busy = r.backend();
            held.send(()).expect("signal");
            std::thread::sleep(Duration::from_millis(300));
        });
        is_held.recv().expect("busy");
        f()
    })
}

/// The look for others' changes that an unknown credential or device id causes waits for a
/// look already under way (a refresh, a write) instead of skipping: a device enrolled on another
/// node is accepted at once even when this node happens to be busy with its registry (the load
/// harness saw 401s right after a fleet enrolment on another node).
fn a_busy_registry_still_finds_what_another_node_enrolled(at: &Place) {
    let (a, _) = at.open();
    let (b, _) = at.open();
    let secret = while_busy(&b, || {
        let secret = a.register_device("busy", "pb", Some(1)).expect("enrol");
        assert!(
            b.device_login("busy", &secret),
            "b looked for the new credential once it could"
        );
        secret
    });
    assert!(b.device_login("busy", &secret));
    std::thread::sleep(Duration::from_millis(60));
    while_busy(&b, || {
        a.register_device("busy2", "pb2", Some(1)).expect("enrol");
        assert_eq!(
            b.attribute("busy2", 5_000),
            Attribution::Patient("pb2".into()),
            "b looked for the new device once it could"
        );
    });
}

#[test]
fn both_backends_find_what_another_node_enrolled_while_busy() {
    both(a_busy_registry_still_finds_what_another_node_enrolled);
}
