//! Care teams from the FHIR destination (lookup mode): the hospital already says who looks after
//! whom as `CareTeam` resources, so carewatch reads its teams from there instead of having
//! them typed in.
//!
//! Each patient a device is enrolled for (now) is looked up when first seen and again every
//! `care_team_recheck`: `GET CareTeam?subject=Patient/a,Patient/b,…&status=active`
//! (`&category=` when configured), [`BATCH`] patients per request and at most [`REQUESTS`]
//! requests per pass, so a large registry is walked over several passes instead of stalling
//! device lookup. The registry is walked for due patients at most every [`WALK_EVERY`], at once
//! after a pass enrolled a device. Per patient, the active CareTeams whose `subject` is the patient are read as
//! carewatch reads a written one (`care_team_member`: the team is `CareTeam.name`):
//! - exactly one team name: the patient is placed in that team (`Registry::set_care_team`, a
//!   no-op when it is the team already) — a CareTeam renamed or replaced on the server moves
//!   the patient at the next recheck;
//! - none: nothing changes (a patient leaves a team by joining another, as with
//!   `/fhir/CareTeam`; an ended CareTeam does not silently hide a patient from its carers);
//! - several names: ambiguous, nothing is chosen (logged without ids).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use carewatch_ingest::identity::care_team_member;

use super::Lookup;

/// Patients per search request.
const BATCH: usize = 50;
/// Search requests per pass.
const REQUESTS: usize = 20;
/// The registry's patients are walked for due teams at most this often (or the recheck, when
/// shorter), unless a pass resolved a device or the last walk left patients due.
const WALK_EVERY: Duration = Duration::from_secs(5);

impl Lookup {
    /// Looks up the care teams of the patients that are due (`resolved`: this pass enrolled
    /// devices, whose patients are due at once).
    pub(super) async fn teams(&mut self, resolved: bool) -> Result<(), &'static str> {
        let every = WALK_EVERY.min(self.config.care_team_recheck);
        if !resolved
            && self
                .teams_walked
                .is_some_and(|(t, behind)| !behind && t.elapsed() < every)
        {
            return Ok(());
        }
        let due = self.patients_due();
        self.teams_walked = Some((Instant::now(), due.len() > BATCH * REQUESTS));
        let (mut moved, mut ambiguous) = (0usize, 0usize);
        for chunk in due.chunks(BATCH).take(REQUESTS) {
            let names = self.search_teams(chunk).await?;
            for p in chunk {
                self.teams_asked.insert(p.clone(), Instant::now());
                match names
                    .get(p)
                    .map(|s| s.iter().collect::<Vec<_>>())
                    .as_deref()
                {
                    Some([team]) => moved += usize::from(self.place(p, team).await?),
                    Some([_, _, ..]) => ambiguous += 1,
                    _ => {}
                }
            }
        }
        if moved > 0 {
            tracing::info!(destination = %self.d.label, patients = moved, "care teams set from the FHIR destination's CareTeams");
        }
        if ambiguous > 0 {
            tracing::warn!(destination = %self.d.label, patients = ambiguous, "several active CareTeams name different teams for one patient; none is chosen");
        }
        Ok(())
    }

    /// Patients with a current enrolment whose team was not asked for within the recheck.
    fn patients_due(&self) -> Vec<String> {
        let patients: BTreeSet<String> = self
            .pipeline
            .registry
            .devices()
            .into_iter()
            .filter(|d| d.revoked_us.is_none())
            .filter_map(|d| {
                d.assignments
                    .into_iter()
                    .rev()
                    .find(|a| a.valid_to_us.is_none())
                    .map(|a| a.patient_id)
            })
            .collect();
        let every = self.config.care_team_recheck;
        patients
            .into_iter()
            .filter(|p| self.teams_asked.get(p).is_none_or(|t| t.elapsed() >= every))
            .collect()
    }

    /// Patient -> the team names of its active CareTeams, for one batch of patients.
    async fn search_teams(
        &self,
        patients: &[String],
    ) -> Result<BTreeMap<String, BTreeSet<String>>, &'static str> {
        let subjects = patients
            .iter()
            .map(|p| format!("Patient/{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let count = (patients.len() * 4).to_string();
        let mut query = vec![
            ("subject", subjects.as_str()),
            ("status", "active"),
            ("_count", count.as_str()),
        ];
        if let Some(c) = &self.config.care_team_category {
            query.push(("category", c.as_str()));
        }
        let bundle = self
            .d
            .client
            .get_json("CareTeam", &query)
            .await
            .map_err(|e| e.class())?;
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let entries = bundle.get("entry").and_then(Value::as_array);
        for r in entries
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("resource"))
        {
            let active = r
                .get("status")
                .and_then(Value::as_str)
                .is_none_or(|s| s == "active");
            if r.get("resourceType").and_then(Value::as_str) != Some("CareTeam") || !active {
                continue;
            }
            // A CareTeam without a usable subject or name names no team (never guessed).
            if let Ok((p, team)) = care_team_member(r)
                && patients.contains(&p)
            {
                out.entry(p).or_default().insert(team);
            }
        }
        if bundle
            .pointer("/link")
            .and_then(Value::as_array)
            .is_some_and(|l| {
                l.iter()
                    .any(|k| k.get("relation").and_then(Value::as_str) == Some("next"))
            })
        {
            // More CareTeams than asked for: what was not seen may name a second team.
            tracing::warn!(destination = %self.d.label, "CareTeam search answered in pages; those patients' teams are left as they are");
            return Ok(BTreeMap::new());
        }
        Ok(out)
    }

    /// Places `patient` in `team`; whether that changed anything.
    async fn place(&self, patient: &str, team: &str) -> Result<bool, &'static str> {
        let r = self.pipeline.registry.clone();
        if r.care_team(patient).as_deref() == Some(team) {
            return Ok(false);
        }
        let (p, t) = (patient.to_owned(), team.to_owned());
        match tokio::task::spawn_blocking(move || r.set_care_team(&p, &t)).await {
            Ok(Ok(())) => Ok(true),
            _ => Err("store"),
        }
    }
}
