use super::*;
use carewatch_transform::catalogue::by_code;

fn reading(code: &str, value: f64) -> Reading {
    Reading {
        device_id: "dev-1".into(),
        patient_id: Some("pat-1".into()),
        vital: by_code(code).unwrap(),
        value,
        effective_us: 1_700_000_000_000_000,
        effective_end_us: None,
        offset_min: Some(60),
        extra: None,
    }
}

#[test]
fn blood_pressure_is_one_observation_with_an_identifier_and_no_id() {
    let (s, d) = (reading("8480-6", 120.0), reading("8462-4", 80.0));
    let e = entry(&[&s, &d], DEFAULT_IDENTIFIER_SYSTEM).unwrap();
    assert_eq!(e.id, s.observation_id());
    let o = &e.resource;
    assert_eq!(o["resourceType"], "Observation");
    assert!(o.get("id").is_none());
    assert_eq!(
        o["identifier"][0],
        json!({"system": DEFAULT_IDENTIFIER_SYSTEM, "value": e.id})
    );
    assert_eq!(o["component"].as_array().unwrap().len(), 2);
    assert_eq!(o["component"][0]["valueQuantity"]["value"], 120);
    // The same view carewatch serves, apart from id and identifier.
    let mut ours = carewatch_fhir::observation_json(&[&s, &d], None).unwrap();
    ours.as_object_mut().unwrap().remove("id");
    let mut sent = o.clone();
    sent.as_object_mut().unwrap().remove("identifier");
    assert_eq!(sent, ours);
}

#[test]
fn bundle_entries_are_conditional_updates() {
    let r = reading("8867-4", 72.0);
    let e = entry(&[&r], "urn:carewatch:observation").unwrap();
    let b = bundle(std::slice::from_ref(&e), Kind::Batch);
    assert_eq!(b["type"], "batch");
    assert_eq!(b["entry"][0]["request"]["method"], "PUT");
    assert_eq!(
        b["entry"][0]["request"]["url"],
        format!(
            "Observation?identifier=urn%3Acarewatch%3Aobservation%7C{}",
            e.id
        )
    );
    assert!(
        b["entry"][0]["fullUrl"]
            .as_str()
            .unwrap()
            .starts_with("urn:uuid:")
    );
}

#[test]
fn a_reading_without_patient_is_an_error_without_ids() {
    let mut r = reading("8867-4", 72.0);
    r.patient_id = None;
    let err = entry(&[&r], DEFAULT_IDENTIFIER_SYSTEM).unwrap_err();
    assert!(!err.contains("dev-1"), "{err}");
}

#[test]
fn outcomes_per_entry() {
    let oo = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]});
    let resp = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
        {"response": {"status": "201 Created", "location": "Observation/9/_history/1"}},
        {"response": {"status": "422 Unprocessable Entity", "outcome": oo}},
        {"response": {"status": "503"}},
        {"response": {"status": "400"}},
    ]});
    let o = outcomes(&resp, 5);
    assert_eq!(
        o[0],
        Outcome::Stored(Answer {
            status: "201 Created".into(),
            location: Some("Observation/9/_history/1".into()),
            ..Answer::default()
        })
    );
    assert_eq!(
        o[1],
        Outcome::Refused {
            status: 422,
            outcome: oo
        }
    );
    assert_eq!(o[2], Outcome::Retry(503));
    assert!(matches!(o[3], Outcome::Refused { status: 400, .. }));
    assert_eq!(o[4], Outcome::Retry(0));
    assert_eq!(outcomes(&json!("nonsense"), 1), vec![Outcome::Retry(0)]);
    assert!(refuses(404) && !refuses(429) && !refuses(408) && !refuses(500));
}
