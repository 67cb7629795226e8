//! Registry tests for the fleet: bulk enrolment, the log (torn writes, migration, several
//! writers, compaction) and the fleet view.
use super::*;

fn item(device: &str, patient: &str) -> Enrolment {
    Enrolment {
        device_id: device.into(),
        patient_id: patient.into(),
        valid_from_us: Some(1_000),
        valid_to_us: None,
        reassign: false,
    }
}

fn secret(r: &std::result::Result<Enrolled, EnrolError>) -> String {
    match r {
        Ok(Enrolled::New(s) | Enrolled::Reassigned(s)) => s.clone(),
        other => panic!("no secret: {other:?}"),
    }
}

#[test]
fn a_batch_answers_per_item_and_keeps_every_good_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let (r, _) = Registry::open(dir.path()).expect("open");
    r.register_device("taken", "alice", Some(1))
        .expect("register");
    let batch = vec![
        item("d1", "p1"),
        item("d2", "bad\npatient"),
        item("d3", "p3"),
        item("d1", "p9"),
        item("taken", "bob"),
        item("d4", "p4"),
    ];
    let out = r.enrol(&batch).expect("enrol");
    assert!(matches!(out[0], Ok(Enrolled::New(_))));
    assert!(
        matches!(out[1], Err(EnrolError::Invalid(_))),
        "{:?}",
        out[1]
    );
    assert!(matches!(out[2], Ok(Enrolled::New(_))));
    assert_eq!(out[3], Err(EnrolError::Duplicate));
    assert_eq!(out[4], Err(EnrolError::AssignedElsewhere));
    assert!(matches!(out[5], Ok(Enrolled::New(_))));
    for (i, (dev, pat)) in [(0, ("d1", "p1")), (2, ("d3", "p3")), (5, ("d4", "p4"))] {
        assert!(r.device_login(dev, &secret(&out[i])), "{dev} logs in");
        assert_eq!(r.attribute(dev, 2_000), Attribution::Patient(pat.into()));
    }
    assert_eq!(r.attribute("d2", 2_000), Attribution::UnknownDevice);
    assert_eq!(
        r.attribute("taken", 2_000),
        Attribution::Patient("alice".into())
    );
    // Durable: a reopen sees the same.
    drop(r);
    let (r, _) = Registry::open(dir.path()).expect("reopen");
    assert!(r.device_login("d4", &secret(&out[5])));
}

#[test]
fn resending_a_batch_changes_nothing_and_says_so() {
    let dir = tempfile::tempdir().expect("tmp");
    let (r, _) = Registry::open(dir.path()).expect("open");
    let batch = vec![item("d1", "p1"), item("d2", "p2")];
    let first = r.enrol(&batch).expect("enrol");
    let log = dir.path().join("registry.log");
    let size = std::fs::metadata(&log).expect("log").len();
    let again = r.enrol(&batch).expect("again");
    assert_eq!(
        again,
        vec![Ok(Enrolled::Unchanged), Ok(Enrolled::Unchanged)]
    );
    assert_eq!(
        std::fs::metadata(&log).expect("log").len(),
        size,
        "nothing written"
    );
    // The first secrets still work: nothing was rotated.
    assert!(r.device_login("d1", &secret(&first[0])));
    // Without valid_from, "as asked" means the same patient, open-ended.
    let mut loose = item("d2", "p2");
    loose.valid_from_us = None;
    assert_eq!(
        r.enrol(&[loose]).expect("loose"),
        vec![Ok(Enrolled::Unchanged)]
    );
    // Moving a device must be asked for, and then rotates its secret.
    let mut moved = item("d1", "p7");
    assert_eq!(
        r.enrol(std::slice::from_ref(&moved)).expect("refused"),
        vec![Err(EnrolError::AssignedElsewhere)]
    );
    moved.reassign = true;
    moved.valid_from_us = Some(5_000);
    moved.valid_to_us = Some(9_000);
    let out = r.enrol(std::slice::from_ref(&moved)).expect("moved");
    assert!(matches!(out[0], Ok(Enrolled::Reassigned(_))));
    assert!(
        !r.device_login("d1", &secret(&first[0])),
        "old secret revoked"
    );
    assert_eq!(r.attribute("d1", 4_999), Attribution::Patient("p1".into()));
    assert_eq!(r.attribute("d1", 5_000), Attribution::Patient("p7".into()));
    assert_eq!(r.attribute("d1", 9_000), Attribution::Unassigned);
    assert_eq!(
        r.enrol(std::slice::from_ref(&moved)).expect("again"),
        vec![Ok(Enrolled::Unchanged)]
    );
    r.revoke_device("d2").expect("revoke");
    assert_eq!(
        r.enrol(&[item("d2", "p2")]).expect("revoked"),
        vec![Err(EnrolError::Revoked)]
    );
}

/// A write torn anywhere (a crash mid-batch) leaves each item enrolled whole or not at all,
/// and the registry opens and takes writes again.
#[test]
fn a_torn_batch_leaves_each_item_whole_or_absent() {
    let dir = tempfile::tempdir().expect("tmp");
    let (r, _) = Registry::open(dir.path()).expect("open");
    let log = dir.path().join("registry.log");
    let before = std::fs::metadata(&log).expect("log").len() as usize;
    let batch: Vec<_> = (0..4)
        .map(|i| item(&format!("d{i}"), &format!("p{i}")))
        .collect();
    r.enrol(&batch).expect("enrol");
    drop(r);
    let full = std::fs::read(&log).expect("read");
    let mut seen_counts = std::collections::BTreeSet::new();
    // Every line boundary and its neighbours, and a stride through each line.
    let mut cuts: std::collections::BTreeSet<usize> = (before..=full.len()).step_by(11).collect();
    for (i, _) in full
        .iter()
        .enumerate()
        .skip(before)
        .filter(|(_, b)| **b == b'\n')
    {
        cuts.extend([i, i + 1, (i + 2).min(full.len())]);
    }
    cuts.insert(full.len());
    for cut in cuts {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("registry.log"), &full[..cut]).expect("write");
        let (r, _) = Registry::open(d.path()).expect("open torn");
        let tokens = r.tokens();
        let mut whole = 0;
        for i in 0..4 {
            let dev = format!("d{i}");
            let has_device = r.attribute(&dev, 2_000) == Attribution::Patient(format!("p{i}"));
            let has_secret = tokens
                .iter()
                .any(|t| t.subject.as_deref() == Some(dev.as_str()) && t.revoked_us.is_none());
            assert_eq!(has_device, has_secret, "cut at {cut}: {dev} half enrolled");
            whole += usize::from(has_device);
        }
        seen_counts.insert(whole);
        // The torn tail is cut and the log takes writes that survive a reopen.
        r.register_device("after", "px", Some(1))
            .expect("write after the cut");
        drop(r);
        let (r, _) = Registry::open(d.path()).expect("reopen");
        assert_eq!(r.attribute("after", 5), Attribution::Patient("px".into()));
    }
    assert_eq!(seen_counts.len(), 5, "cuts covered 0..=4 whole items");
}

#[test]
fn an_old_registry_json_is_migrated_on_open() {
    let old = tempfile::tempdir().expect("tmp");
    let (r, admin) = Registry::open(old.path()).expect("open");
    let admin = admin.expect("admin");
    let s = r.register_device("w1", "alice", Some(1)).expect("register");
    r.set_care_team("alice", "north").expect("team");
    let json = r.read(|d| serde_json::to_vec_pretty(d)).expect("json");
    drop(r);
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("registry.json"), &json).expect("write");
    // Read-only tools read the old file as it is, without migrating it.
    let ro = Registry::open_read_only(dir.path()).expect("read only");
    assert!(ro.device_login("w1", &s));
    assert!(dir.path().join("registry.json").exists());
    assert!(ro.register_device("w2", "bob", None).is_err(), "read-only");
    let (r, again) = Registry::open(dir.path()).expect("migrate");
    assert_eq!(again, None, "no new admin: the old one is kept");
    assert!(r.authenticate(&admin).is_some());
    assert!(r.device_login("w1", &s));
    assert_eq!(r.care_team("alice").as_deref(), Some("north"));
    assert!(!dir.path().join("registry.json").exists());
    assert!(dir.path().join("registry.json.migrated").exists());
    drop(r);
    let (r, _) = Registry::open(dir.path()).expect("reopen");
    assert!(r.device_login("w1", &s));
}

#[test]
fn the_fleet_view_filters_and_pages() {
    let dir = tempfile::tempdir().expect("tmp");
    let (r, _) = Registry::open(dir.path()).expect("open");
    let batch: Vec<_> = (0..10)
        .map(|i| item(&format!("d{i}"), &format!("p{}", i % 3)))
        .collect();
    r.enrol(&batch).expect("enrol");
    r.set_care_team("p0", "north").expect("team");
    r.revoke_device("d9").expect("revoke");
    r.note_seen(["d1", "d2"], 5_000);
    r.note_seen(["d2"], 9_000);
    let ids = |f: &DeviceFilter| -> Vec<String> {
        r.list_devices(f)
            .0
            .into_iter()
            .map(|d| d.device_id)
            .collect()
    };
    let all = DeviceFilter {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(ids(&all).len(), 10);
    // Pages of 4 cover everything once.
    let mut got = Vec::new();
    let mut f = DeviceFilter {
        limit: 4,
        ..Default::default()
    };
    loop {
        let (page, next) = r.list_devices(&f);
        got.extend(page.into_iter().map(|d| d.device_id));
        match next {
            Some(n) => f.after = Some(n),
            None => break,
        }
    }
    assert_eq!(got, ids(&all));
    let with = |g: fn(&mut DeviceFilter)| {
        let mut f = all.clone();
        g(&mut f);
        ids(&f)
    };
    assert_eq!(with(|f| f.patient = Some("p1".into())), ["d1", "d4", "d7"]);
    assert_eq!(
        with(|f| f.care_team = Some("north".into())),
        ["d0", "d3", "d6"]
    );
    assert_eq!(with(|f| f.revoked = Some(true)), ["d9"]);
    assert_eq!(with(|f| f.never_seen = Some(false)), ["d1", "d2"]);
    assert_eq!(with(|f| f.seen_before_us = Some(6_000)), ["d1"]);
    assert_eq!(with(|f| f.never_seen = Some(true)).len(), 8);
    assert_eq!(r.last_seen("d2"), Some(9_000));
    // Last sightings are written with the next change and survive a reopen.
    r.set_care_team("p1", "south").expect("a write");
    drop(r);
    let (r, _) = Registry::open(dir.path()).expect("reopen");
    assert_eq!(r.last_seen("d2"), Some(9_000));
}
