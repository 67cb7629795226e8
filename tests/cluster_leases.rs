//! Cluster mode's alert partition leases with real processes (issue 13): three `carewatch
//! serve` nodes on one PostgreSQL (a real server started for the test) split the 64 alert
//! partitions between them (`carewatch_alert_partitions_owned` on each node's `/metrics`);
//! one is killed (`kill -9`): within 10 s the two others own every partition; one shuts down
//! cleanly: the last one owns them all. With shared tables alerting follows these leases
//! (tests/cluster_alerts.rs; ARCHITECTURE.md, "Partitioned alerting").

mod common;

use std::time::Duration;

use carewatch_fixtures::postgres::Postgres;
use common::{Server, partitions_owned as owned, wait_until};

#[test]
fn a_killed_nodes_alert_partitions_move_to_the_others_within_ten_seconds() {
    let pg = Postgres::start();
    let url = pg.url.clone();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let a = Server::start(dirs[0].path(), &["--postgres-url", &url]);
    let admin = a.admin().to_owned();
    assert_eq!(owned(&a, &admin), 64, "a lone node owns every partition");
    let mut b = Server::start(dirs[1].path(), &["--postgres-url", &url]);
    let mut c = Server::start(dirs[2].path(), &["--postgres-url", &url]);
    b.admin = Some(admin.clone());
    c.admin = Some(admin.clone());

    let counts =
        |nodes: &[&Server]| -> Vec<i64> { nodes.iter().map(|n| owned(n, &admin)).collect() };
    wait_until(
        "the three nodes to share the partitions (at most 22 = ⌈64 / 3⌉ each)",
        Duration::from_secs(30),
        || {
            let n = counts(&[&a, &b, &c]);
            n.iter().all(|x| (20..=22).contains(x)) && n.iter().sum::<i64>() == 64
        },
    );

    b.child.kill().expect("kill -9 b");
    let _ = b.child.wait();
    wait_until(
        "a and c to own every partition after b was killed",
        Duration::from_secs(10),
        || counts(&[&a, &c]) == [32, 32],
    );

    assert_eq!(c.stop(), 0, "a clean shutdown");
    wait_until(
        "a to own every partition after c gave its leases back",
        Duration::from_secs(10),
        || owned(&a, &admin) == 64,
    );
    assert_eq!(a.stop(), 0);
}

/// A node cut off from the cluster's PostgreSQL (here: the server stops) owns nothing and
/// cannot commit: `/readyz` answers 503 with the reason, so a load balancer sends its
/// traffic to the others; before, it answered 200 throughout.
#[test]
fn a_node_cut_off_from_postgresql_is_not_ready() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("tmp");
    let a = Server::start(dir.path(), &["--postgres-url", &pg.url]);
    let ready = || common::curl("GET", &format!("{}/readyz", a.http), "", "");
    wait_until("ready", Duration::from_secs(30), || ready().0 == 200);
    drop(pg);
    wait_until(
        "not ready without PostgreSQL",
        Duration::from_secs(15),
        || ready().0 == 503,
    );
    let (_, body) = ready();
    assert!(body.contains("PostgreSQL is unreachable"), "{body}");
    assert_eq!(a.stop(), 0, "still shuts down cleanly");
}

fn sql(srv: &Server, token: &str, q: &str) -> (u16, String) {
    let body = serde_json::json!({ "sql": q }).to_string();
    common::curl("POST", &format!("{}/v1/sql", srv.http), token, &body)
}

/// The audit trail is the cluster's (in PostgreSQL): a statement an analyst ran on one node is
/// in `audit_log` on another, and stays there after the first node is killed and its data
/// directory deleted. Before, each node wrote `audit.jsonl` in its own data directory. (The
/// line is written as the answer ends, after its bytes left: the test waits for it to show
/// before the kill rather than racing it.)
#[test]
fn the_audit_trail_is_shared_and_outlives_a_lost_node() {
    let pg = Postgres::start();
    let (da, db) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let mut a = Server::start(da.path(), &["--postgres-url", &pg.url]);
    let mut b = Server::start(db.path(), &["--postgres-url", &pg.url]);
    let admin = a.admin().to_owned();
    b.admin = Some(admin.clone());
    let analyst = a.token("analyst", None);
    let q = "SELECT count(*) AS n FROM observations WHERE value > 41";
    let (s, body) = sql(&a, &analyst, q);
    assert_eq!(s, 200, "{body}");
    let seen_on_b = || {
        let (s, body) = sql(
            &b,
            &admin,
            "SELECT statement, role, outcome FROM audit_log WHERE role = 'analyst'",
        );
        assert_eq!(s, 200, "{body}");
        let rows: serde_json::Value = serde_json::from_str(&body).expect("json");
        rows.as_array()
            .expect("rows")
            .iter()
            .any(|r| r["statement"] == q && r["outcome"] == "ok")
    };
    wait_until(
        "node a's statement in node b's audit_log",
        Duration::from_secs(10),
        seen_on_b,
    );
    a.child.kill().expect("kill -9 a");
    let _ = a.child.wait();
    drop(da);
    assert!(seen_on_b(), "the line went with node a");
    assert_eq!(b.stop(), 0);
}
