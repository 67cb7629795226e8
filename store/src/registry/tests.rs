//! Registry tests: persistence, attribution, credentials, teams, concurrency.
use super::*;

#[test]
fn fresh_registry_prints_admin_once_and_persists() {
    let dir = tempfile::tempdir().expect("tmp");
    let (r, admin) = Registry::open(dir.path()).expect("open");
    let admin = admin.expect("admin token on first open");
    assert_eq!(r.authenticate(&admin).map(|p| p.role), Some(Role::Admin));
    drop(r);
    let (r, again) = Registry::open(dir.path()).expect("reopen");
    assert_eq!(again, None);
    assert_eq!(r.authenticate(&admin).map(|p| p.role), Some(Role::Admin));
    assert_eq!(r.authenticate("cw_nope"), None);
    // Only hashes are stored.
    let text = std::fs::read_to_string(dir.path().join("registry.log")).expect("read");
    assert!(!text.contains(&admin));
}

#[test]
fn reassignment_attributes_by_effective_time_and_rotates_secret() {
    let dir = tempfile::tempdir().expect("tmp");
    let (r, _) = Registry::open(dir.path()).expect("open");
    let s1 = r
        .register_device("w1", "alice", Some(1_000))
        .expect("register");
    assert!(r.device_login("w1", &s1));
    assert!(!r.device_login("w2", &s1));
    let s2 = r
        .register_device("w1", "bob", Some(5_000))
        .expect("reassign");
    assert!(!r.device_login("w1", &s1), "old secret revoked");
    assert!(r.device_login("w1", &s2));
    assert_eq!(r.attribute("w1", 999), Attribution::Unassigned);
    assert_eq!(
        r.attribute("w1", 1_000),
        Attribution::Patient("alice".into())
    );
    assert_eq!(
        r.attribute("w1", 4_999),
        Attribution::Patient("alice".into())
    );
    assert_eq!(r.attribute("w1", 5_000), Attribution::Patient("bob".into()));
    assert_eq!(r.attribute("nobody", 5_000), Attribution::UnknownDevice);
    assert!(r.revoke_device("w1").expect("revoke"));
    assert_eq!(r.attribute("w1", 5_000), Attribution::Revoked);
    assert!(!r.device_login("w1", &s2));
    assert!(r.register_device("w2", "carol", Some(10)).is_ok());
    assert!(
        r.register_device("w2", "dave", Some(5)).is_err(),
        "cannot start before the current one"
    );
}

#[test]
fn credentials_expire_revoke_and_list_without_secrets() {
    let dir = tempfile::tempdir().expect("tmp");
    let (r, admin) = Registry::open(dir.path()).expect("open");
    let admin = admin.expect("admin");
    let (analyst, info) = r
        .create_token_expiring(Role::Analyst, None, None)
        .expect("analyst");
    let past = now_us() - 1;
    let (expired, _) = r
        .create_token_expiring(Role::Analyst, None, Some(past))
        .expect("expired");
    assert!(r.authenticate(&expired).is_none(), "expired is refused");
    let p = r.authenticate(&analyst).expect("analyst works");
    assert_eq!(p.id, info.id);
    assert!(r.still_valid(&info.id));
    let listed = r.tokens();
    assert_eq!(listed.len(), 3);
    let me = listed.iter().find(|t| t.id == info.id).expect("listed");
    assert!(me.last_used_us.is_some(), "last use recorded");
    let json = serde_json::to_string(&listed).expect("json");
    assert!(!json.contains(&analyst[3..]) && !json.contains(&hash(&analyst)));
    assert!(r.revoke_token(&info.id).expect("revoke"));
    assert!(!r.revoke_token(&info.id).expect("again"), "already revoked");
    assert!(!r.revoke_token("nope").expect("unknown"));
    assert!(r.authenticate(&analyst).is_none());
    assert!(!r.still_valid(&info.id));
    // Survives a reopen, with the last use folded in by the write.
    drop(r);
    let (r, _) = Registry::open(dir.path()).expect("reopen");
    assert!(r.authenticate(&analyst).is_none());
    assert!(r.authenticate(&admin).is_some());
    let me = r
        .tokens()
        .into_iter()
        .find(|t| t.id == info.id)
        .expect("listed");
    assert!(me.revoked_us.is_some() && me.last_used_us.is_some());
}

#[test]
fn unassigned_is_not_a_team() {
    let dir = tempfile::tempdir().expect("tmp");
    let (r, _) = Registry::open(dir.path()).expect("open");
    assert!(r.set_care_team("alice", UNASSIGNED).is_err());
    assert!(r.set_care_team("alice", " ").is_err());
    assert!(
        r.create_token_expiring(Role::CareManager, Some(UNASSIGNED.into()), None)
            .is_err()
    );
    assert!(r.create_token(Role::CareManager, None).is_err());
    assert!(
        r.create_token(Role::CareManager, Some("team-a".into()))
            .is_ok()
    );
}

#[test]
fn a_device_credential_stops_when_the_device_is_reassigned_or_revoked() {
    let dir = tempfile::tempdir().expect("tmp");
    let (r, _) = Registry::open(dir.path()).expect("open");
    let s1 = r.register_device("w1", "alice", Some(1)).expect("register");
    let id1 = r.authenticate(&s1).expect("device").id;
    assert!(r.still_valid(&id1));
    let s2 = r.register_device("w1", "bob", Some(5)).expect("reassign");
    assert!(!r.still_valid(&id1), "old secret's sessions must close");
    let id2 = r.authenticate(&s2).expect("device").id;
    assert!(r.revoke_device("w1").expect("revoke"));
    assert!(!r.still_valid(&id2));
}

/// Parallel enrolments beside unknown-token logins and another process writing the same
/// file: the old lock order (`seen` then `data` in reload, `data` then `seen` in save)
/// deadlocked here (issue #18). A watchdog turns a hang into a failure.
#[test]
fn parallel_writes_and_unknown_tokens_never_deadlock() {
    let dir = tempfile::tempdir().expect("tmp");
    let (r, _) = Registry::open(dir.path()).expect("open");
    let r = std::sync::Arc::new(r);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    for w in 0..4 {
        let r = r.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..40 {
                r.register_device(&format!("w{w}-{i}"), &format!("p{w}-{i}"), Some(1))
                    .expect("register");
            }
        }));
    }
    for _ in 0..2 {
        let r = r.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..400 {
                assert!(r.authenticate(&format!("cw_unknown{i}")).is_none());
                r.refresh();
            }
        }));
    }
    let other_dir = dir.path().to_owned();
    threads.push(std::thread::spawn(move || {
        let (other, _) = Registry::open(&other_dir).expect("second opener");
        for i in 0..40 {
            let _ = other.set_care_team(&format!("x{i}"), "team-x");
        }
    }));
    std::thread::spawn(move || {
        for t in threads {
            t.join().expect("thread");
        }
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("registry threads deadlocked");
    assert!(r.devices().len() >= 1);
}

#[test]
fn a_first_assignment_covers_the_backlog_and_a_reassignment_starts_now() {
    let dir = tempfile::tempdir().expect("tmp");
    let (r, _) = Registry::open(dir.path()).expect("open");
    r.register_device("phone", "alice", None).expect("enrol");
    // A reading recorded days before enrolment, synced right after it.
    let backlog = now_us() - 3 * 86_400_000_000;
    assert_eq!(
        r.attribute("phone", backlog),
        Attribution::Patient("alice".into())
    );
    let before = now_us();
    r.register_device("phone", "bob", None).expect("re-issue");
    assert_eq!(
        r.attribute("phone", backlog),
        Attribution::Patient("alice".into())
    );
    assert_eq!(
        r.attribute("phone", before - 1),
        Attribution::Patient("alice".into())
    );
    assert_eq!(
        r.attribute("phone", now_us() + 1_000_000),
        Attribution::Patient("bob".into())
    );
}
