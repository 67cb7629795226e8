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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
