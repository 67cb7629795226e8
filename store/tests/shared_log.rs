//! The alert history shared by a cluster's nodes (`store::shared_log`) in a real PostgreSQL
//! server: entries are numbered without gaps in commit order; an append first takes in what
//! others wrote since its position and is refused, with nothing written, when one of those
//! touched a key it writes, when an entry it cannot read is among them, or when its node does
//! not hold the lease of a partition it writes for.

use std::time::{Duration, Instant};

use carewatch_fixtures::postgres::Postgres;
use carewatch_store::lease::{self, Leases, Ownership};
use carewatch_store::shared_log::{Entry, Refusal, SharedLog};

fn entry(key: &str, part: Option<u16>) -> Entry {
    Entry {
        key: key.into(),
        part,
        body: format!("body of {key}").into_bytes(),
    }
}

fn any(_: &[u8]) -> bool {
    true
}

#[test]
fn appends_take_in_others_entries_and_refuse_conflicts_strangers_and_unreadable_ones() {
    let pg = Postgres::start();
    let mut config = lease::Config::new("n1");
    config.renew = Duration::from_millis(300);
    let leases = Leases::start(&pg.url, config).expect("leases");
    let deadline = Instant::now() + Duration::from_secs(10);
    while leases.owned().len() < usize::from(lease::PARTITIONS) {
        assert!(Instant::now() < deadline, "n1 owns every partition");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (a, b) = (
        SharedLog::open(&pg.url).expect("a"),
        SharedLog::open(&pg.url).expect("b"),
    );

    let done = a
        .append(0, &[entry("k1", Some(3))], Some("n1"), &any)
        .expect("a");
    assert_eq!((done.foreign.len(), done.refused), (0, None));

    // b has read nothing yet and writes k1 too: it decided from an outdated view.
    let done = b.append(0, &[entry("k1", None)], None, &any).expect("b");
    assert_eq!(done.refused, Some(Refusal::Conflict));
    assert_eq!(
        done.foreign,
        vec![(0, b"body of k1".to_vec())],
        "it learns what it missed"
    );

    // Another key goes through, after what a wrote.
    let done = b.append(0, &[entry("k2", None)], None, &any).expect("b");
    assert_eq!((done.foreign.len(), done.refused), (1, None));
    assert_eq!(
        a.read_from(0, 100).expect("read"),
        vec![(0, b"body of k1".to_vec()), (1, b"body of k2".to_vec())],
        "numbered without gaps, in commit order"
    );

    // A node without the partition's lease cannot write for it; a person's entry is not fenced.
    let done = b
        .append(2, &[entry("k3", Some(3))], Some("n2"), &any)
        .expect("b");
    assert_eq!(done.refused, Some(Refusal::NotOwner));
    let done = b
        .append(2, &[entry("k3", None)], Some("n2"), &any)
        .expect("b");
    assert_eq!(done.refused, None);

    // An entry the writer cannot read among the others': refused, nothing written.
    let done = a
        .append(1, &[entry("k4", Some(3))], Some("n1"), &|b: &[u8]| {
            !b.ends_with(b"k3")
        })
        .expect("a");
    assert_eq!(done.refused, Some(Refusal::Unreadable));
    assert_eq!(
        a.read_from(0, 100).expect("read").len(),
        3,
        "nothing of it was written"
    );

    // A lease that lapsed fences its old owner.
    leases.stop(true);
    let done = a
        .append(3, &[entry("k5", Some(3))], Some("n1"), &any)
        .expect("a");
    assert_eq!(done.refused, Some(Refusal::NotOwner));
}

/// A follower hears of another node's append when it commits (NOTIFY), not at its next poll;
/// a refused append, or none, wakes nobody.
#[test]
fn a_watch_hears_each_committed_append_at_once() {
    let pg = Postgres::start();
    let (a, mut watch) = (
        SharedLog::open(&pg.url).expect("a"),
        SharedLog::watch(&pg.url).expect("watch"),
    );
    assert!(
        !watch.wait(Duration::from_millis(300)).expect("wait"),
        "no append: the wait runs out"
    );
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        a.append(0, &[entry("k1", None)], None, &any).expect("a");
        a
    });
    assert!(
        watch.wait(Duration::from_secs(60)).expect("wait"),
        "woken by the append's commit, long before the wait runs out"
    );
    let a = writer.join().expect("writer");
    // Refused (a conflict): nothing committed, nothing told.
    let done = a.append(0, &[entry("k1", None)], None, &any).expect("a");
    assert_eq!(done.refused, Some(Refusal::Conflict));
    assert!(
        !watch.wait(Duration::from_millis(300)).expect("wait"),
        "a refused append wakes nobody"
    );
}
