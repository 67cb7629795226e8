//! Escalation chains and on-call (issue #16). Per care team, an ordered chain after the team's
//! own receiver (step 0): each step is told when an alert is still unacknowledged (and not
//! snoozed) a set time after the previous step was — a fixed receiver (a backup nurse's
//! pager), or whoever is on call then by the team's weekly rota (in the team's time zone) or an
//! override (a holiday cover). The engine writes one `escalated` transition per step, naming
//! who it went to (`notified`); the notifier delivers it — and every later transition of that
//! alert, so the step hears of the acknowledgement — to the step's receiver.
//!
//! ```toml
//! [alerts.escalation.north]
//! timezone = "Europe/Berlin"
//! steps = [
//!   { after_minutes = 10, name = "backup", url = "https://pager.example/backup" },
//!   { after_minutes = 15, oncall = true },
//! ]
//! oncall = [
//!   { days = ["mon", "tue", "wed", "thu", "fri"], from = "08:00", to = "18:00", person = "dr-day", url = "https://pager.example/day" },
//!   { days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], from = "18:00", to = "08:00", person = "dr-night", url = "https://pager.example/night" },
//! ]
//! overrides = [
//!   { from = "2026-12-24T00:00:00Z", to = "2026-12-27T00:00:00Z", person = "dr-cover", url = "https://pager.example/cover" },
//! ]
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Weekday};
use serde::Deserialize;

/// One team's chain as configured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// The rota's time zone (IANA name; default UTC).
    pub timezone: Option<String>,
    /// The steps after the team's own receiver, in order.
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// The weekly on-call rota.
    #[serde(default)]
    pub oncall: Vec<RotaConfig>,
    /// Overrides of the rota (take precedence while they last).
    #[serde(default)]
    pub overrides: Vec<OverrideConfig>,
    /// The team's lead: told when someone outside the team breaks the glass into one of its
    /// patients (`lead = { person = "…", url = "https://…", secret = "…" }`).
    pub lead: Option<LeadConfig>,
}

/// A team lead's receiver as configured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadConfig {
    /// Who the lead is (shown in the audit trail).
    pub person: String,
    /// Their receiver (a JSON POST, like alert webhooks).
    pub url: String,
    /// HMAC-SHA256 secret signing the bodies (`X-Carewatch-Signature`).
    pub secret: Option<String>,
}

/// One step as configured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Minutes after the previous step was told.
    pub after_minutes: u32,
    /// A name for the step (default `step N`), shown in the history.
    pub name: Option<String>,
    /// The receiver of a fixed step.
    pub url: Option<String>,
    /// The step goes to whoever is on call.
    #[serde(default)]
    pub oncall: bool,
}

/// A weekly rota slot as configured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotaConfig {
    /// `mon` … `sun`: the days the slot starts on.
    pub days: Vec<String>,
    /// Local start, `HH:MM`.
    pub from: String,
    /// Local end, `HH:MM` (earlier than `from`: the slot ends the next day).
    pub to: String,
    /// Who is on call.
    pub person: String,
    /// Their receiver.
    pub url: String,
}

/// An override as configured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    /// Start, RFC 3339.
    pub from: String,
    /// End, RFC 3339.
    pub to: String,
    /// Who is on call.
    pub person: String,
    /// Their receiver.
    pub url: String,
}

/// Who is told: a person (or step name) and their receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Shown in the history (`notified`).
    pub who: String,
    /// The receiver URL.
    pub url: String,
}

#[derive(Debug, Clone)]
enum Target {
    Fixed(Contact),
    OnCall,
}

/// One step.
#[derive(Debug, Clone)]
struct Step {
    after: Duration,
    target: Target,
}

#[derive(Debug, Clone)]
struct Slot {
    days: Vec<Weekday>,
    from: NaiveTime,
    to: NaiveTime,
    contact: Contact,
}

/// One team's chain, checked.
#[derive(Debug, Clone)]
pub struct Chain {
    tz: chrono_tz::Tz,
    steps: Vec<Step>,
    rota: Vec<Slot>,
    overrides: Vec<(i64, i64, Contact)>,
    lead: Option<LeadConfig>,
}

/// The chains by care team.
pub type Chains = BTreeMap<String, Chain>;

fn day(s: &str) -> Result<Weekday, String> {
    s.parse::<Weekday>()
        .map_err(|_| format!("{s:?} is not a day (mon … sun)"))
}

fn time(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("{s:?} is not a time (HH:MM)"))
}

fn instant(s: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_micros())
        .map_err(|_| format!("{s:?} is not an RFC 3339 time"))
}

impl ChainConfig {
    /// Checks the chain (names the first problem).
    pub fn check(&self) -> Result<Chain, String> {
        let tz = match &self.timezone {
            Some(z) => z.parse().map_err(|_| format!("unknown time zone {z:?}"))?,
            None => chrono_tz::UTC,
        };
        let mut steps = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            let target = match (&s.url, s.oncall) {
                (Some(url), false) => Target::Fixed(Contact {
                    who: s.name.clone().unwrap_or_else(|| format!("step {}", i + 1)),
                    url: url.clone(),
                }),
                (None, true) => Target::OnCall,
                _ => {
                    return Err(format!(
                        "step {} needs either `url` or `oncall = true`",
                        i + 1
                    ));
                }
            };
            if s.after_minutes == 0 {
                return Err(format!("step {}: after_minutes must be at least 1", i + 1));
            }
            let after = Duration::from_secs(u64::from(s.after_minutes) * 60);
            steps.push(Step { after, target });
        }
        let mut rota = Vec::new();
        for r in &self.oncall {
            let days = r.days.iter().map(|d| day(d)).collect::<Result<_, _>>()?;
            let contact = Contact {
                who: r.person.clone(),
                url: r.url.clone(),
            };
            let (from, to) = (time(&r.from)?, time(&r.to)?);
            rota.push(Slot {
                days,
                from,
                to,
                contact,
            });
        }
        let mut overrides = Vec::new();
        for o in &self.overrides {
            let (a, b) = (instant(&o.from)?, instant(&o.to)?);
            if b <= a {
                return Err(format!("override {}: `to` is not after `from`", o.from));
            }
            let c = Contact {
                who: o.person.clone(),
                url: o.url.clone(),
            };
            overrides.push((a, b, c));
        }
        let oncall_steps = steps.iter().any(|s| matches!(s.target, Target::OnCall));
        if oncall_steps && rota.is_empty() && overrides.is_empty() {
            return Err("an `oncall` step needs an `oncall` rota or `overrides`".into());
        }
        if let Some(l) = &self.lead {
            let http = l.url.starts_with("http://") || l.url.starts_with("https://");
            if !http || l.person.trim().is_empty() {
                return Err("lead needs a `person` and an http(s) `url`".into());
            }
        }
        Ok(Chain {
            tz,
            steps,
            rota,
            overrides,
            lead: self.lead.clone(),
        })
    }
}

impl Chain {
    /// The team's lead (told of break-glass access to the team's patients).
    pub fn lead(&self) -> Option<&LeadConfig> {
        self.lead.as_ref()
    }

    /// Steps after the team's own receiver.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True without steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The delay before step `n` (1-based) after the previous one was told.
    pub fn delay(&self, n: u32) -> Option<Duration> {
        self.steps
            .get((n as usize).checked_sub(1)?)
            .map(|s| s.after)
    }

    /// Who step `n` (1-based) tells at `at_us` (for an on-call step, whoever is on call then;
    /// `None` when nobody is).
    pub fn contact(&self, n: u32, at_us: i64) -> Option<Contact> {
        match &self.steps.get((n as usize).checked_sub(1)?)?.target {
            Target::Fixed(c) => Some(c.clone()),
            Target::OnCall => self.on_call(at_us),
        }
    }

    /// Whoever is on call at `at_us`: an override first, then the rota.
    pub fn on_call(&self, at_us: i64) -> Option<Contact> {
        if let Some((_, _, c)) = self
            .overrides
            .iter()
            .find(|(a, b, _)| *a <= at_us && at_us < *b)
        {
            return Some(c.clone());
        }
        let local = self
            .tz
            .from_utc_datetime(&DateTime::from_timestamp_micros(at_us)?.naive_utc());
        let (today, now) = (local.weekday(), local.time());
        self.rota
            .iter()
            .find(|s| {
                if s.from < s.to {
                    s.days.contains(&today) && s.from <= now && now < s.to
                } else {
                    // Over midnight: started today after `from`, or yesterday and before `to`.
                    (s.days.contains(&today) && now >= s.from)
                        || (s.days.contains(&today.pred()) && now < s.to)
                }
            })
            .map(|s| s.contact.clone())
    }

    /// Every receiver URL the chain may use (fixed steps, rota, overrides).
    pub fn urls(&self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            let n = i as u32 + 1;
            match &s.target {
                Target::Fixed(c) => out.push((n, c.url.clone())),
                Target::OnCall => {
                    let all = self.rota.iter().map(|s| &s.contact);
                    let all = all.chain(self.overrides.iter().map(|o| &o.2));
                    out.extend(all.map(|c| (n, c.url.clone())));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
