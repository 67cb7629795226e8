//! SQL over a running server's `/v1/sql`, and the patients a token sees, for the FHIR tests.

#![allow(dead_code)] // each test file uses part of it

use serde_json::Value;

use crate::common::{Server, curl};

pub fn sql(srv: &Server, q: &str) -> Vec<Value> {
    let (s, body) = curl("POST", &format!("{}/v1/sql", srv.http), srv.admin(), q);
    assert_eq!(s, 200, "{body}");
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .flat_map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Array(a)) => a,
            Ok(v) => vec![v],
            Err(_) => vec![],
        })
        .collect()
}

pub fn count(srv: &Server, q: &str) -> i64 {
    sql(srv, q)
        .first()
        .and_then(|r| r["n"].as_i64())
        .unwrap_or(-1)
}

/// The patient ids `GET /v1/patients` lists for `token`.
pub fn patient_ids(srv: &Server, token: &str) -> Vec<String> {
    let (s, b) = curl("GET", &format!("{}/v1/patients", srv.http), token, "");
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).expect("json");
    v["patients"]
        .as_array()
        .expect("patients")
        .iter()
        .filter_map(|p| p["patient_id"].as_str().map(str::to_owned))
        .collect()
}
