//! Rule files: parsing, parameters, overrides, levels and burden controls.
use super::*;

#[test]
fn shipped_rules_parse() {
    let rules = load(None).expect("defaults");
    assert_eq!(rules.len(), 8);
    let hr = rules
        .iter()
        .find(|r| r.id == "hr_high_at_rest")
        .expect("hr");
    assert_eq!(hr.params["threshold"], Param::Int(100));
    assert_eq!(hr.params["for_minutes"], Param::Int(10));
}

#[test]
fn bad_files_name_their_line() {
    let e = Rule::parse("r.toml", "title = \"x\"\nseverity = \"loud\"\n").expect_err("bad");
    assert_eq!(e.line, 2, "{e}");
    assert!(e.to_string().starts_with("r.toml:2:"), "{e}");
    let text = "title = \"x\"\nseverity = \"high\"\nmessage = \"m\"\n\nsql = \"SELECT {nope} FROM observations WHERE {scope}\"\n";
    let e = Rule::parse("r.toml", text).expect_err("bad");
    assert_eq!((e.line, e.message.contains("nope")), (5, true), "{e}");
    let text = "title = \"x\"\nseverity = \"high\"\nmessage = \"m\"\nsql = \"SELECT 1\"\n";
    let e = Rule::parse("r.toml", text).expect_err("bad");
    assert!(e.message.contains("{scope}"), "{e}");
}

#[test]
fn overrides_and_params() {
    let text = "title = \"x\"\nseverity = \"high\"\nmessage = \"above {threshold} for {minutes} min, peak {value}\"\nsql = \"SELECT {threshold} WHERE {scope}\"\n[params]\nthreshold = 100\nfor_minutes = 10\n[overrides.p1]\nthreshold = 130.5\n";
    let mut r = Rule::parse("x.toml", text).expect("ok");
    assert_eq!(
        r.render(&r.params_for(Some("p1")), "s").expect("sql"),
        "SELECT 130.5 WHERE (s)"
    );
    assert_eq!(
        r.render(&r.params_for(Some("p2")), "s").expect("sql"),
        "SELECT 100 WHERE (s)"
    );
    assert_eq!(
        r.message_for(&r.params_for(None), Some(121.04), 12),
        "above 100 for 12 min, peak 121"
    );
    assert!(r.set_param("nope", Param::Int(1)).is_err());
    r.set_param("threshold", Param::parse("120").expect("p"))
        .expect("set");
    assert_eq!(r.shape(&r.params).expect("shape").for_us, 600_000_000);
    let bad = text.replace("[overrides.p1]\nthreshold", "[overrides.p1]\nthreshhold");
    let e = Rule::parse("x.toml", &bad).expect_err("unknown override");
    assert_eq!(e.line, 9, "{e}");
    assert_eq!(Param::parse("1; DROP"), None);
}

#[test]
fn levels_default_from_severity_and_are_set_per_rule_and_patient() {
    let rules = load(None).expect("defaults");
    let level = |id: &str| rules.iter().find(|r| r.id == id).expect("rule").level;
    assert_eq!(level("spo2_low"), Level::Urgent, "critical");
    assert_eq!(level("hr_high_at_rest"), Level::Urgent, "high");
    assert_eq!(level("fever"), Level::Warning, "warning");
    assert_eq!(level("device_silent"), Level::Info, "info");
    let text = "title = \"x\"\nseverity = \"high\"\nlevel = \"warning\"\nmessage = \"m\"\nsql = \"SELECT {threshold} WHERE {scope}\"\n[params]\nthreshold = 100\n[overrides.p1]\nlevel = \"info\"\nthreshold = 120\n[overrides.p2]\nlevel = \"urgent\"\n";
    let r = Rule::parse("x.toml", text).expect("ok");
    assert_eq!(
        (r.level_for("p0"), r.level_for("p1"), r.level_for("p2")),
        (Level::Warning, Level::Info, Level::Urgent)
    );
    assert_eq!(r.params_for(Some("p1"))["threshold"], Param::Int(120));
    let e = Rule::parse("x.toml", &text.replace("\"info\"", "\"loud\"")).expect_err("bad");
    assert!(
        e.message.contains("loud") || e.message.contains("variant"),
        "{e}"
    );
}

#[test]
fn burden_controls_are_parameters_every_rule_has() {
    let text = "title = \"x\"\nseverity = \"warning\"\nmessage = \"m\"\nsql = \"SELECT 1 WHERE {scope}\"\n[overrides.p1]\nexpected = true\nrealert_gap_minutes = 30\nquiet = [\"22:00-07:00\"]\ntimezone = \"Europe/London\"\n";
    let mut r = Rule::parse("x.toml", text).expect("ok");
    assert_eq!(r.burden_for("p1"), (30 * 60_000_000, true));
    assert_eq!(r.burden_for("p2"), (0, false));
    assert!(r.quiet_for("p1").is_some() && r.quiet_for("p2").is_none());
    r.set_param("realert_gap_minutes", Param::Int(10))
        .expect("reserved");
    assert_eq!(r.burden_for("p2"), (10 * 60_000_000, false));
    assert!(r.set_param("expected", Param::Int(1)).is_err());
    let bad = text.replace("timezone = \"Europe/London\"", "timezone = \"Nowhere\"");
    let e = Rule::parse("x.toml", &bad).expect_err("zone");
    assert_eq!(e.line, 9, "{e}");
    let bad = text.replace("= 30", "= -5");
    assert!(Rule::parse("x.toml", &bad).is_err());
}
