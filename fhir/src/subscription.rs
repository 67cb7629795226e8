//! Topic-based subscriptions in the R4 form of the HL7 FHIR Subscriptions R5 Backport IG:
//! the `Subscription` a client posts (topic canonical in `criteria`, filters in the
//! `backport-filter-criteria` extension, a `rest-hook` channel, payload content in
//! `backport-payload-content`, heartbeat period in `backport-heartbeat-period`), and the
//! notification `Bundle`s (type `history`, first entry a `Parameters` with the
//! `backport-subscription-status-r4` profile: subscription, topic, status, type,
//! `events-since-subscription-start`, one `notification-event` per event). Pure.

use serde_json::{Value, json};

/// The Backport IG's StructureDefinitions.
pub const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";
/// The alert topic: every transition of an alert (fired, escalated, acknowledged, resolved…);
/// the focus is the alert's `Communication`.
pub const ALERT_TOPIC: &str = "urn:carewatch:SubscriptionTopic:alert-transition";
/// The vital-sign topic: newly stored vital-sign Observations; the focus is the Observation.
pub const OBSERVATION_TOPIC: &str = "urn:carewatch:SubscriptionTopic:vital-sign-observation";
/// The topics served, each with the filters it accepts.
pub const TOPICS: [(&str, &str, &[&str]); 2] = [
    (ALERT_TOPIC, "Communication", &["patient", "care-team"]),
    (
        OBSERVATION_TOPIC,
        "Observation",
        &["patient", "care-team", "code"],
    ),
];

/// How much of the focus a notification carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Content {
    /// No focus reference or resource.
    Empty,
    /// The focus reference only.
    IdOnly,
    /// The focus resource too.
    FullResource,
}

impl Content {
    fn code(self) -> &'static str {
        match self {
            Content::Empty => "empty",
            Content::IdOnly => "id-only",
            Content::FullResource => "full-resource",
        }
    }
}

/// A subscription request, checked.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    /// The topic canonical.
    pub topic: String,
    /// Filters: (parameter, value), every one must hold.
    pub filters: Vec<(String, String)>,
    /// The rest-hook endpoint.
    pub endpoint: String,
    /// Heartbeat period, seconds (none when absent).
    pub heartbeat_s: Option<u64>,
    /// Payload content.
    pub content: Content,
    /// `end`, if the client gave one (kept as given).
    pub end: Option<String>,
    /// `reason`.
    pub reason: String,
}

fn ext<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.get("extension")?
        .as_array()?
        .iter()
        .find(|e| e["url"].as_str() == Some(&format!("{BACKPORT}/{name}")))
}

/// Checks a posted Subscription. Errors name what is wrong.
pub fn parse(v: &Value) -> Result<Spec, String> {
    if v["resourceType"] != "Subscription" {
        return Err("the body must be a Subscription".into());
    }
    let topic = v["criteria"].as_str().unwrap_or_default();
    let Some((_, resource, allowed)) = TOPICS.iter().find(|(t, ..)| *t == topic) else {
        return Err(format!(
            "criteria must be a topic this server has: {ALERT_TOPIC} or {OBSERVATION_TOPIC}"
        ));
    };
    let mut filters = Vec::new();
    for f in v["_criteria"]["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["url"].as_str() == Some(&format!("{BACKPORT}/backport-filter-criteria")))
    {
        let s = f["valueString"].as_str().unwrap_or_default();
        let q = s
            .strip_prefix(&format!("{resource}?"))
            .ok_or_else(|| format!("filter criteria must start with {resource}?"))?;
        for (k, val) in crate::search::pairs(q) {
            if !allowed.contains(&k.as_str()) {
                return Err(format!("this topic cannot filter by {k:?}"));
            }
            let val = if k == "patient" {
                val.rsplit('/').next().unwrap_or(&val).to_owned()
            } else {
                val.rsplit('|').next().unwrap_or(&val).to_owned()
            };
            filters.push((k, val));
        }
    }
    let ch = &v["channel"];
    if ch["type"] != "rest-hook" {
        return Err("channel.type must be rest-hook".into());
    }
    let endpoint = ch["endpoint"].as_str().unwrap_or_default();
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err("channel.endpoint must be an http(s) URL".into());
    }
    if ch["payload"]
        .as_str()
        .is_some_and(|p| p != "application/fhir+json")
    {
        return Err("channel.payload must be application/fhir+json".into());
    }
    let content = match ext(&ch["_payload"], "backport-payload-content")
        .and_then(|e| e["valueCode"].as_str())
    {
        None | Some("id-only") => Content::IdOnly,
        Some("full-resource") => Content::FullResource,
        Some("empty") => Content::Empty,
        Some(_) => return Err("payload content must be empty, id-only or full-resource".into()),
    };
    let heartbeat_s = match ext(ch, "backport-heartbeat-period") {
        None => None,
        Some(e) => Some(
            e["valueUnsignedInt"]
                .as_u64()
                .filter(|s| *s > 0)
                .ok_or("heartbeat period must be a positive valueUnsignedInt")?,
        ),
    };
    Ok(Spec {
        topic: topic.to_owned(),
        filters,
        endpoint: endpoint.to_owned(),
        heartbeat_s,
        content,
        end: v["end"].as_str().map(str::to_owned),
        reason: v["reason"]
            .as_str()
            .unwrap_or("carewatch notifications")
            .to_owned(),
    })
}

/// The Subscription resource as served (the spec, the id, the status).
pub fn resource(id: &str, spec: &Spec, status: &str) -> Value {
    let filters: Vec<Value> = spec
        .filters
        .iter()
        .map(|(k, v)| {
            let ty = TOPICS
                .iter()
                .find(|(t, ..)| *t == spec.topic)
                .map_or("", |(_, r, _)| r);
            json!({"url": format!("{BACKPORT}/backport-filter-criteria"), "valueString": format!("{ty}?{k}={}", crate::search::encode(v))})
        })
        .collect();
    let mut channel = json!({
        "type": "rest-hook",
        "endpoint": spec.endpoint,
        "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": format!("{BACKPORT}/backport-payload-content"), "valueCode": spec.content.code()}]}
    });
    if let Some(h) = spec.heartbeat_s {
        channel["extension"] = json!([{"url": format!("{BACKPORT}/backport-heartbeat-period"), "valueUnsignedInt": h}]);
    }
    let mut s = json!({
        "resourceType": "Subscription",
        "id": id,
        "meta": {"profile": [format!("{BACKPORT}/backport-subscription")]},
        "status": status,
        "reason": spec.reason,
        "criteria": spec.topic,
        "channel": channel
    });
    if !filters.is_empty() {
        s["_criteria"] = json!({"extension": filters});
    }
    if let Some(end) = &spec.end {
        s["end"] = json!(end);
    }
    s
}

/// One event as kept: its number, when, and its focus.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// 1, 2, 3… per subscription, never reused.
    pub number: u64,
    /// When it happened (RFC 3339).
    pub timestamp: String,
    /// `Type/id` of the focus.
    pub focus: String,
    /// The focus resource as it was then.
    pub resource: Value,
}

/// What a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sent once on creation.
    Handshake,
    /// Nothing happened for a heartbeat period.
    Heartbeat,
    /// Events.
    EventNotification,
    /// The answer of `$status`.
    QueryStatus,
    /// The answer of `$events`.
    QueryEvent,
}

impl Kind {
    fn code(self) -> &'static str {
        match self {
            Kind::Handshake => "handshake",
            Kind::Heartbeat => "heartbeat",
            Kind::EventNotification => "event-notification",
            Kind::QueryStatus => "query-status",
            Kind::QueryEvent => "query-event",
        }
    }
}

/// Where the subscription is, for a status.
#[derive(Debug, Clone, Copy)]
pub struct Status<'a> {
    /// The server's base URL.
    pub base: &'a str,
    /// Subscription id.
    pub id: &'a str,
    /// Topic canonical.
    pub topic: &'a str,
    /// `requested`, `active`, `error` or `off`.
    pub status: &'a str,
    /// Events so far.
    pub events_since_start: u64,
    /// Payload content.
    pub content: Content,
}

/// The `backport-subscription-status-r4` Parameters.
pub fn status_parameters(s: &Status<'_>, kind: Kind, events: &[Event]) -> Value {
    let mut p = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{}/Subscription/{}", s.base, s.id)}}),
        json!({"name": "topic", "valueCanonical": s.topic}),
        json!({"name": "status", "valueCode": s.status}),
        json!({"name": "type", "valueCode": kind.code()}),
        json!({"name": "events-since-subscription-start", "valueString": s.events_since_start.to_string()}),
    ];
    for e in events {
        let mut part = vec![
            json!({"name": "event-number", "valueString": e.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": e.timestamp}),
        ];
        if s.content != Content::Empty {
            part.push(json!({"name": "focus", "valueReference": {"reference": format!("{}/{}", s.base, e.focus)}}));
        }
        p.push(json!({"name": "notification-event", "part": part}));
    }
    json!({
        "resourceType": "Parameters",
        "meta": {"profile": [format!("{BACKPORT}/backport-subscription-status-r4")]},
        "parameter": p
    })
}

/// A notification Bundle (type `history`): the status first, then the focus resources when
/// the payload is `full-resource`. `uuid` names the status entry, `now` is the timestamp.
pub fn notification(s: &Status<'_>, kind: Kind, events: &[Event], uuid: &str, now: &str) -> Value {
    let mut status = status_parameters(s, kind, events);
    status["id"] = json!(uuid);
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{uuid}"),
        "resource": status,
        "request": {"method": "GET", "url": format!("{}/Subscription/{}/$status", s.base, s.id)},
        "response": {"status": "200"}
    })];
    if s.content == Content::FullResource {
        for e in events {
            entries.push(json!({
                "fullUrl": format!("{}/{}", s.base, e.focus),
                "resource": e.resource,
                "request": {"method": "PUT", "url": e.focus},
                "response": {"status": "200"}
            }));
        }
    }
    json!({
        "resourceType": "Bundle",
        "meta": {"profile": [format!("{BACKPORT}/backport-subscription-notification-r4")]},
        "type": "history",
        "timestamp": now,
        "entry": entries
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posted() -> Value {
        json!({
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "alerts of north",
            "criteria": ALERT_TOPIC,
            "_criteria": {"extension": [{"url": format!("{BACKPORT}/backport-filter-criteria"), "valueString": "Communication?patient=Patient/alice"}]},
            "channel": {
                "type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": format!("{BACKPORT}/backport-payload-content"), "valueCode": "full-resource"}]},
                "extension": [{"url": format!("{BACKPORT}/backport-heartbeat-period"), "valueUnsignedInt": 2}]
            }
        })
    }

    #[test]
    fn parses_the_backport_form_and_refuses_what_it_cannot_do() {
        let s = parse(&posted()).expect("spec");
        assert_eq!(s.filters, [("patient".to_owned(), "alice".to_owned())]);
        assert_eq!((s.content, s.heartbeat_s), (Content::FullResource, Some(2)));
        let back = resource("s1", &s, "active");
        assert_eq!(parse(&back).expect("round trip"), s);
        for (path, bad) in [
            ("/criteria", json!("urn:other")),
            ("/channel/type", json!("websocket")),
            ("/channel/endpoint", json!("ftp://x")),
            (
                "/_criteria/extension/0/valueString",
                json!("Communication?code=1"),
            ),
            (
                "/_criteria/extension/0/valueString",
                json!("Observation?patient=a"),
            ),
        ] {
            let mut v = posted();
            *v.pointer_mut(path).expect("path") = bad;
            assert!(parse(&v).is_err(), "{path}");
        }
    }

    #[test]
    fn notifications_follow_the_backport_examples() {
        let st = Status {
            base: "http://h/fhir",
            id: "s1",
            topic: ALERT_TOPIC,
            status: "active",
            events_since_start: 2,
            content: Content::FullResource,
        };
        let e = Event {
            number: 2,
            timestamp: "2024-05-01T08:00:00Z".into(),
            focus: "Communication/a1".into(),
            resource: json!({"resourceType": "Communication", "id": "a1", "status": "in-progress"}),
        };
        let b = notification(
            &st,
            Kind::EventNotification,
            &[e],
            "u1",
            "2024-05-01T08:00:01Z",
        );
        assert_eq!(b["type"], "history");
        let p = &b["entry"][0]["resource"];
        assert_eq!(p["resourceType"], "Parameters");
        assert_eq!(p["parameter"][4]["valueString"], "2");
        assert_eq!(p["parameter"][5]["part"][0]["valueString"], "2");
        assert_eq!(
            p["parameter"][5]["part"][2]["valueReference"]["reference"],
            "http://h/fhir/Communication/a1"
        );
        assert_eq!(b["entry"][1]["resource"]["id"], "a1");
        let h = notification(&st, Kind::Handshake, &[], "u2", "2024-05-01T08:00:01Z");
        assert_eq!(h["entry"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            h["entry"][0]["resource"]["parameter"][3]["valueCode"],
            "handshake"
        );
    }
}
