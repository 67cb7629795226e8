//! The rota, overrides and checks.

use super::*;

fn us(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .timestamp_micros()
}

fn berlin() -> Chain {
    let toml = r#"
        timezone = "Europe/Berlin"
        steps = [
          { after_minutes = 10, name = "backup", url = "http://b/hook" },
          { after_minutes = 15, oncall = true },
        ]
        oncall = [
          { days = ["mon", "tue", "wed", "thu", "fri"], from = "08:00", to = "18:00", person = "dr-day", url = "http://day/hook" },
          { days = ["fri", "sat", "sun", "mon", "tue", "wed", "thu"], from = "18:00", to = "08:00", person = "dr-night", url = "http://night/hook" },
        ]
        overrides = [
          { from = "2026-12-24T00:00:00Z", to = "2026-12-27T00:00:00Z", person = "dr-cover", url = "http://cover/hook" },
        ]
    "#;
    toml::from_str::<ChainConfig>(toml)
        .expect("toml")
        .check()
        .expect("chain")
}

fn who(c: &Chain, at: &str) -> Option<String> {
    c.on_call(us(at)).map(|c| c.who)
}

#[test]
fn the_rota_follows_the_teams_clock_across_midnight() {
    let c = berlin();
    // Monday 2026-11-30: 07:30 UTC is 08:30 in Berlin (day); 17:30 UTC is 18:30 (night).
    assert_eq!(who(&c, "2026-11-30T07:30:00Z").as_deref(), Some("dr-day"));
    assert_eq!(who(&c, "2026-11-30T17:30:00Z").as_deref(), Some("dr-night"));
    // Tuesday 03:00 Berlin: the night slot that started on Monday.
    assert_eq!(who(&c, "2026-12-01T02:00:00Z").as_deref(), Some("dr-night"));
    // Saturday noon: nobody in the day rota; the night slot does not cover it.
    assert_eq!(who(&c, "2026-12-05T11:00:00Z"), None);
}

#[test]
fn an_override_wins_while_it_lasts() {
    let c = berlin();
    assert_eq!(who(&c, "2026-12-24T09:00:00Z").as_deref(), Some("dr-cover"));
    assert_eq!(who(&c, "2026-12-28T09:00:00Z").as_deref(), Some("dr-day"));
}

#[test]
fn steps_have_their_delays_and_contacts() {
    let c = berlin();
    assert_eq!(c.len(), 2);
    assert_eq!(c.delay(1), Some(Duration::from_secs(600)));
    assert_eq!(c.delay(2), Some(Duration::from_secs(900)));
    assert_eq!(c.delay(3), None);
    assert_eq!(c.delay(0), None);
    let at = us("2026-11-30T07:30:00Z");
    assert_eq!(c.contact(1, at).map(|c| c.who).as_deref(), Some("backup"));
    assert_eq!(
        c.contact(2, at).map(|c| c.url).as_deref(),
        Some("http://day/hook")
    );
    let urls: Vec<String> = c.urls().into_iter().map(|u| u.1).collect();
    assert_eq!(
        urls,
        [
            "http://b/hook",
            "http://day/hook",
            "http://night/hook",
            "http://cover/hook"
        ]
    );
}

#[test]
fn a_bad_chain_names_its_problem() {
    let bad = |toml: &str| {
        toml::from_str::<ChainConfig>(toml)
            .expect("toml")
            .check()
            .unwrap_err()
    };
    assert!(bad(r#"timezone = "Mars/Olympus""#).contains("time zone"));
    assert!(bad("steps = [{ after_minutes = 5 }]").contains("`url` or `oncall"));
    assert!(bad("steps = [{ after_minutes = 5, oncall = true }]").contains("rota"));
    assert!(bad(r#"steps = [{ after_minutes = 0, url = "http://x" }]"#).contains("at least 1"));
    let rota = r#"steps = [{ after_minutes = 5, oncall = true }]
        oncall = [{ days = ["someday"], from = "08:00", to = "18:00", person = "p", url = "http://x" }]"#;
    assert!(bad(rota).contains("not a day"));
}
