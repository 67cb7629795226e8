//! A real Mosquitto broker with a persistent store, started for a test (shared by MQTT tests).
// Shared by several test crates, each using part of it.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::wait_until;

/// A running `mosquitto` on 127.0.0.1:`port`, persisting under `dir`.
pub struct Mosquitto {
    child: Child,
}

impl Mosquitto {
    pub fn start(dir: &std::path::Path, port: u16) -> Mosquitto {
        Mosquitto::start_with(dir, port, "")
    }

    /// A broker that speaks only TLS on `port`, with this certificate and key (PEM files).
    pub fn start_tls(dir: &std::path::Path, port: u16, cert: &str, key: &str) -> Mosquitto {
        Mosquitto::start_with(dir, port, &format!("certfile {cert}\nkeyfile {key}\n"))
    }

    /// `listener_conf`: lines for the listener (after `listener PORT 127.0.0.1`).
    fn start_with(dir: &std::path::Path, port: u16, listener_conf: &str) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nlistener {port} 127.0.0.1\n{listener_conf}allow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\n",
                dir.display()
            ),
        )
        .expect("conf");
        let bin = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let child = Command::new(bin)
            .args(["-c", conf.to_str().expect("utf8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto");
        wait_until("mosquitto to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Mosquitto { child }
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
