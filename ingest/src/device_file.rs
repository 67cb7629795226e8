//! Enrolment files for `carewatch devices import`: CSV with a header row (`device_id`,
//! `patient_id`, optional `valid_from`, `valid_to`, `reassign`) or NDJSON (one `POST
//! /v1/devices` object per line). Each record becomes the JSON object the API takes, so the
//! offline and the `--server` import decide items the same way.
//!
//! A file that cannot be read as a whole (a malformed CSV row, a line that is not JSON) is
//! refused with its line number before anything is enrolled; what an item *says* (a bad
//! patient id, a device assigned elsewhere) is that item's result.

use serde_json::{Map, Value};

const COLUMNS: [&str; 5] = [
    "device_id",
    "patient_id",
    "valid_from",
    "valid_to",
    "reassign",
];

/// The file's kind, from its name: `.csv` or `.ndjson` / `.jsonl` (optionally `.gz`-less).
pub fn is_csv(name: &str) -> Result<bool, String> {
    let n = name.to_ascii_lowercase();
    if n.ends_with(".csv") {
        Ok(true)
    } else if n.ends_with(".ndjson") || n.ends_with(".jsonl") {
        Ok(false)
    } else {
        Err(format!(
            "{name}: give a .csv or .ndjson file (CSV with a header row device_id,patient_id[,valid_from,valid_to,reassign])"
        ))
    }
}

/// The records of an enrolment file, as API objects.
pub fn read(bytes: &[u8], csv: bool) -> Result<Vec<Value>, String> {
    if csv {
        read_csv(bytes)
    } else {
        read_ndjson(bytes)
    }
}

fn read_ndjson(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value = serde_json::from_slice(line)
            .map_err(|e| format!("line {}: not a JSON object: {e}", n + 1))?;
        if !v.is_object() {
            return Err(format!("line {}: not a JSON object", n + 1));
        }
        out.push(v);
    }
    Ok(out)
}

fn read_csv(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let head: Vec<String> = r
        .headers()
        .map_err(|e| format!("header row: {e}"))?
        .iter()
        .map(str::to_ascii_lowercase)
        .collect();
    if let Some(c) = head.iter().find(|c| !COLUMNS.contains(&c.as_str())) {
        return Err(format!(
            "header row: unknown column {c:?}; known: {}",
            COLUMNS.join(", ")
        ));
    }
    for need in &COLUMNS[..2] {
        if !head.iter().any(|c| c == need) {
            return Err(format!("header row: the column {need} is missing"));
        }
    }
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| format!("{e}"))?;
        let mut m = Map::new();
        for (col, cell) in head.iter().zip(rec.iter()) {
            if cell.is_empty() {
                continue;
            }
            let v = match (col.as_str(), cell.to_ascii_lowercase().as_str()) {
                ("reassign", "true" | "yes" | "1") => Value::Bool(true),
                ("reassign", "false" | "no" | "0") => Value::Bool(false),
                _ => Value::String(cell.to_owned()),
            };
            m.insert(col.clone(), v);
        }
        out.push(Value::Object(m));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_ndjson_read_to_the_same_objects() {
        let csv = b"device_id,patient_id,valid_from,reassign\nd1, p1 ,,\nd2,p2,2024-01-01T00:00:00Z,yes\n";
        let nd = br#"{"device_id":"d1","patient_id":"p1"}

{"device_id":"d2","patient_id":"p2","valid_from":"2024-01-01T00:00:00Z","reassign":true}
"#;
        assert_eq!(read(csv, true), read(nd, false));
        assert_eq!(read(csv, true).expect("csv").len(), 2);
    }

    #[test]
    fn a_malformed_file_names_its_line() {
        let e = read(b"{\"device_id\":1}\nnot json\n", false).expect_err("bad");
        assert!(e.starts_with("line 2:"), "{e}");
        let e = read(b"device,patient_id\nd1,p1\n", true).expect_err("bad header");
        assert!(e.contains("unknown column \"device\""), "{e}");
        let e = read(b"device_id,patient_id\nd1,p1,extra\n", true).expect_err("bad row");
        assert!(e.contains("line 2") || e.contains("record 1"), "{e}");
        assert!(is_csv("x.txt").is_err());
    }
}
