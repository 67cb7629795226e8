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
