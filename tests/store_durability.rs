//! Durability at the edge (issue #12): a request of many bad items stores its payload once,
//! and a message's dead letters are capped.

mod common;

use carewatch_store::Table;
use common::*;

fn wal_bytes(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data.join("wal"))
        .expect("wal dir")
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// `[0,0,…]`: 8000 items, each rejected, in a 16 KiB request. The WAL grows by O(payload +
/// items), not O(items × payload) (124 MB before); a 12 000-item request stores 10 000 dead
/// letters and one `too_large` summary.
#[test]
fn many_bad_items_store_their_payload_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let secret = srv.register("w1", "alice");
    let data = tmp.path().join("data");
    let before = wal_bytes(&data);
    let body = format!("[{}0]", "0,".repeat(7999));
    assert!(body.len() < 16 << 10);
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
    assert!(s == 202 || s == 422, "{s} {}", &b[..b.len().min(300)]);
    let grew = wal_bytes(&data) - before;
    assert!(
        grew < 4 << 20,
        "8000 bad items of a 16 KiB request wrote {grew} bytes of WAL"
    );

    let body = format!("[{}0]", "0,".repeat(11_999));
    let (s, _) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
    assert!(s == 202 || s == 422, "{s}");
    assert_eq!(srv.stop(), 0);
    let dead = read_table(&data, Table::DeadLetters);
    assert_eq!(count(&dead), 8000 + 10_000 + 1);
    let reasons = strings(&dead, "reason");
    assert_eq!(reasons.iter().filter(|r| *r == "too_large").count(), 1);
}

/// A store writer that cannot go on is visible at the edge: with its WAL segment and
/// directory made immutable (`chattr +i`, root on ext4) a write fails and `GET /healthz`
/// answers 503; once the disk allows it again, writes resume and health returns.
#[test]
fn healthz_is_503_while_the_store_writer_cannot_go_on() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let secret = srv.register("w1", "alice");
    let reading =
        |t: &str| format!(r#"{{"device_id":"w1","time":"{t}","type":"heart_rate","value":70}}"#);
    let post = |t: &str| {
        curl(
            "POST",
            &format!("{}/v1/readings", srv.http),
            &secret,
            &reading(t),
        )
        .0
    };
    let health = || curl("GET", &format!("{}/healthz", srv.http), "", "").0;
    assert_eq!(post("2024-05-01T08:00:00Z"), 202);
    assert_eq!(health(), 200);
    let wal = tmp.path().join("data/wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .expect("wal")
        .flatten()
        .map(|e| e.path())
        .collect();
    segs.sort();
    let frozen = [segs.last().expect("segment").clone(), wal];
    let chattr = |flag: &str| {
        for p in &frozen {
            let st = std::process::Command::new("chattr")
                .arg(flag)
                .arg(p)
                .status()
                .expect("run chattr");
            assert!(st.success(), "chattr needs root on ext4 (CI runs as root)");
        }
    };
    chattr("+i");
    let during = (post("2024-05-01T08:00:01Z"), health());
    chattr("-i");
    assert_eq!(
        during,
        (503, 503),
        "(write, /healthz) while the WAL cannot be written"
    );
    assert_eq!(post("2024-05-01T08:00:02Z"), 202);
    assert_eq!(health(), 200);
    assert_eq!(srv.stop(), 0);
    let rows = read_table(&tmp.path().join("data"), Table::Observations);
    assert_eq!(count(&rows), 2);
}
