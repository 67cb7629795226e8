//! An MQTT client session driven by paho-mqtt (Python) for the tests: commands on its stdin,
//! events as lines on its stdout.

#![allow(dead_code)] // each test file uses part of it

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use crate::common::{Server, python};

/// An MQTT session driven by paho-mqtt: commands on stdin (`pub QOS TOPIC PAYLOAD`,
/// `sub TOPIC`, `quit`), events on stdout (`connected RC`, `disconnected`, `sent MID`,
/// `acked MID`, `subscribed [CODES]`, `msg TOPIC PAYLOAD`).
const SESSION: &str = r#"
import sys, threading, paho.mqtt.client as mqtt
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
LOCK = threading.Lock()
def out(*a):
    # One write per event under a lock: paho's network thread and the command loop both print,
    # and print() writes its parts separately, so lines could interleave mid-line.
    with LOCK:
        sys.stdout.write(" ".join(map(str, a)) + "\n")
        sys.stdout.flush()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="s-" + user[:16], reconnect_on_failure=False)
c.username_pw_set(user, pw)
c.on_connect = lambda c, u, f, rc, p: out("connected", rc.value)
c.on_disconnect = lambda c, u, f, rc, p: out("disconnected")
c.on_publish = lambda c, u, mid, rc, p: out("acked", mid)
c.on_subscribe = lambda c, u, mid, rcs, p: out("subscribed", [r.value for r in rcs])
c.on_message = lambda c, u, m: out("msg", m.topic, m.payload.decode())
c.connect(host, port, keepalive=30)
c.loop_start()
for line in sys.stdin:
    cmd = line.rstrip("\n").split(" ", 3)
    if cmd[0] == "pub":
        out("sent", c.publish(cmd[2], cmd[3], qos=int(cmd[1])).mid)
    elif cmd[0] == "sub":
        c.subscribe(cmd[1], qos=0)
    elif cmd[0] == "quit":
        break
c.loop_stop()
"#;

pub struct Session {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<String>,
    pub seen: Vec<String>,
}

impl Session {
    pub fn start(srv: &Server, user: &str, password: &str) -> Session {
        let mqtt = srv.mqtt.clone().expect("embedded listener");
        let (host, port) = mqtt.rsplit_once(':').expect("addr");
        let mut child = Command::new(python())
            .args(["-c", SESSION, host, port, user, password])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python with paho (scripts/setup-test-deps.sh)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut s = Session {
            child,
            stdin,
            rx,
            seen: Vec::new(),
        };
        let c = s.wait_for("the MQTT CONNACK", |l| l.starts_with("connected"));
        assert_eq!(c, "connected 0", "login refused");
        s
    }

    pub fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("session stdin");
        self.stdin.flush().expect("flush");
    }

    /// Waits (generously) for a line matching `f` and returns it; every line is kept.
    pub fn wait_for(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        self.wait_after(0, what, f)
    }

    /// Like [`Session::wait_for`], for lines from the `from`th on.
    pub fn wait_after(&mut self, from: usize, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        if let Some(l) = self.seen.iter().skip(from).find(|l| f(l)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; saw {:?}", self.seen));
            self.seen.push(line.clone());
            if f(&line) {
                return line;
            }
        }
    }

    pub fn subscribe(&mut self, topic: &str) -> String {
        self.send(&format!("sub {topic}"));
        self.wait_for("the SUBACK", |l| l.starts_with("subscribed"))
    }

    /// Publishes and returns the message id.
    pub fn publish(&mut self, qos: u8, topic: &str, payload: &str) -> String {
        let from = self.seen.len();
        self.send(&format!("pub {qos} {topic} {payload}"));
        let l = self.wait_after(from, "the publish", |l| l.starts_with("sent "));
        l["sent ".len()..].to_owned()
    }

    /// Alert messages received so far, as JSON.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        self.seen
            .iter()
            .filter_map(|l| l.strip_prefix("msg "))
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(_, p)| serde_json::from_str(p).ok())
            .collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
