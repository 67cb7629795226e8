//! The validating FHIR server of `receiver.py`, started for a test (shared by FHIR tests).

#![allow(dead_code)] // each test file uses part of it

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::common::{curl, python};

/// A running `receiver.py`.
pub struct Receiver {
    child: Child,
    /// Its base URL.
    pub url: String,
}

impl Receiver {
    /// Starts it with `args` (see the script's usage).
    pub fn start(args: &[&str]) -> Receiver {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fhir_server/receiver.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the FHIR receiver (scripts/setup-test-deps.sh installs its venv)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("receiver port");
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .expect("port line");
        Receiver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// GET `path`, expecting 200 and JSON.
    pub fn get(&self, path: &str) -> Value {
        let (s, body) = curl("GET", &format!("{}{path}", self.url), "", "");
        assert_eq!(s, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    }

    /// The resources of a searchset answer to GET `path`.
    pub fn search(&self, path: &str) -> Vec<Value> {
        self.get(path)["entry"]
            .as_array()
            .map(|a| a.iter().map(|e| e["resource"].clone()).collect())
            .unwrap_or_default()
    }

    /// PUT a resource at `path`; the status.
    pub fn put(&self, path: &str, body: &Value) -> u16 {
        let (s, b) = curl("PUT", &format!("{}{path}", self.url), "", &body.to_string());
        assert!(s == 200 || s == 201, "{s} {b}");
        s
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
