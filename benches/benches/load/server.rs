//! The server under load: a real `carewatch serve` process (the release binary), its fleet
//! enrolled through `POST /v1/devices`, and what the kernel and `/metrics` say about it. A
//! cluster member is the same process with `--postgres-url`, `--object-store-url` and the
//! store's `AWS_*` environment ([`Server::start_with`]).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running `carewatch serve`.
pub struct Server {
    child: Child,
    pub http: String,
    pub admin: String,
    pub pid: u32,
}

impl Server {
    /// Starts `bin serve` on ephemeral ports, a data directory under `dir`, alerts to `hook`.
    pub fn start(bin: &str, dir: &std::path::Path, hook: &str) -> Server {
        Server::start_with(bin, dir, hook, &[], &[])
    }

    /// [`Server::start`] with more arguments and environment (a later `CAREWATCH_LOG` wins).
    /// Returns once the server announced its last listener. Only the first node of a cluster
    /// prints the admin token: on the others `admin` is empty (set it to the first's).
    pub fn start_with(
        bin: &str,
        dir: &std::path::Path,
        hook: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Server {
        let cfg = dir.join("carewatch.toml");
        // Escalations would re-send the same episode; the harness counts first deliveries.
        std::fs::write(
            &cfg,
            format!("[alerts]\nwebhook_url = \"{hook}\"\nescalate_after_secs = 86400\n"),
        )
        .expect("config");
        let log = std::fs::File::create(dir.join("serve.log")).expect("log");
        let mut child = Command::new(bin)
            .args([
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--mqtt-addr",
                "127.0.0.1:0",
            ])
            .args(["--pg-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("CAREWATCH_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e} (build it: see BENCHMARKS.md)"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // The admin token (on a fresh registry) comes first, the Postgres wire last.
        let (mut http, mut admin, mut ready) = (None, None, false);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("carewatch did not start (see serve.log)");
            if let Some(a) = line.strip_prefix("http listening on ") {
                http = Some(format!("http://{a}"));
            } else if let Some(t) = line.strip_prefix("admin token: ") {
                admin = Some(t.to_owned());
            }
            ready = line.starts_with("postgres listening on ");
        }
        let pid = child.id();
        Server {
            child,
            http: http.unwrap_or_default(),
            admin: admin.unwrap_or_default(),
            pid,
        }
    }

    /// Resident set, MiB (`VmRSS`).
    pub fn rss_mib(&self) -> f64 {
        crate::procfs::rss_mib_of(&format!("/proc/{}/status", self.pid))
    }

    /// CPU seconds (user + system) the server used so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_of(&format!("/proc/{}/stat", self.pid))
    }

    /// A gauge or counter from `/metrics` (the first sample of that name).
    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<f64> {
        let text = http
            .get(format!("{}/metrics", self.http))
            .bearer_auth(&self.admin)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// An analyst token.
    pub async fn analyst(&self, http: &reqwest::Client) -> String {
        let v: Value = http
            .post(format!("{}/v1/tokens", self.http))
            .bearer_auth(&self.admin)
            .json(&json!({"role": "analyst"}))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token json");
        v["token"].as_str().expect("token").to_owned()
    }

    /// One number from `/v1/sql`.
    pub async fn sql_count(&self, http: &reqwest::Client, token: &str, q: &str) -> i64 {
        let v: Value = http
            .post(format!("{}/v1/sql", self.http))
            .bearer_auth(token)
            .body(q.to_owned())
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .expect("sql")
            .json()
            .await
            .expect("sql json");
        v[0].as_object()
            .and_then(|o| o.values().next()?.as_i64())
            .unwrap_or_else(|| panic!("unexpected SQL answer {v}"))
    }

    /// Enrols `dev-<i>` for `pat-<i>`, `i` in `0..n`, in JSON arrays of 1,000 (4 at once);
    /// returns each device's secret. Valid from 2020, so a phone's backlog is its patient's.
    pub async fn enrol(&self, http: &reqwest::Client, n: usize) -> Vec<String> {
        use futures::StreamExt;
        let batches = (0..n).step_by(1000).map(|from| {
            let items: Vec<Value> = (from..n.min(from + 1000))
                .map(|i| {
                    json!({"device_id": device(i), "patient_id": patient(i),
                           "valid_from": "2020-01-01T00:00:00Z"})
                })
                .collect();
            let req = http
                .post(format!("{}/v1/devices", self.http))
                .bearer_auth(&self.admin)
                .json(&items);
            async move {
                let res = req.send().await.expect("enrol");
                assert!(res.status().is_success(), "enrol: {}", res.status());
                let v: Value = res.json().await.expect("enrol json");
                let secrets: Vec<String> = v["results"]
                    .as_array()
                    .expect("results")
                    .iter()
                    .map(|r| r["secret"].as_str().expect("secret").to_owned())
                    .collect();
                (from, secrets)
            }
        });
        let mut got: Vec<(usize, Vec<String>)> = futures::stream::iter(batches)
            .buffer_unordered(4)
            .collect()
            .await;
        got.sort_by_key(|(from, _)| *from);
        got.into_iter().flat_map(|(_, s)| s).collect()
    }

    /// SIGKILL: the process dies at once, its buffer unpersisted (its WAL is what is left).
    pub fn kill9(&self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
    }

    /// SIGTERM, then wait (a clean stop persists the buffer).
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use crate::procfs::cpu_of;

pub fn device(i: usize) -> String {
    format!("load-dev-{i:06}")
}

pub fn patient(i: usize) -> String {
    format!("load-pat-{i:06}")
}
