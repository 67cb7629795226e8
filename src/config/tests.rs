//! Resolving the configuration: flags over the file over defaults.

use super::*;

#[test]
fn shipped_example_config_parses_and_resolves() {
    let path = carewatch_fixtures::repo_dir().join("deploy/carewatch.example.toml");
    let text = std::fs::read_to_string(path).expect("example config");
    let file = parse_file(&text).expect("parses");
    let c = resolve(Overrides::default(), file).expect("valid");
    assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
    assert_eq!(c.persist_age, Some(Duration::from_secs(300)));
    assert_eq!(c.alert_engine.escalate_after, Duration::from_secs(900));
    assert_eq!(c.alert_routes.attempts, 8);
    let north = c.alert_engine.chains.get("north").expect("north's chain");
    assert_eq!(north.len(), 2);
    assert!(std::sync::Arc::ptr_eq(
        &c.alert_engine.chains,
        &c.alert_routes.chains
    ));
}

#[test]
fn a_bad_escalation_chain_is_refused_with_its_team() {
    let bad = |toml: &str| {
        let f = parse_file(toml).expect("parse");
        resolve(Overrides::default(), f).unwrap_err().to_string()
    };
    let e = bad("[alerts.escalation.north]\nsteps = [{ after_minutes = 5 }]");
    assert!(
        e.contains("alerts.escalation.north") && e.contains("`url`"),
        "{e}"
    );
    let e = bad("[alerts.escalation.north]\nsteps = [{ after_minutes = 5, url = \"ftp://x\" }]");
    assert!(e.contains("http://"), "{e}");
    let e = bad("[alerts.escalation.unassigned]\nsteps = []");
    assert!(e.contains("not a care team"), "{e}");
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    assert!(parse_file("htp_addr = \"x\"").is_err());
    let e = resolve(
        Overrides {
            http_addr: Some("nope".into()),
            ..Overrides::default()
        },
        FileConfig::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("http_addr"), "{e}");
    let e = resolve(
        Overrides {
            mqtt_url: Some("http://x".into()),
            ..Overrides::default()
        },
        FileConfig::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("mqtt://"), "{e}");
    // Flags win over the file.
    let f = parse_file("data_dir = \"/from/file\"").expect("parse");
    let c = resolve(
        Overrides {
            data_dir: Some("/from/flag".into()),
            ..Overrides::default()
        },
        f,
    )
    .expect("ok");
    assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
}
