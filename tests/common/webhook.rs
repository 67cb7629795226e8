//! A local webhook receiver for the alert delivery tests.

/// A local webhook receiver (plain HTTP/1.1 with keep-alive): answers 503 to the first
/// `fail_first` requests (to exercise retries; `usize::MAX`: down until `failures` is set to 0),
/// 200 to the rest, and keeps the JSON bodies it accepted (and, in `raw`, their lowercased head
/// and exact bytes). `requests` counts every request, refused or not.
pub struct Webhook {
    pub url: String,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    pub raw: std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>,
    pub failures: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Webhook {
    pub fn start(fail_first: usize) -> Webhook {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", l.local_addr().expect("addr"));
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let raw = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(fail_first));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, rw, fl, rq) = (
            received.clone(),
            raw.clone(),
            failures.clone(),
            requests.clone(),
        );
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                let (r, failures) = (r.clone(), fl.clone());
                let (rw, rq) = (rw.clone(), rq.clone());
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        // One request: headers, then Content-Length bytes of body.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Vec<u8> = buf[head_end..head_end + len].to_vec();
                        buf.drain(..head_end + len);
                        rq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let fail = failures
                            .fetch_update(
                                std::sync::atomic::Ordering::SeqCst,
                                std::sync::atomic::Ordering::SeqCst,
                                |n| n.checked_sub(1),
                            )
                            .is_ok();
                        let resp: &[u8] = if fail {
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                        } else {
                            if let Ok(v) = serde_json::from_slice(&body) {
                                r.lock().expect("lock").push(v);
                            }
                            rw.lock().expect("lock").push((head.clone(), body));
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                        };
                        if s.write_all(resp).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Webhook {
            url,
            received,
            raw,
            failures,
            requests,
        }
    }

    pub fn all(&self) -> Vec<serde_json::Value> {
        self.received.lock().expect("lock").clone()
    }
}
