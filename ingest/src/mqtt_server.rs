//! The embedded MQTT listener (MQTT 3.1.1) that devices publish to.
//!
//! Why not rumqttd: its router answers a QoS 1 PUBLISH with PUBACK as soon as the message is in
//! its in-memory log, before any consumer has stored it — the "ack on receipt" trap that loses
//! data on a crash. Here the PUBACK is sent only after the readings (or their dead letters) are
//! in the fsynced WAL, in the order the PUBLISHes arrived (MQTT 3.1.1 §4.6). The wire codec is
//! rumqttc's (`mqttbytes::v4`).
//!
//! Devices log in with username = device id and password = the device secret, and publish to
//! `devices/{device_id}/readings`. Under backpressure the listener stops reading the socket
//! (TCP pushes back on the device) and retries the append. QoS 2 is served in full: PUBREC
//! once durable (like PUBACK), a redelivery of an unreleased packet id is answered PUBREC again
//! without storing it twice, PUBREL gets PUBCOMP.
//!
//! A session lasts only as long as its credential: it `select!`s on
//! `Registry::until_invalid`, so revoking a device, rotating its secret (registering it again)
//! or revoking a token closes the connection at once, and no acknowledgement is sent once the
//! credential is no longer valid.
//!
//! Care managers and admins log in with their token — or, with an issuer configured, their
//! JWT — as the password (any username) and may subscribe to alert topics, when alert
//! publishing is enabled: a care manager to `carewatch/alerts/{one of their care teams}` only
//! (or the team of a patient they hold break-glass access to: then that patient's messages
//! only, while the grant lasts — every message is checked with `may_see_patient`), an admin to
//! any `carewatch/alerts/…` filter. Alert messages are delivered at QoS 0 (a live feed: the durable record is the alert history and
//! the webhook); such sessions may not publish.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    Codec, ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode,
};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use carewatch_store::registry::{Principal, Role, valid_team};
use carewatch_transform::{Reason, Rejection, Source};

/// Messages the listener offers to subscribers: (topic, payload).
pub type Outbound = tokio::sync::broadcast::Sender<(String, bytes::Bytes)>;

/// MQTT topic filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// May this principal subscribe to `filter`?
fn may_subscribe(who: &Principal, filter: &str) -> bool {
    let Some(rest) = filter.strip_prefix("carewatch/alerts/") else {
        return false;
    };
    match who.role {
        Role::Admin => !rest.is_empty(),
        // Their own teams only: never `unassigned`, never a wildcard.
        Role::CareManager => {
            carewatch_auth::in_team(who, rest) && valid_team(rest) && !rest.contains(['+', '#'])
        }
        _ => false,
    }
}

use crate::pipeline::{Origin, Pipeline};

/// Publishes in flight per connection (their appends run concurrently; acks stay in order).
const MAX_INFLIGHT: usize = 64;

/// Serves MQTT on `listener` (with TLS when an acceptor is given) until `shutdown`. Logins go
/// through `auth`, the same credential check (and failed-login limits) as every other wire.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pipeline: Arc<Pipeline>,
    auth: carewatch_auth::Authenticator,
    shutdown: CancellationToken,
    outbound: Option<Outbound>,
) {
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let edge = Edge { pipeline: pipeline.clone(), auth: auth.clone(), peer: peer.ip() };
                    let p = edge;
                    let s = shutdown.clone();
                    let tls = tls.clone();
                    let out = outbound.clone();
                    tracker.spawn(async move {
                        match tls {
                            None => connection(stream, p, s, out).await,
                            Some(acceptor) => {
                                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                    Ok(Ok(tls)) => connection(tls, p, s, out).await,
                                    _ => tracing::info!("MQTT TLS handshake failed"),
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tracker.close();
    // Let in-flight publishes finish and be acknowledged.
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
}

/// Topic a device must publish to.
pub fn readings_topic(device: &str) -> String {
    format!("devices/{device}/readings")
}

/// What a CONNECT logged in as.
enum Login {
    /// A device (username = its id, password = its current secret).
    Device(Principal),
    /// An admin or care manager (password = token), when alert topics are offered.
    Subscriber(
        Principal,
        tokio::sync::broadcast::Receiver<(String, bytes::Bytes)>,
    ),
}

/// One accepted connection's context.
struct Edge {
    pipeline: Arc<Pipeline>,
    auth: carewatch_auth::Authenticator,
    peer: std::net::IpAddr,
}

/// The password is a device secret, a carewatch token or (issuer configured) a person's JWT.
async fn login(
    edge: &Edge,
    connect: &rumqttc::mqttbytes::v4::Connect,
    outbound: Option<&Outbound>,
) -> Option<Login> {
    let l = connect.login.as_ref()?;
    let who = edge.auth.login(&l.password, Some(edge.peer)).await.ok()?;
    match who.role {
        Role::Device if who.subject.as_deref() == Some(l.username.as_str()) => {
            Some(Login::Device(who))
        }
        Role::Admin | Role::CareManager => {
            outbound.map(|out| Login::Subscriber(who, out.subscribe()))
        }
        _ => None,
    }
}

async fn connection<S>(
    stream: S,
    edge: Edge,
    shutdown: CancellationToken,
    outbound: Option<Outbound>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let pipeline = edge.pipeline.clone();
    let max = pipeline.max_bytes + 1024;
    let mut framed = Framed::new(
        stream,
        Codec {
            max_incoming_size: max,
            max_outgoing_size: max,
        },
    );
    let first = tokio::time::timeout(Duration::from_secs(10), framed.next()).await;
    let connect = match first {
        Ok(Some(Ok(Packet::Connect(c)))) => c,
        _ => return,
    };
    let Some(who) = login(&edge, &connect, outbound.as_ref()).await else {
        tracing::info!("MQTT login refused");
        let _ = framed
            .send(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::BadUserNamePassword,
                false,
            )))
            .await;
        return;
    };
    let accepted = Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false));
    if framed.send(accepted).await.is_err() {
        return;
    }
    let keep_alive = Duration::from_secs(u64::from(connect.keep_alive.max(1)) * 3 / 2 + 1);
    match who {
        Login::Device(who) => device_session(framed, pipeline, who, keep_alive, shutdown).await,
        Login::Subscriber(who, rx) => {
            subscriber_session(framed, edge.auth, who, rx, keep_alive, shutdown).await;
        }
    }
}

/// An acknowledgement to send once the publish it answers is stored (or nothing, QoS 0).
type Pending = futures::future::BoxFuture<'static, Result<Option<Packet>, ()>>;

/// Stores one PUBLISH (its readings, or a dead letter for a wrong topic), retrying while the
/// store is busy; resolves to the acknowledgement to send.
fn store(
    pipeline: Arc<Pipeline>,
    origin: Origin,
    p: Publish,
    own: &str,
    ack: Option<Packet>,
) -> Pending {
    let wrong = p.topic != own;
    Box::pin(async move {
        loop {
            let res = if wrong {
                let r = Rejection::new(
                    Reason::WrongTopic,
                    format!(
                        "published to {:?}; devices publish to devices/<own id>/readings",
                        p.topic
                    ),
                );
                pipeline.refuse(&p.payload, &origin, r).await
            } else {
                pipeline.ingest(&p.payload, &origin).await.map(|_| ())
            };
            match res {
                Ok(()) => return Ok(ack),
                Err(carewatch_store::Error::Busy) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "storing MQTT payload failed");
                    return Err(());
                }
            }
        }
    })
}

/// The acknowledgements of a device's session, in arrival order (MQTT 3.1.1 §4.6), and the
/// QoS 2 packet ids received and not yet released.
struct Acks {
    queue: FuturesOrdered<Pending>,
    unreleased: HashSet<u16>,
}

impl Acks {
    /// Queues the answer to a PUBLISH: QoS 1 PUBACK and QoS 2 PUBREC once it is durable. A QoS 2
    /// packet id seen again before its PUBREL is a redelivery: PUBREC again, not stored twice
    /// (§4.3.3, method B).
    fn publish(&mut self, pipeline: &Arc<Pipeline>, origin: &Origin, own: &str, p: Publish) {
        let ack = match p.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(p.pkid))),
            QoS::ExactlyOnce => Some(Packet::PubRec(PubRec::new(p.pkid))),
        };
        if p.qos == QoS::ExactlyOnce && !self.unreleased.insert(p.pkid) {
            self.queue
                .push_back(Box::pin(futures::future::ready(Ok(ack))));
            return;
        }
        self.queue
            .push_back(store(pipeline.clone(), origin.clone(), p, own, ack));
    }

    /// PUBREL: the id is free again; PUBCOMP after whatever is queued before it.
    fn release(&mut self, pkid: u16) {
        self.unreleased.remove(&pkid);
        let comp = Packet::PubComp(PubComp::new(pkid));
        self.queue
            .push_back(Box::pin(futures::future::ready(Ok(Some(comp)))));
    }
}

/// A device's session: publishes to its own readings topic, acknowledged once durable. Ends
/// (the socket is closed; MQTT 3.1.1 has no server DISCONNECT) as soon as the device's
/// credential stops being valid — revoked, or its secret rotated by a re-registration — and
/// nothing is acknowledged after that.
async fn device_session<S>(
    mut framed: Framed<S, Codec>,
    pipeline: Arc<Pipeline>,
    who: Principal,
    keep_alive: Duration,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let device = who.subject.clone().unwrap_or_default();
    let topic = readings_topic(&device);
    let origin = Origin {
        source: Some(Source::Mqtt),
        device: Some(device),
        format: None,
    };
    let registry = pipeline.registry.clone();
    let gone = carewatch_auth::until_invalid(&registry, &who);
    tokio::pin!(gone);
    let mut acks = Acks {
        queue: FuturesOrdered::new(),
        unreleased: HashSet::new(),
    };
    loop {
        tokio::select! {
            biased;
            () = &mut gone => {
                tracing::info!("MQTT: device credential revoked or rotated; closing its session");
                return;
            }
            Some(done) = acks.queue.next(), if !acks.queue.is_empty() => match done {
                Ok(Some(ack)) => {
                    if !carewatch_auth::still_valid(&registry, &who) || framed.send(ack).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(()) => return, // storage failed: drop the connection, the device redelivers
            },
            () = shutdown.cancelled(), if acks.queue.is_empty() => return,
            packet = tokio::time::timeout(keep_alive, framed.next()), if acks.queue.len() < MAX_INFLIGHT => {
                let packet = match packet {
                    Ok(Some(Ok(p))) => p,
                    Ok(Some(Err(e))) => {
                        tracing::info!(error = %e, "MQTT protocol error; closing");
                        return;
                    }
                    Ok(None) | Err(_) => return,
                };
                match packet {
                    Packet::Publish(p) => acks.publish(&pipeline, &origin, &topic, p),
                    Packet::PubRel(r) => acks.release(r.pkid),
                    Packet::PingReq if framed.send(Packet::PingResp).await.is_err() => return,
                    Packet::Subscribe(s) => {
                        // Devices do not subscribe to anything here.
                        let codes = s.filters.iter().map(|_| SubscribeReasonCode::Failure).collect();
                        if framed.send(Packet::SubAck(SubAck::new(s.pkid, codes))).await.is_err() { return; }
                    }
                    Packet::Disconnect => {
                        // Finish what is in flight, then close.
                        while let Some(done) = acks.queue.next().await {
                            if let Ok(Some(ack)) = done
                                && carewatch_auth::still_valid(&registry, &who)
                            {
                                let _ = framed.send(ack).await;
                            }
                        }
                        return;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A care manager's or admin's session: alert topics only, QoS 0. Ends when the token does.
async fn subscriber_session<S>(
    mut framed: Framed<S, Codec>,
    auth: carewatch_auth::Authenticator,
    who: Principal,
    mut rx: tokio::sync::broadcast::Receiver<(String, bytes::Bytes)>,
    keep_alive: Duration,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut filters: Vec<String> = Vec::new();
    let registry = auth.registry().clone();
    let gone = carewatch_auth::until_invalid(&registry, &who);
    tokio::pin!(gone);
    loop {
        tokio::select! {
            biased;
            () = &mut gone => {
                tracing::info!("MQTT: subscriber token revoked or expired; closing its session");
                return;
            }
            () = shutdown.cancelled() => return,
            msg = rx.recv() => match msg {
                Ok((topic, payload)) => {
                    if filters.iter().any(|f| topic_matches(f, &topic)) && delivers(&auth, &who, &payload) {
                        let p = Publish::from_bytes(topic, QoS::AtMostOnce, payload);
                        if framed.send(Packet::Publish(p)).await.is_err() { return; }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "MQTT alert subscriber lagged");
                }
                Err(_) => return,
            },
            packet = tokio::time::timeout(keep_alive, framed.next()) => {
                let packet = match packet {
                    Ok(Some(Ok(p))) => p,
                    _ => return,
                };
                if !subscriber_packet(&mut framed, &auth, &who, &mut filters, packet).await {
                    return;
                }
            }
        }
    }
}

/// Whether an alert message goes to this subscriber: admins get every message of their
/// filters; a care manager only those about a patient they may see now (their teams', or one
/// they hold a live break-glass grant for — the grant's end stops the messages).
fn delivers(auth: &carewatch_auth::Authenticator, who: &Principal, payload: &[u8]) -> bool {
    if carewatch_auth::sees_all_patients(who) {
        return true;
    }
    let v: Option<serde_json::Value> = serde_json::from_slice(payload).ok();
    v.as_ref()
        .and_then(|v| v["patient_id"].as_str())
        .is_some_and(|p| {
            carewatch_auth::may_see_patient(auth.registry(), &auth.with_grants(who.clone()), p)
        })
}

/// May this subscriber follow `filter` now: [`may_subscribe`], or a care manager's topic of
/// the team of a patient they hold break-glass access to (that patient's messages only).
fn may_follow(auth: &carewatch_auth::Authenticator, who: &Principal, filter: &str) -> bool {
    if may_subscribe(who, filter) {
        return true;
    }
    let now = auth.with_grants(who.clone());
    now.role == Role::CareManager
        && filter
            .strip_prefix("carewatch/alerts/")
            .is_some_and(|team| {
                !team.contains(['+', '#'])
                    && carewatch_auth::access::may_follow_team(auth.registry(), &now, team)
            })
}

/// Handles one packet of a subscriber session; false: close it.
async fn subscriber_packet<S>(
    framed: &mut Framed<S, Codec>,
    auth: &carewatch_auth::Authenticator,
    who: &Principal,
    filters: &mut Vec<String>,
    packet: Packet,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match packet {
        Packet::Subscribe(s) => {
            let mut codes = Vec::with_capacity(s.filters.len());
            for f in &s.filters {
                if may_follow(auth, who, &f.path) {
                    filters.push(f.path.clone());
                    codes.push(SubscribeReasonCode::Success(QoS::AtMostOnce));
                } else {
                    codes.push(SubscribeReasonCode::Failure);
                }
            }
            framed
                .send(Packet::SubAck(SubAck::new(s.pkid, codes)))
                .await
                .is_ok()
        }
        Packet::Unsubscribe(u) => {
            filters.retain(|f| !u.topics.contains(f));
            let ack = rumqttc::mqttbytes::v4::UnsubAck::new(u.pkid);
            framed.send(Packet::UnsubAck(ack)).await.is_ok()
        }
        Packet::PingReq => framed.send(Packet::PingResp).await.is_ok(),
        Packet::Publish(_) => {
            tracing::info!("MQTT: a subscriber session tried to publish; closing");
            false
        }
        Packet::Disconnect => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_and_who_may_subscribe() {
        assert!(topic_matches(
            "carewatch/alerts/+",
            "carewatch/alerts/north"
        ));
        assert!(topic_matches(
            "carewatch/alerts/#",
            "carewatch/alerts/north"
        ));
        assert!(topic_matches(
            "carewatch/alerts/north",
            "carewatch/alerts/north"
        ));
        assert!(!topic_matches(
            "carewatch/alerts/north",
            "carewatch/alerts/south"
        ));
        assert!(!topic_matches("carewatch/alerts/+", "carewatch/alerts/a/b"));
        let cm = Principal {
            id: "x".into(),
            role: Role::CareManager,
            subject: Some("north".into()),
            person: None,
        };
        assert!(may_subscribe(&cm, "carewatch/alerts/north"));
        assert!(!may_subscribe(&cm, "carewatch/alerts/+"));
        assert!(!may_subscribe(&cm, "carewatch/alerts/south"));
        assert!(!may_subscribe(&cm, "devices/+/readings"));
        let admin = Principal {
            id: "a".into(),
            role: Role::Admin,
            subject: None,
            person: None,
        };
        assert!(may_subscribe(&admin, "carewatch/alerts/#"));
        // `unassigned` is not a team, and a team name is never a wildcard.
        for bad in ["unassigned", "", "a/#", "+"] {
            let cm = Principal {
                id: "y".into(),
                role: Role::CareManager,
                subject: Some(bad.into()),
                person: None,
            };
            assert!(
                !may_subscribe(&cm, &format!("carewatch/alerts/{bad}")),
                "{bad}"
            );
        }
    }
}
