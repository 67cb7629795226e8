//! The local webhook receiver: every `firing` delivery is kept with its arrival time, by
//! fingerprint, so an episode delivered twice is counted as such (nothing is overwritten).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One alert's `firing` deliveries.
pub struct Fired {
    pub rule: String,
    pub patient: String,
    pub arrivals: Vec<Instant>,
}

pub type Arrivals = Arc<Mutex<HashMap<String, Fired>>>;

/// Starts the receiver; returns its URL.
pub async fn start(arrived: Arrivals) -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let a = arrived.clone();
            async move {
                let at = Instant::now();
                if v["event"] == "firing" {
                    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                    a.lock()
                        .expect("lock")
                        .entry(s("fingerprint"))
                        .or_insert_with(|| Fired {
                            rule: s("rule"),
                            patient: s("patient_id"),
                            arrivals: Vec::new(),
                        })
                        .arrivals
                        .push(at);
                }
                "ok"
            }
        }),
    );
    crate::util::serve_hook(app).await
}
