//! Live evaluation: on a schedule, each rule's SQL runs over the buckets that received data
//! since the last run (late data re-dirties old buckets), per-bucket samples feed
//! [`crate::episodes::episodes`], and the result is reconciled with the alerts already raised.
//!
//! Durable state is the history file: an alert's current state is the fold of its
//! transitions, rebuilt at start. Samples are not persisted; at start (and after a rule
//! reload) a catch-up evaluation over each rule's look-back window rebuilds them from the
//! stored observations, so a pending episode survives a restart and an episode that already
//! fired is matched to its alert (by overlap) instead of firing again.
//!
//! Each run starts by re-routing open alerts whose patient moved to another care team
//! ([`teams`]: authorization follows the patient).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use datafusion::prelude::SessionContext;
use tokio::sync::{Notify, broadcast};

use carewatch_store::Store;
use carewatch_store::registry::Registry;

use crate::history::{History, Transition};
use crate::rules::{Params, Rule};

mod actions;
mod commit;
mod gather;
mod measure;
mod ownership;
mod plan;
mod reconcile;
mod runtime;
mod samples;
mod series;
mod session;
mod sql;
mod state;
mod teams;
pub use actions::{Action, RESOLVE_REASONS};
pub use gather::RuleFailures;
pub(crate) use ownership::Owned;
pub(crate) use plan::plan;
pub(crate) use samples::Work;
use series::Samples;
pub(crate) use series::keep_us;
pub use session::{rules_context, rules_context_with};
pub(crate) use sql::{for_each_row, rule_batches};
pub use sql::{run_rule_sql, scope_sql, ts_sql};
pub(crate) use state::State;
pub use state::{Current, fingerprint};
pub use teams::may_see;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// How often rules run at the latest (time-based transitions: pending → firing, repeats,
    /// escalations, un-snoozes).
    pub interval: Duration,
    /// Appends trigger a run this long after the first one that found the engine idle
    /// (micro-batching: the appends meanwhile share the run).
    pub batch: Duration,
    /// Minute bins ([`crate::minutes`]) are kept in memory for this long before "now"
    /// (`None`: [`bins_window_for`] the rules, following reloads).
    pub bins_window: Option<Duration>,
    /// An unacknowledged firing alert is re-notified (escalated) this long after the last
    /// notification.
    pub escalate_after: Duration,
    /// At most this many escalations per alert.
    pub max_escalations: u32,
    /// One rule's queries in one run may take this long; past it they are cancelled, the
    /// failure is counted and the rule's ranges are retried at the next run.
    pub rule_timeout: Duration,
    /// The memory pool of the rules' own session ([`rules_context`]), bytes.
    pub memory_bytes: usize,
    /// A resolved alert whose episode ended longer ago than this leaves memory (the history
    /// keeps it; its id is remembered so it is never reused).
    pub resolved_horizon: Duration,
    /// Escalation chains by care team: a team with one escalates along its steps (their
    /// delays, whoever is on call) instead of `escalate_after` / `max_escalations`.
    pub chains: Arc<crate::chain::Chains>,
    /// Repeat intervals per level.
    pub levels: crate::policy::Levels,
    /// Which patients this node alerts for ([`ownership`]): everyone on a single node, the
    /// partitions it holds leases on in a cluster.
    pub ownership: Arc<dyn carewatch_store::lease::Ownership>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: Duration::from_secs(1),
            batch: Duration::from_millis(200),
            bins_window: None,
            escalate_after: Duration::from_secs(15 * 60),
            max_escalations: 3,
            rule_timeout: Duration::from_secs(10),
            memory_bytes: 1 << 30,
            resolved_horizon: Duration::from_secs(48 * 3600),
            chains: Arc::default(),
            levels: crate::policy::Levels::default(),
            ownership: Arc::new(carewatch_store::lease::Everything),
        }
    }
}

/// Why an action on an alert (acknowledge, assign, note, snooze, resolve) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// No such alert, or not the caller's.
    #[error("no such alert")]
    NotFound,
    /// Already resolved.
    #[error("the alert is already resolved")]
    Resolved,
    /// The request is not one the action takes (the message says why; it never holds data).
    #[error("{0}")]
    Invalid(&'static str),
    /// Writing the history failed.
    #[error("could not record the action")]
    Io,
}

/// The acknowledgement's error (an [`ActionError`]).
pub type AckError = ActionError;

struct Inner {
    config: Config,
    rules: RwLock<Arc<Vec<Rule>>>,
    ctx: SessionContext,
    registry: Arc<Registry>,
    history: Arc<History>,
    dirty: Mutex<gather::Dirty>,
    /// Told when the first patient becomes dirty after a run took them.
    dirtied: Notify,
    /// The live minute bins behind the session's `vital_minutes`.
    bins: Arc<crate::minutes::MinuteBins>,
    /// What each rule owes after a failed run (ranges and catch-up), retried next run.
    retry: Mutex<HashMap<String, gather::Owed>>,
    failures: gather::FailureCounts,
    /// The rules' samples: evaluation only.
    samples: Mutex<Samples>,
    /// One evaluation at a time (the samples' patient ids hold from gather to absorb).
    running: tokio::sync::Mutex<()>,
    /// The alerts as they stand: readers take it briefly, writers only to snapshot and apply.
    state: Mutex<State>,
    /// Serialises the writers of the alerts ([`commit`]).
    writer: Mutex<()>,
    /// Transitions other nodes wrote, applied by the next writer ([`commit`]).
    foreign: Arc<Mutex<Vec<Arc<Transition>>>>,
    events: broadcast::Sender<Arc<Transition>>,
    wake: Arc<Notify>,
    catch_up: std::sync::atomic::AtomicBool,
    /// The partitions owned at the last run (a gain makes the next run a catch-up).
    owned: Mutex<Owned>,
    last_run_us: std::sync::atomic::AtomicI64,
    runs: std::sync::atomic::AtomicU64,
    run_seconds: Mutex<carewatch_store::Histogram>,
    /// Time spent in gather, absorb and commit over all runs, µs.
    phase_us: [std::sync::atomic::AtomicU64; 3],
    /// Samples held at the last once-a-minute sweep (`/metrics`).
    samples_held: std::sync::atomic::AtomicUsize,
}

/// The live alert engine (cheap to clone).
#[derive(Clone)]
pub struct AlertEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AlertEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertEngine").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How far back a rule must look to see a whole episode around new data.
pub(crate) fn lookback_us(rule: &Rule, params: &Params) -> i64 {
    let s = rule.shape(params).unwrap_or(crate::episodes::Shape {
        bucket_us: rule.bucket_us,
        for_us: 0,
        clear_us: 0,
        contiguous: true,
        absence: false,
        lowest: false,
    });
    s.for_us + s.clear_us + 2 * s.bucket_us
}

/// [`lookback_us`] over every patient's parameters of `rule` (its defaults and overrides).
pub(crate) fn max_lookback_us(rule: &Rule) -> i64 {
    std::iter::once(lookback_us(rule, &rule.params))
        .chain(
            rule.overrides
                .keys()
                .map(|p| lookback_us(rule, &rule.params_for(Some(p)))),
        )
        .max()
        .unwrap_or(0)
}

/// Minutes of lateness the live bins absorb beyond the rules' look-back (see [`bins_window_for`]).
pub const LATE_MARGIN_MINUTES: i64 = 15;

/// How long minute bins stay in memory when `alerts.bins_minutes` is not set: the longest
/// look-back of `rules` plus [`LATE_MARGIN_MINUTES`] for late readings (a reading `d` late makes
/// its rules read from `d + look-back` ago), whole minutes — 77 minutes with the shipped rules.
/// A read behind it is folded from `observations`, which is correct but scans Parquet on the
/// rules' thread: with only 5 minutes of margin, the load bench's phones that sync 5 minutes late
/// sent every run there (the rules thread decoding Parquet, the server short of CPU at 100,000
/// patients). An hour of margin (122 minutes) held 1.2 GiB of bins at 100,000 patients; 15
/// minutes is three times the load bench's lateness at 0.63 of the memory.
pub fn bins_window_for(rules: &[Rule]) -> Duration {
    const MIN_US: i64 = 60_000_000;
    let lb = rules.iter().map(max_lookback_us).max().unwrap_or(0);
    let minutes = (lb + LATE_MARGIN_MINUTES * MIN_US + MIN_US - 1) / MIN_US;
    Duration::from_secs(minutes as u64 * 60)
}

fn floor(t: i64, b: i64) -> i64 {
    t.div_euclid(b) * b
}

impl AlertEngine {
    /// Builds the engine: rebuilds alert state from the history and subscribes to the
    /// store's appends. Call [`AlertEngine::run`] to start evaluating.
    pub fn new(
        config: Config,
        rules: Vec<Rule>,
        ctx: SessionContext,
        store: &Store,
        registry: Arc<Registry>,
        history: Arc<History>,
    ) -> AlertEngine {
        // Other nodes' transitions (a cluster's shared history) wait here for the next writer.
        // The webhook notifier reads the history itself, so it is woken at once.
        let foreign: Arc<Mutex<Vec<Arc<Transition>>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let (queue, woken) = (foreign.clone(), wake.clone());
        let before = history.follow_foreign(Box::new(move |ts: &[Arc<Transition>]| {
            lock(&queue).extend(ts.iter().cloned());
            woken.notify_waiters();
            woken.notify_one();
        }));
        let mut state = State::default();
        for t in before {
            state.apply(&t);
        }
        let (events, _) = broadcast::channel(4096);
        let window = config
            .bins_window
            .unwrap_or_else(|| bins_window_for(&rules));
        let bins = crate::minutes::live(&ctx, store, window);
        let owned = Mutex::new(Owned::now(config.ownership.as_ref()));
        let inner = Arc::new(Inner {
            config,
            rules: RwLock::new(Arc::new(rules)),
            ctx,
            registry,
            history,
            dirty: Mutex::new(HashMap::new()),
            dirtied: Notify::new(),
            bins,
            retry: Mutex::new(HashMap::new()),
            failures: gather::FailureCounts::default(),
            samples: Mutex::new(Samples::default()),
            running: tokio::sync::Mutex::new(()),
            state: Mutex::new(state),
            writer: Mutex::new(()),
            foreign,
            events,
            wake,
            catch_up: std::sync::atomic::AtomicBool::new(true),
            owned,
            last_run_us: std::sync::atomic::AtomicI64::new(0),
            runs: std::sync::atomic::AtomicU64::new(0),
            run_seconds: Mutex::new(carewatch_store::Histogram::default()),
            phase_us: Default::default(),
            samples_held: Default::default(),
        });
        let weak = Arc::downgrade(&inner);
        store.observe_appends(Arc::new(move |sum: &carewatch_store::AppendSummary| {
            if let Some(inner) = weak.upgrade() {
                // Bins first: a run that takes the dirty mark must find the readings binned.
                inner.bins.add(sum);
                let mut d = lock(&inner.dirty);
                let was_idle = d.is_empty();
                for (p, a, b) in &sum.patients {
                    let e = d.entry(p.clone()).or_insert((*a, *b));
                    e.0 = e.0.min(*a);
                    e.1 = e.1.max(*b);
                }
                drop(d);
                if was_idle {
                    inner.dirtied.notify_one();
                }
            }
        }));
        AlertEngine { inner }
    }

    /// The rules in use.
    pub fn rules(&self) -> Arc<Vec<Rule>> {
        self.inner
            .rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the rules (already checked); samples are rebuilt by a catch-up run.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        if self.inner.config.bins_window.is_none() {
            self.inner.bins.set_window(bins_window_for(&rules));
        }
        *self
            .inner
            .rules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(rules);
        lock(&self.inner.samples).clear_series();
        self.inner
            .catch_up
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The lead of care team `team`, when its chain names one (`[alerts.escalation.<team>]
    /// lead`).
    pub fn team_lead(&self, team: &str) -> Option<crate::chain::LeadConfig> {
        self.inner.config.chains.get(team)?.lead().cloned()
    }

    /// Whether this node alerts for `patient` now (always on a single node).
    pub fn owns(&self, patient: &str) -> bool {
        self.inner.config.ownership.owns(patient)
    }

    /// Whether this node delivers webhooks now (a single node always does; in a cluster the
    /// owner of [`carewatch_store::lease::DELIVERY_PARTITION`]).
    pub fn delivers_webhooks(&self) -> bool {
        self.inner
            .config
            .ownership
            .owns_partition(carewatch_store::lease::DELIVERY_PARTITION)
    }

    /// The history.
    pub fn history(&self) -> &Arc<History> {
        &self.inner.history
    }

    /// Live transitions (for SSE, MQTT).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Transition>> {
        self.inner.events.subscribe()
    }

    /// Woken after each batch of transitions is durable (for the webhook notifier).
    pub fn written(&self) -> &Notify {
        &self.inner.wake
    }

    fn publish(&self, written: Vec<Arc<Transition>>) {
        if written.is_empty() {
            return;
        }
        for t in written {
            let _ = self.inner.events.send(t);
        }
        self.inner.wake.notify_waiters();
        self.inner.wake.notify_one();
    }

    /// Runs the evaluation loop until `shutdown`: `batch` after appends made patients dirty,
    /// and every `interval` for the clock's work.
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(self.inner.config.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
                () = self.inner.dirtied.notified() => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(self.inner.config.batch) => {}
                    }
                }
            }
            let started = std::time::Instant::now();
            let r = self.evaluate(now_us()).await;
            lock(&self.inner.run_seconds).observe(started.elapsed());
            match r {
                Ok(n) if n > 0 => tracing::info!(transitions = n, "alert transitions"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "alert evaluation failed"),
            }
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "rules ran"
            );
        }
    }

    /// One evaluation at wall time `now`: gather (the rules' SQL over what changed), absorb
    /// (samples and episodes), then reconcile and commit. Returns the transitions written.
    pub async fn evaluate(&self, now: i64) -> Result<usize, String> {
        let inner = &self.inner;
        let _running = inner.running.lock().await;
        inner.bins.advance(now);
        let (owned, gained) = self.ownership_round();
        let moved = self.reassign_moved(&owned, now)?;
        let rules = self.rules();
        let catch_up = inner
            .catch_up
            .swap(false, std::sync::atomic::Ordering::SeqCst)
            || gained;
        let mut dirty: gather::Dirty = std::mem::take(&mut *lock(&inner.dirty));
        ownership::keep_owned_dirty(&mut dirty, &owned);
        let ids = {
            let mut sm = lock(&inner.samples);
            sm.use_rules(&rules);
            sm.take_dirty(&dirty)
        };
        let clock = std::time::Instant::now();
        let mut gathered = self.gather(&rules, (&dirty, &ids), catch_up, now).await;
        ownership::keep_owned_found(&mut gathered.found, &owned, &lock(&inner.samples));
        let gathered_at = self.phase(0, clock);
        let work = self.absorb(&rules, gathered.found, now);
        let absorbed_at = self.phase(1, gathered_at);
        let committed = self.commit_run(&rules, work, &owned, now);
        self.phase(2, absorbed_at);
        let written = match committed {
            Ok(w) => w,
            Err(e) => {
                // Nothing of this run is durable: every rule owes its ranges again.
                for (rule, mut owed) in gathered.covered {
                    gather::merge(&mut owed.dirty, &dirty);
                    self.owe(&rule, owed);
                }
                return Err(format!("alert history: {e}"));
            }
        };
        let n = written.len() + moved;
        inner
            .last_run_us
            .store(now, std::sync::atomic::Ordering::Relaxed);
        inner
            .runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.publish(written);
        Ok(n)
    }
}

/// Wall clock, UTC µs.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
