//! Test support: run the real `carewatch` binary and real clients (curl, mosquitto, paho).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carewatch_store::{Config, Store, Table};

mod delta;
mod logs;
mod webhook;
#[allow(unused_imports)] // the cluster tests read the Delta table
pub use delta::{S3, delta_counts, read_counts};
pub use logs::*;
#[allow(unused_imports)] // not every test delivers alerts
pub use webhook::Webhook;

pub const BIN: &str = env!("CARGO_BIN_EXE_carewatch");

/// The CA certificate curl should trust (TLS tests).
pub static TEST_CA: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A running `carewatch serve`.
pub struct Server {
    pub child: Child,
    pub pg: Option<String>,
    pub http: String,
    pub mqtt: Option<String>,
    pub admin: Option<String>,
    pub dir: PathBuf,
    pub stderr_log: PathBuf,
}

impl Server {
    /// Starts `carewatch serve` on ephemeral ports with extra args; waits until it listens.
    /// Its stderr (the log) and stdout (console lines, marked [`STDOUT`]) both go to `stderr_log`,
    /// a file under [`test_logs_dir`] named after the test (scripts/check_logs_phi.py checks it
    /// for ids and tokens).
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(dir, extra, &[])
    }

    /// [`Server::start`] with these environment variables set for the server.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(String, String)]) -> Server {
        let log = log_file("serve");
        let err = std::fs::File::create(&log).expect("log file");
        let mut out_log = err.try_clone().expect("log file");
        // Every port ephemeral, read back from the announcements: a port picked free here
        // could be taken by another test's process before the server binds it.
        let mut args = vec![
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--pg-addr",
            "127.0.0.1:0",
            "--data-dir",
        ];
        let data = dir.join("data");
        let data_s = data.to_str().expect("utf8").to_owned();
        args.push(&data_s);
        args.extend_from_slice(extra);
        let mut child = Command::new(BIN)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // As deployed; `CAREWATCH_TEST_LOG=debug` to see (and check) more.
            .env(
                "CAREWATCH_LOG",
                std::env::var("CAREWATCH_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn carewatch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after start() returns, so the server never writes to a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = out_log.write_all(format!("{STDOUT}{line}\n").as_bytes());
                let _ = tx.send(line);
            }
        });
        let (mut http, mut mqtt, mut admin, mut pg) = (None, None, None, None);
        // Generous: a debug build starting on a 2-core machine that is also compiling (CI's
        // size-budget build, other test binaries) once took over 30 s to reach its last port.
        let deadline = Instant::now() + Duration::from_secs(90);
        while http.is_none() || pg.is_none() || (mqtt.is_none() && !extra.contains(&"--mqtt-url")) {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!(
                        "carewatch did not start: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                });
            if let Some(a) = line.strip_prefix("http listening on ") {
                http = Some(format!("http://{a}"));
            } else if let Some(a) = line.strip_prefix("https listening on ") {
                http = Some(format!(
                    "https://localhost:{}",
                    a.rsplit_once(':').map(|x| x.1).unwrap_or("")
                ));
            } else if let Some(a) = line
                .strip_prefix("mqtt listening on ")
                .or_else(|| line.strip_prefix("mqtts listening on "))
            {
                mqtt = Some(a.to_owned());
            } else if let Some(t) = line.strip_prefix("admin token: ") {
                note_id("token", t);
                admin = Some(t.to_owned());
            } else if let Some(a) = line.strip_prefix("postgres listening on ") {
                pg = Some(a.to_owned());
            } else if line.starts_with("mqtt subscribing to ") {
                mqtt = Some(String::new());
            }
        }
        Server {
            child,
            pg,
            http: http.unwrap_or_default(),
            mqtt: mqtt.filter(|m| !m.is_empty()),
            admin,
            dir: data,
            stderr_log: log,
        }
    }

    pub fn admin(&self) -> &str {
        self.admin
            .as_deref()
            .expect("admin token printed on first start")
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(mut self) -> i32 {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "carewatch did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Registers a device for a patient and returns its secret.
    pub fn register(&self, device: &str, patient: &str) -> String {
        note_id("device", device);
        note_id("patient", patient);
        let (status, body) = curl(
            "POST",
            &format!("{}/v1/devices", self.http),
            self.admin(),
            &format!(
                r#"{{"device_id":"{device}","patient_id":"{patient}","valid_from":"2020-01-01T00:00:00Z"}}"#
            ),
        );
        assert_eq!(status, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let secret = v["secret"].as_str().expect("secret").to_owned();
        note_id("token", &secret);
        secret
    }

    /// Creates a credential through the admin API and returns its token.
    pub fn token(&self, role: &str, subject: Option<&str>) -> String {
        // A device credential's subject is a device id; a care team's name is not an identifier.
        if let (Some(d), "device") = (subject, role) {
            note_id("device", d);
        }
        let body = match subject {
            Some(t) => format!(r#"{{"role":"{role}","subject":"{t}"}}"#),
            None => format!(r#"{{"role":"{role}"}}"#),
        };
        let (s, b) = curl(
            "POST",
            &format!("{}/v1/tokens", self.http),
            self.admin(),
            &body,
        );
        assert_eq!(s, 201, "{b}");
        let token = serde_json::from_str::<serde_json::Value>(&b).expect("json")["token"]
            .as_str()
            .expect("token")
            .to_owned();
        note_id("token", &token);
        token
    }

    /// The Postgres wire address, once it accepts connections.
    pub fn pg_ready(&self) -> String {
        let pg = self.pg.clone().expect("postgres address");
        wait_until("postgres to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(pg.as_str()).is_ok()
        });
        pg
    }

    /// Admin stats.
    pub fn stats(&self) -> serde_json::Value {
        let (status, body) = curl("GET", &format!("{}/v1/stats", self.http), self.admin(), "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl; returns (status, body).
pub fn curl(method: &str, url: &str, token: &str, body: &str) -> (u16, String) {
    let mut args = vec![
        "-s",
        "-S",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        "-H",
        "Content-Type: application/json",
    ];
    let ca = TEST_CA.get().cloned().unwrap_or_default();
    if !ca.is_empty() {
        args.extend_from_slice(&["--cacert", &ca]);
    }
    let auth = format!("Authorization: Bearer {token}");
    if !token.is_empty() {
        args.extend_from_slice(&["-H", &auth]);
    }
    if !body.is_empty() {
        args.extend_from_slice(&["--data-binary", "@-"]);
    }
    args.push(url);
    let mut child = Command::new("curl")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl installed");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(body.as_bytes());
    }
    let out = child.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (b, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), b.to_owned())
}

/// Polls until `f` is true.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every row of a table in a (stopped) server's data directory.
pub fn read_table(dir: &Path, table: Table) -> Vec<arrow_array::RecordBatch> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let s = Store::open(Config::new(dir)).await.expect("open store");
        s.read_all(table).await.expect("read")
    })
}

pub fn count(batches: &[arrow_array::RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// Values of a string column.
pub fn strings(batches: &[arrow_array::RecordBatch], col: &str) -> Vec<String> {
    use arrow_array::Array;
    let mut out = Vec::new();
    for b in batches {
        let a = b.column_by_name(col).expect("column");
        let a = a
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .expect("utf8");
        for i in 0..a.len() {
            out.push(if a.is_null(i) {
                String::new()
            } else {
                a.value(i).to_owned()
            });
        }
    }
    out
}

/// The Python of the test venv (paho-mqtt, duckdb…), installed by scripts/setup-test-deps.sh.
pub fn python() -> String {
    let venv = std::env::var("CAREWATCH_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/carewatch-venv",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    format!("{venv}/bin/python")
}

/// A free TCP port on loopback, below the ephemeral range (`carewatch_fixtures::ports`).
#[allow(unused_imports)]
pub use carewatch_fixtures::free_port;

/// Runs `carewatch serve --config cfg` on a data directory under `dir`, expecting it to refuse
/// to start; its stderr.
pub fn serve_refuses(dir: &Path, cfg: &str) -> String {
    let out = Command::new(BIN)
        .args(["serve", "--config", cfg, "--data-dir"])
        .arg(dir.join("data"))
        .args(["--http-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0"])
        .args(["--mqtt-addr", "127.0.0.1:0"])
        .output()
        .expect("run carewatch serve");
    assert!(!out.status.success(), "serve started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `text` as `dir/carewatch.toml` and returns its path (for `--config`).
pub fn write_config(dir: &Path, text: &str) -> String {
    let cfg = dir.join("carewatch.toml");
    std::fs::write(&cfg, text).expect("config");
    cfg.to_str().expect("utf8").to_owned()
}

/// `carewatch simulate` against a running server: `patients` patients, `minutes` simulated
/// minutes ending now (minute-aligned), sent as fast as acknowledged over MQTT.
pub fn simulate(srv: &Server, patients: usize, minutes: i64, extra: &[&str]) {
    let start = chrono::Utc::now() - chrono::Duration::minutes(minutes);
    let start = start.format("%Y-%m-%dT%H:%M:00Z").to_string();
    let mqtt = srv.mqtt.clone().expect("mqtt");
    let prefix = extra
        .iter()
        .position(|a| *a == "--prefix")
        .and_then(|i| extra.get(i + 1))
        .copied()
        .unwrap_or("sim-"); // `carewatch simulate`'s default --prefix
    for i in 0..patients {
        note_id("device", &carewatch_ingest::simulate::device_id(prefix, i));
        note_id(
            "patient",
            &carewatch_ingest::simulate::patient_id(prefix, i),
        );
    }
    let (n, dur) = (patients.to_string(), format!("{minutes}m"));
    let out = Command::new(BIN)
        .args([
            "simulate",
            "--patients",
            &n,
            "--duration",
            &dur,
            "--start",
            &start,
            "--fast",
            "--batch",
            "30",
            "--http-url",
            &srv.http,
            "--admin-token",
            srv.admin(),
            "--mqtt-addr",
            &mqtt,
        ])
        .args(extra)
        .output()
        .expect("simulate");
    save_output("simulate", &out);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate for `localhost` made by openssl in `dir`; also makes it the CA
/// that [`curl`] trusts. Returns (cert path, key path).
pub fn self_signed_cert(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let (cert, key) = (
        cert.to_str().expect("utf8").to_owned(),
        key.to_str().expect("utf8").to_owned(),
    );
    let _ = TEST_CA.set(cert.clone());
    (cert, key)
}

/// Saves a resource carewatch emitted into `$CAREWATCH_FHIR_OUT` (as `{prefix}-{name}-{pid}.json`)
/// for the suite's external validator, and runs the validator on it now when the venv is there.
pub fn validate_fhir(prefix: &str, name: &str, v: &serde_json::Value) {
    let dir = std::env::var_os("CAREWATCH_FHIR_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let file = dir.join(format!("{prefix}-{name}-{}.json", std::process::id()));
    std::fs::write(&file, v.to_string()).expect("write");
    if Path::new(&python()).exists() {
        let out = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/fhir_validate.py"
            ))
            .arg(&file)
            .output()
            .expect("validator");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// A cluster node's `carewatch_alert_partitions_owned` from `/metrics` (-1: not answered).
pub fn partitions_owned(srv: &Server, token: &str) -> i64 {
    let (s, body) = curl("GET", &format!("{}/metrics", srv.http), token, "");
    if s != 200 {
        return -1;
    }
    body.lines()
        .find_map(|l| l.strip_prefix("carewatch_alert_partitions_owned "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}
