//! The Delta table on an S3-compatible store as an outside reader sees it: the `deltalake`
//! Python package (cluster tests).

use std::process::Command;

use carewatch_fixtures::garage::Garage;

use super::python;

/// Rows and distinct natural keys of the Delta table at an s3:// URL, read by `deltalake`.
/// It leaves through `os._exit` once the answer is out: the interpreter's teardown now and then
/// aborts in the S3 client's threads ("terminate called without an active exception").
const READ: &str = r#"
import json, os, sys, deltalake
url, endpoint, key, secret, region = sys.argv[1:6]
opts = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": region, "AWS_ALLOW_HTTP": "true", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
try:
    t = deltalake.DeltaTable(url, storage_options=opts).to_pyarrow_table(
        columns=["patient_id", "device_id", "code", "effective_time"])
except Exception as e:  # not created yet
    print(json.dumps({"rows": -1, "keys": -1, "error": type(e).__name__}), flush=True)
    os._exit(0)
cols = [t[c].cast("string").to_pylist() for c in t.column_names]
print(json.dumps({"rows": t.num_rows, "keys": len(set(zip(*cols)))}), flush=True)
os._exit(0)
"#;

/// Where and how to reach the store (what a reader thread takes along).
#[derive(Debug, Clone)]
pub struct S3 {
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
    pub region: String,
}

impl S3 {
    pub fn of(g: &Garage) -> S3 {
        S3 {
            endpoint: g.endpoint.clone(),
            key_id: g.key_id.clone(),
            secret: g.secret.clone(),
            region: g.region.clone(),
        }
    }
}

/// [`read_counts`] on Garage `g`.
pub fn delta_counts(g: &Garage, table_url: &str) -> (i64, i64) {
    read_counts(&S3::of(g), table_url)
}

/// A failed read is reported and answers `(-1, -1)`: waits retry it, final checks fail on it.
pub fn read_counts(g: &S3, table_url: &str) -> (i64, i64) {
    let out = Command::new(python())
        .args([
            "-c",
            READ,
            table_url,
            &g.endpoint,
            &g.key_id,
            &g.secret,
            &g.region,
        ])
        .output()
        .expect("python venv (scripts/setup-test-deps.sh)");
    if !out.status.success() {
        eprintln!(
            "deltalake read failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return (-1, -1);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    (
        v["rows"].as_i64().unwrap_or(-1),
        v["keys"].as_i64().unwrap_or(-1),
    )
}
