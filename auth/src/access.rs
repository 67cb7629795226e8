//! Role and care-team scope: who may see which patient. Alert visibility, dashboard feeds,
//! FHIR search and the alert topics all ask here, always against the patient's *current*
//! care team in the registry.

use carewatch_store::registry::{Principal, Registry, Role, valid_team};

/// Admins and analysts see every patient.
pub fn sees_all_patients(p: &Principal) -> bool {
    matches!(p.role, Role::Admin | Role::Analyst)
}

/// The care teams a care manager acts for: a team credential's one team, or every team in a
/// person's token (a person may belong to several). Empty for other roles, and never holds
/// something that is not a valid team (e.g. `unassigned`).
pub fn teams(p: &Principal) -> Vec<&str> {
    if p.role != Role::CareManager {
        return Vec::new();
    }
    match &p.person {
        Some(person) => person
            .teams
            .iter()
            .map(String::as_str)
            .filter(|t| valid_team(t))
            .collect(),
        None => p
            .subject
            .as_deref()
            .filter(|t| valid_team(t))
            .into_iter()
            .collect(),
    }
}

/// Whether a care manager acts for `team` (false for other roles and for non-teams).
pub fn in_team(p: &Principal, team: &str) -> bool {
    valid_team(team) && teams(p).contains(&team)
}

/// The first care team a care manager acts for (see [`teams`] for all of them).
pub fn team_of(p: &Principal) -> Option<&str> {
    teams(p).into_iter().next()
}

/// The patients a care manager holds break-glass access to now (outside their teams).
pub fn break_glass_patients(p: &Principal) -> &[String] {
    match (&p.person, p.role) {
        (Some(person), Role::CareManager) => &person.break_glass,
        _ => &[],
    }
}

/// Whether a care manager holds break-glass access to `patient` now.
pub fn by_break_glass(p: &Principal, patient: &str) -> bool {
    break_glass_patients(p).iter().any(|x| x == patient)
}

/// Whether `p` may see `patient` now: everyone for admins and analysts; for a care manager,
/// only while the patient's current care team is one of theirs, or under a break-glass grant;
/// never for devices.
pub fn may_see_patient(registry: &Registry, p: &Principal, patient: &str) -> bool {
    if sees_all_patients(p) || by_break_glass(p, patient) {
        return true;
    }
    registry
        .care_team(patient)
        .is_some_and(|team| in_team(p, &team))
}

/// The patients `p` may see now when that is not everyone (`None`: admins and analysts): a
/// care manager's teams' current patients and the patients of their live break-glass grants;
/// nobody for devices. FHIR search filters by this.
pub fn patients_in_scope(registry: &Registry, p: &Principal) -> Option<Vec<String>> {
    if sees_all_patients(p) {
        return None;
    }
    let mut v: Vec<String> = registry
        .care_teams()
        .into_iter()
        .filter(|(_, t)| in_team(p, t))
        .map(|(patient, _)| patient)
        .chain(break_glass_patients(p).iter().cloned())
        .collect();
    v.sort();
    v.dedup();
    Some(v)
}

/// Whether a care manager may follow the alert feed of `team` (the MQTT topic
/// `carewatch/alerts/{team}`): one of their teams, or the current team of a patient they hold
/// break-glass access to — then they receive that patient's alerts only (each message is
/// checked with [`may_see_patient`]).
pub fn may_follow_team(registry: &Registry, p: &Principal, team: &str) -> bool {
    valid_team(team)
        && (in_team(p, team)
            || break_glass_patients(p)
                .iter()
                .any(|x| registry.care_team(x).as_deref() == Some(team)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role, subject: Option<&str>) -> Principal {
        Principal {
            id: "x".into(),
            role,
            subject: subject.map(str::to_owned),
            person: None,
        }
    }

    #[test]
    fn care_managers_see_their_current_team_only() {
        let dir = std::env::temp_dir().join(format!("cw-access-{}", std::process::id()));
        let (r, _) = Registry::open(&dir).expect("open");
        r.set_care_team("p1", "team-a").expect("team");
        let a = who(Role::CareManager, Some("team-a"));
        let b = who(Role::CareManager, Some("team-b"));
        assert!(may_see_patient(&r, &a, "p1"));
        assert!(!may_see_patient(&r, &b, "p1"));
        r.set_care_team("p1", "team-b").expect("move");
        assert!(!may_see_patient(&r, &a, "p1"), "follows the patient");
        assert!(may_see_patient(&r, &b, "p1"));
        assert!(!may_see_patient(&r, &a, "nobody"));
        let unassigned = who(Role::CareManager, Some("unassigned"));
        assert!(!may_see_patient(&r, &unassigned, "nobody"));
        assert!(!may_see_patient(&r, &who(Role::Device, Some("w1")), "p1"));
        assert!(may_see_patient(&r, &who(Role::Analyst, None), "p1"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_person_in_several_teams_sees_the_union() {
        use carewatch_store::registry::Person;
        let dir = std::env::temp_dir().join(format!("cw-access-p-{}", std::process::id()));
        let (r, _) = Registry::open(&dir).expect("open");
        r.set_care_team("p1", "north").expect("team");
        r.set_care_team("p2", "south").expect("team");
        r.set_care_team("p3", "east").expect("team");
        let mut alice = who(Role::CareManager, None);
        alice.person = Some(Person {
            sub: "alice".into(),
            name: "Alice".into(),
            teams: vec!["north".into(), "south".into(), "unassigned".into()],
            expires_us: i64::MAX,
            break_glass: Vec::new(),
        });
        assert!(may_see_patient(&r, &alice, "p1") && may_see_patient(&r, &alice, "p2"));
        assert!(!may_see_patient(&r, &alice, "p3"));
        assert_eq!(
            teams(&alice),
            vec!["north", "south"],
            "unassigned is not a team"
        );
        assert!(!in_team(&alice, "unassigned"));
        assert_eq!(
            patients_in_scope(&r, &alice),
            Some(vec!["p1".to_owned(), "p2".to_owned()])
        );
        assert!(!may_follow_team(&r, &alice, "east"));
        // Break-glass on p3: p3 (and only p3 of east) joins her scope.
        r.set_care_team("p4", "east").expect("team");
        if let Some(person) = alice.person.as_mut() {
            person.break_glass = vec!["p3".into()];
        }
        assert!(may_see_patient(&r, &alice, "p3") && !may_see_patient(&r, &alice, "p4"));
        assert_eq!(patients_in_scope(&r, &alice).map(|v| v.len()), Some(3));
        assert!(may_follow_team(&r, &alice, "east"));
        assert!(!may_follow_team(&r, &alice, "west"));
        assert_eq!(patients_in_scope(&r, &who(Role::Analyst, None)), None);
        assert_eq!(
            patients_in_scope(&r, &who(Role::Device, Some("w"))),
            Some(vec![])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
