//! Role and care-team scope: who may see which patient. Alert visibility, dashboard feeds,
//! FHIR search and the alert topics all ask here, always against the patient's *current*
//! care team in the registry.

use carewatch_store::registry::{Principal, Registry, Role, valid_team};

/// Admins and analysts see every patient.
pub fn sees_all_patients(p: &Principal) -> bool {
    matches!(p.role, Role::Admin | Role::Analyst)
}

/// The care team a care manager acts for (`None` for other roles, and for a care manager whose
/// subject is not a valid team, e.g. `unassigned`).
pub fn team_of(p: &Principal) -> Option<&str> {
    match p.role {
        Role::CareManager => p.subject.as_deref().filter(|t| valid_team(t)),
        _ => None,
    }
}

/// Whether `p` may see `patient` now: everyone for admins and analysts; for a care manager,
/// only while the patient's current care team is theirs; never for devices.
pub fn may_see_patient(registry: &Registry, p: &Principal, patient: &str) -> bool {
    if sees_all_patients(p) {
        return true;
    }
    team_of(p).is_some_and(|team| registry.care_team(patient).as_deref() == Some(team))
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
}
