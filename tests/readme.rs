//! The README runs as printed (issue #12): every shell block of README.md is taken from the file
//! itself and each command runs in bash exactly as written, in a scratch directory, against the
//! server its first block starts on the default ports, then is checked for what the README says
//! it does.
//!
//! One substitution, made by a `cargo` on PATH and nowhere else: `cargo run [--release] [-q] --
//! ARGS` runs the carewatch binary this test suite built (a release build takes ~40 min on 2
//! cores). The variables the README's commands use come from where the README says a user gets
//! them: `ADMIN` from the first start's `admin token:` line, `SECRET` from the device
//! registration's answer, `ANALYST` from the README's own assignment, `ID` from `token list`.
//! The README's test command (`./scripts/test.sh`) is the suite this test runs in: it is checked
//! to be what `.ci/run` runs, not run again.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The README's shell blocks, each a list of commands (continuation lines joined).
fn blocks(readme: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut cur: Option<Vec<String>> = None;
    let mut pending = String::new();
    for line in readme.lines() {
        match (&mut cur, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => cur = Some(Vec::new()),
            (Some(_), l) if l.starts_with("```") => out.push(cur.take().expect("block")),
            (Some(cmds), l) => {
                if let Some(head) = l.strip_suffix('\\') {
                    pending.push_str(head);
                    continue;
                }
                pending.push_str(l);
                let cmd = std::mem::take(&mut pending);
                if !cmd.trim().is_empty() {
                    cmds.push(cmd);
                }
            }
            _ => {}
        }
    }
    out
}

/// A `cargo` that runs this build's carewatch for `cargo run … -- ARGS`.
fn cargo_shim(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let shim = bin.join("cargo");
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = run ] || {{ echo 'readme test: only cargo run' >&2; exit 2; }}\n\
         while [ $# -gt 0 ] && [ \"$1\" != -- ]; do shift; done\nshift\nexec '{BIN}' \"$@\"\n"
    );
    std::fs::write(&shim, script).expect("shim");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

/// The scratch directory a newcomer works in, and what the commands read there.
struct Shell {
    cwd: PathBuf,
    path: String,
    vars: HashMap<&'static str, String>,
    serve: Option<Child>,
}

impl Shell {
    fn new(cwd: &Path) -> Shell {
        let bin = cargo_shim(cwd);
        std::os::unix::fs::symlink(carewatch_fixtures::fixtures_dir(), cwd.join("fixtures"))
            .expect("fixtures");
        let fitbit = carewatch_fixtures::data_dir("fitabase-fitbit");
        std::fs::copy(
            fitbit.join("heartrate_seconds_5users.csv.gz"),
            cwd.join("heartrate_seconds.csv.gz"),
        )
        .expect("fitbit export");
        std::fs::copy(
            fitbit.join("minuteSteps_5users_narrow.csv.gz"),
            cwd.join("minuteSteps_narrow.csv.gz"),
        )
        .expect("fitbit steps");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Shell {
            cwd: cwd.to_path_buf(),
            path,
            vars: HashMap::new(),
            serve: None,
        }
    }

    fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new("bash");
        c.args(["-c", cmd])
            .current_dir(&self.cwd)
            .env("PATH", &self.path)
            .env("CAREWATCH_LOG", "info")
            .envs(&self.vars);
        c
    }

    /// Runs one command as printed; returns its stdout, having saved its output as a log.
    fn run(&mut self, cmd: &str) -> String {
        if let Some((var, inner)) = assignment(cmd) {
            let out = self.run(inner);
            let v = out.trim().to_owned();
            assert!(!v.is_empty(), "{var} is empty after: {cmd}");
            note_id("token", &v);
            self.vars.insert(var, v);
            return out;
        }
        let out = self.command(cmd).output().expect("bash");
        save_output("readme", &out);
        assert!(
            out.status.success(),
            "README command failed: {cmd}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The README's run command, in the background, on its default ports.
    fn start(&mut self, cmd: &str) {
        let log = log_file("readme-serve");
        let err = std::fs::File::create(&log).expect("log");
        let mut copy = err.try_clone().expect("log");
        let mut child = self
            .command(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("serve");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = copy.write_all(format!("{STDOUT}{line}\n").as_bytes());
                let _ = tx.send(line);
            }
        });
        self.serve = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "serve did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
            if let Some(t) = line.strip_prefix("admin token: ") {
                note_id("token", t);
                self.vars.insert("ADMIN", t.to_owned());
            }
            if line.starts_with("http listening on 127.0.0.1:8080") {
                break;
            }
        }
        wait_until("the Postgres port", Duration::from_secs(30), || {
            std::net::TcpStream::connect("127.0.0.1:5433").is_ok()
        });
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.serve.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let st = child.wait().expect("wait");
            assert!(st.success(), "serve exited with {st}");
        }
    }

    fn admin_get(&self, path: &str) -> serde_json::Value {
        let (s, b) = curl(
            "GET",
            &format!("http://127.0.0.1:8080{path}"),
            &self.vars["ADMIN"],
            "",
        );
        assert_eq!(s, 200, "{path}: {b}");
        serde_json::from_str(&b).expect("json")
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if let Some(c) = &mut self.serve {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `VAR=$(command)`.
fn assignment(cmd: &str) -> Option<(&'static str, &str)> {
    for var in ["ANALYST", "ID", "SECRET"] {
        if let Some(rest) = cmd.strip_prefix(var).and_then(|r| r.strip_prefix("=$(")) {
            return Some((var, rest.strip_suffix(')')?));
        }
    }
    None
}

fn needs_server(block: &[String]) -> bool {
    block
        .iter()
        .any(|c| c.contains("localhost") || c.contains("127.0.0.1") || c.contains("mosquitto_pub"))
}

#[test]
fn every_readme_command_runs_as_printed_and_does_what_it_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let blocks = blocks(&readme);
    assert_eq!(
        blocks[0],
        vec!["cargo run --release -- serve"],
        "the run command comes first"
    );
    assert_eq!(
        blocks[1],
        vec!["./scripts/test.sh"],
        "the test command second"
    );
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(
        ci.contains("scripts/test.sh"),
        ".ci/run runs the README's test command"
    );
    for id in [
        "watch-1",
        "alice",
        "watch-2",
        "bob",
        "watch-3",
        "carol",
        "cuff-101",
        "cuff-102",
        "scale-201",
        "maria",
        "tomas",
    ] {
        note_id("device", id);
        note_id("patient", id);
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let mut sh = Shell::new(tmp.path());
    sh.start(&blocks[0][0]);
    let mut ran = 0;
    for block in &blocks[2..] {
        let stopped = block[0].starts_with("# serve stopped");
        if stopped {
            sh.stop();
        } else if needs_server(block) && sh.serve.is_none() {
            sh.start(&blocks[0][0]);
        }
        for cmd in block.iter().filter(|c| !c.trim_start().starts_with('#')) {
            let out = sh.run(cmd);
            check(&mut sh, cmd, &out);
            ran += 1;
        }
    }
    sh.stop();
    assert!(ran >= 17, "only {ran} README commands ran");
}

/// What the README says each command does.
fn check(sh: &mut Shell, cmd: &str, out: &str) {
    let has = |what: &str| assert!(out.contains(what), "{cmd}\nsaid: {out}\nexpected: {what}");
    if cmd.contains("/v1/devices") && cmd.contains("x-ndjson") {
        let v: serde_json::Value = serde_json::from_str(out).expect("enrolment answer");
        assert_eq!(v["enrolled"], 2, "{out}");
        for r in v["results"].as_array().expect("results") {
            note_id("token", r["secret"].as_str().expect("secret"));
        }
    } else if cmd.contains("/v1/devices?") {
        let v: serde_json::Value = serde_json::from_str(out).expect("fleet page");
        let ids: Vec<&str> = v["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .filter_map(|d| d["device_id"].as_str())
            .collect();
        assert!(
            ids.contains(&"cuff-101") && ids.contains(&"watch-2"),
            "{out}"
        );
    } else if cmd.contains(" devices import ") {
        let results = std::fs::read_to_string(sh.cwd.join("secrets.ndjson")).expect("--out file");
        assert_eq!(results.matches("\"enrolled\"").count(), 3, "{results}");
        for l in results.lines() {
            let v: serde_json::Value = serde_json::from_str(l).expect("result line");
            note_id("token", v["secret"].as_str().expect("secret"));
        }
    } else if cmd.contains("/v1/devices") {
        let v: serde_json::Value = serde_json::from_str(out).expect("registration answer");
        assert_eq!(v["device_id"], "watch-1", "{out}");
        let secret = v["secret"].as_str().expect("secret").to_owned();
        note_id("token", &secret);
        sh.vars.insert("SECRET", secret);
    } else if cmd.contains("/v1/readings") {
        let v: serde_json::Value = serde_json::from_str(out).expect("readings answer");
        assert_eq!(v["accepted"], 2, "{out}");
    } else if cmd.contains(" simulate ") {
        wait_until(
            "the simulated tachycardia alert",
            Duration::from_secs(60),
            || {
                let v = sh.admin_get("/v1/alerts?status=all");
                v["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["rule"] == "hr_high_at_rest" && a["patient_id"] == "sim-pat-00003")
            },
        );
    } else if cmd.contains("/v1/sql") {
        has("8867-4");
    } else if cmd.starts_with("PGPASSWORD") {
        has("observations");
    } else if cmd.contains("-- sql ") {
        has("alice");
        has("73");
    } else if cmd.contains("/fhir/Observation") {
        let v: serde_json::Value = serde_json::from_str(out).expect("bundle");
        assert_eq!(v["resourceType"], "Bundle", "{out}");
        let n = v["entry"].as_array().map_or(0, Vec::len);
        assert_eq!(n, 2, "alice's two heart rates (HTTP and MQTT): {out}");
    } else if cmd.contains("template check") {
        has("\"resourceType\"");
        has("85354-9");
    } else if cmd.contains(" replay ") {
        has("readings stored");
        assert!(!out.contains(" 0 readings stored"), "{out}");
    } else if cmd.contains("token list") {
        let id = out
            .lines()
            .find(|l| l.contains("\tnorth\t"))
            .and_then(|l| l.split('\t').next())
            .expect("the north token listed")
            .to_owned();
        sh.vars.insert("ID", id);
    } else if cmd.contains("token revoke") {
        has("revoked");
    } else if cmd.contains("rules check") {
        has("hr_high_at_rest");
    } else if cmd.contains("rules backtest") {
        let v: serde_json::Value = serde_json::from_str(out).expect("backtest json");
        let alerts = v["alerts"].as_array().map_or(0, Vec::len);
        assert!(alerts > 0, "alerts over the Fitbit month: {out}");
        assert_eq!(v["rules"][0]["alerts"], alerts, "{out}");
    }
}
