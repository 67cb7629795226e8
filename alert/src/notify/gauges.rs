//! Delivery counters and per-receiver gauges, read by `/metrics`. Receivers are labelled by
//! kind only (`global`, `team`, `escalation`) — never by URL, team name or patient.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a receiver is, for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverKind {
    /// `[alerts] webhook_url`.
    Global,
    /// A `[alerts.team_webhooks]` URL.
    Team,
    /// `[alerts] escalation_webhook_url`.
    Escalation,
}

impl ReceiverKind {
    /// Every kind, in label order.
    pub const ALL: [ReceiverKind; 3] = [
        ReceiverKind::Global,
        ReceiverKind::Team,
        ReceiverKind::Escalation,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverKind::Global => "global",
            ReceiverKind::Team => "team",
            ReceiverKind::Escalation => "escalation",
        }
    }
}

/// One receiver's live state.
#[derive(Debug)]
pub struct Gauge {
    kind: ReceiverKind,
    /// Wall time (UTC µs) of the oldest transition not yet delivered; 0 when caught up.
    pub oldest_undelivered_us: AtomicI64,
    /// Failing continuously for longer than the escalation limit.
    pub failing: AtomicBool,
}

/// Delivery counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Deliveries that succeeded.
    pub delivered: AtomicU64,
    /// Failed attempts.
    pub failed_attempts: AtomicU64,
    /// Deliveries given up (transitions of resolved alerts only, after every attempt failed).
    pub dropped: AtomicU64,
    gauges: Mutex<Vec<Arc<Gauge>>>,
}

impl Counters {
    /// A new gauge for one receiver.
    pub fn gauge(&self, kind: ReceiverKind) -> Arc<Gauge> {
        let g = Arc::new(Gauge {
            kind,
            oldest_undelivered_us: AtomicI64::new(0),
            failing: AtomicBool::new(false),
        });
        self.gauges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(g.clone());
        g
    }

    fn of(&self, kind: ReceiverKind) -> Vec<Arc<Gauge>> {
        self.gauges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|g| g.kind == kind)
            .cloned()
            .collect()
    }

    /// Whether any receiver of this kind is configured.
    pub fn has(&self, kind: ReceiverKind) -> bool {
        !self.of(kind).is_empty()
    }

    /// Age in seconds of the oldest undelivered transition over the receivers of `kind` (0 when
    /// every one is caught up).
    pub fn delivery_age_seconds(&self, kind: ReceiverKind, now_us: i64) -> f64 {
        self.of(kind)
            .iter()
            .map(|g| g.oldest_undelivered_us.load(Ordering::Relaxed))
            .filter(|&us| us > 0)
            .map(|us| (now_us - us).max(0) as f64 / 1e6)
            .fold(0.0, f64::max)
    }

    /// Whether any receiver of `kind` has been failing for longer than the escalation limit.
    pub fn receiver_failing(&self, kind: ReceiverKind) -> bool {
        self.of(kind)
            .iter()
            .any(|g| g.failing.load(Ordering::Relaxed))
    }
}
