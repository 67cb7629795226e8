//! The MQTT side of the crash loop: a paho client publishing QoS 1 readings, its PUBACKs written
//! into the ledger.

use super::*;

/// Publishes stdin's `<index>\t<payload>` lines at QoS 1, one in flight at a time, and prints
/// each index once its PUBACK arrived; exits quietly when the connection goes.
pub(super) const PAHO: &str = r#"
import sys, time
import paho.mqtt.client as mqtt
host, port, user, pw, cid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
topic = "devices/%s/readings" % user
msgs = [l.rstrip("\n").split("\t", 1) for l in sys.stdin if l.strip()]
state = {"up": False, "gone": False}
def on_connect(c, u, flags, rc, props=None):
    if rc.is_failure:
        state["gone"] = True
    else:
        state["up"] = True
def on_disconnect(c, u, flags, rc, props=None):
    state["gone"] = True
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
c.username_pw_set(user, pw)
c.on_connect = on_connect
c.on_disconnect = on_disconnect
try:
    c.connect(host, port, keepalive=30)
    deadline = time.time() + 30
    while not state["up"]:
        if state["gone"] or time.time() > deadline or c.loop(timeout=0.05) != 0:
            sys.exit(0)
    for key, payload in msgs:
        info = c.publish(topic, payload, qos=1)
        deadline = time.time() + 30
        while not info.is_published():
            if state["gone"] or time.time() > deadline or c.loop(timeout=0.05) != 0:
                sys.exit(0)
        print(key, flush=True)
    c.disconnect()
except Exception:
    sys.exit(0)
"#;

/// The cycle's MQTT messages: single readings, out-of-range and malformed ones, and sometimes a
/// final oversized one (the listener drops the connection: never acknowledged).
pub(super) struct MqttRun {
    items: Vec<Item>,
    payloads: Vec<String>,
    oversized: bool,
    child: std::process::Child,
    reader: std::thread::JoinHandle<Vec<usize>>,
}

pub(super) fn mqtt_start(
    mqtt: &str,
    secret: &str,
    cycle: usize,
    rng: &mut Rng,
    clock: &AtomicI64,
) -> MqttRun {
    let mut items: Vec<Item> = (0..MQTT_MESSAGES)
        .map(|_| {
            let kind = match rng.below(10) {
                0 => Kind::Malformed,
                1 => Kind::OutOfRange,
                _ => Kind::Valid,
            };
            item(clock, kind)
        })
        .collect();
    let mut payloads: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
    let oversized = rng.below(3) == 0;
    if oversized {
        let it = item(clock, Kind::Valid);
        let mut p = it.text.clone();
        p.insert_str(1, &" ".repeat(MAX_PAYLOAD + 2048));
        payloads.push(p);
        items.push(it);
    }
    let (host, port) = mqtt.rsplit_once(':').expect("mqtt addr");
    let mut child = Command::new(python())
        .args([
            "-c",
            PAHO,
            host,
            port,
            MQTT_DEVICE,
            secret,
            &format!("cl-paho-{cycle}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python with paho (scripts/setup-test-deps.sh)");
    let input: String = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{i}\t{p}\n"))
        .collect();
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    });
    MqttRun {
        items,
        payloads,
        oversized,
        child,
        reader,
    }
}

pub(super) fn mqtt_finish(mut run: MqttRun, cycle: usize) -> Ledger {
    let _ = run.child.kill();
    let _ = run.child.wait();
    let acks: HashSet<usize> = run
        .reader
        .join()
        .expect("paho reader")
        .into_iter()
        .collect();
    let mut l = Ledger::default();
    let last = run.items.len() - 1;
    for (i, it) in run.items.iter().enumerate() {
        let key = (MQTT_DEVICE.to_owned(), it.time_ms);
        let acked = acks.contains(&i);
        if run.oversized && i == last {
            l.mqtt_oversized += 1;
            if acked {
                l.surprises.push(format!(
                    "cycle {cycle}: an MQTT publish over max_payload_bytes was acknowledged"
                ));
            }
            l.never.push((key, "in an oversized MQTT publish"));
            continue;
        }
        let sha = sha_hex(run.payloads[i].as_bytes());
        match (it.kind, acked) {
            (Kind::Valid, true) => l.acked.push((key, cycle, "mqtt")),
            (Kind::Valid, false) => l.unknown.push(key),
            (Kind::OutOfRange, a) => {
                l.never.push((key, "out_of_range over MQTT"));
                if a {
                    l.dead_acked.push((sha, 1, cycle));
                } else {
                    l.dead_unknown.push((sha, 1));
                }
            }
            (Kind::Malformed, true) => l.dead_acked.push((sha, 1, cycle)),
            (Kind::Malformed, false) => l.dead_unknown.push((sha, 1)),
        }
    }
    l
}
