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
//! (TCP pushes back on the device) and retries the append.
//!
//! Care managers and admins log in with their token as the password (any username) and may
//! subscribe to alert topics, when alert publishing is enabled: a care manager to
//! `carewatch/alerts/{own care team}` only, an admin to any `carewatch/alerts/…` filter. Alert
//! messages are delivered at QoS 0 (a live feed: the durable record is the alert history and
//! the webhook); such sessions may not publish.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    Codec, ConnAck, ConnectReturnCode, Packet, PubAck, SubAck, SubscribeReasonCode,
};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use carewatch_store::registry::{Principal, Role};
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
        Role::CareManager => who.subject.as_deref() == Some(rest),
        _ => false,
    }
}

use crate::pipeline::{Origin, Pipeline};

/// Publishes in flight per connection (their appends run concurrently; acks stay in order).
const MAX_INFLIGHT: usize = 64;

/// Serves MQTT on `listener` (with TLS when an acceptor is given) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
    outbound: Option<Outbound>,
) {
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let p = pipeline.clone();
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

async fn connection<S>(
    stream: S,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
    outbound: Option<Outbound>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
    let subscriber = match (&connect.login, &outbound) {
        (Some(l), Some(out)) if !pipeline.registry.device_login(&l.username, &l.password) => {
            pipeline
                .registry
                .authenticate(&l.password)
                .filter(|p| matches!(p.role, Role::Admin | Role::CareManager))
                .map(|p| (p, out.subscribe()))
        }
        _ => None,
    };
    if let Some((who, rx)) = subscriber {
        if framed
            .send(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::Success,
                false,
            )))
            .await
            .is_ok()
        {
            let keep_alive = Duration::from_secs(u64::from(connect.keep_alive.max(1)) * 3 / 2 + 1);
            subscriber_session(framed, who, rx, keep_alive, shutdown).await;
        }
        return;
    }
    let device = match &connect.login {
        Some(l) if pipeline.registry.device_login(&l.username, &l.password) => l.username.clone(),
        _ => {
            tracing::info!("MQTT login refused");
            let _ = framed
                .send(Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::BadUserNamePassword,
                    false,
                )))
                .await;
            return;
        }
    };
    if framed
        .send(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        )))
        .await
        .is_err()
    {
        return;
    }
    let keep_alive = Duration::from_secs(u64::from(connect.keep_alive.max(1)) * 3 / 2 + 1);
    let topic = readings_topic(&device);
    let origin = Origin {
        source: Some(Source::Mqtt),
        device: Some(device.clone()),
        format: None,
    };
    let mut inflight = FuturesOrdered::new();
    loop {
        tokio::select! {
            biased;
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                match done {
                    Ok(Some(pkid)) => {
                        if framed.send(Packet::PubAck(PubAck::new(pkid))).await.is_err() { return; }
                    }
                    Ok(None) => {}
                    Err(()) => return, // storage failed: drop the connection, the device redelivers
                }
            }
            () = shutdown.cancelled(), if inflight.is_empty() => return,
            packet = tokio::time::timeout(keep_alive, framed.next()), if inflight.len() < MAX_INFLIGHT => {
                let packet = match packet {
                    Ok(Some(Ok(p))) => p,
                    Ok(Some(Err(e))) => {
                        tracing::info!(error = %e, "MQTT protocol error; closing");
                        return;
                    }
                    Ok(None) | Err(_) => return,
                };
                match packet {
                    Packet::Publish(p) => {
                        let pipeline = pipeline.clone();
                        let origin = origin.clone();
                        let wrong = p.topic != topic;
                        let t = p.topic.clone();
                        inflight.push_back(async move {
                            let ack = (p.qos != QoS::AtMostOnce).then_some(p.pkid);
                            loop {
                                let res = if wrong {
                                    let r = Rejection::new(
                                        Reason::WrongTopic,
                                        format!("published to {t:?}; devices publish to devices/<own id>/readings"),
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
                        });
                    }
                    Packet::PingReq => {
                        if framed.send(Packet::PingResp).await.is_err() { return; }
                    }
                    Packet::Subscribe(s) => {
                        // Devices do not subscribe to anything here.
                        let codes = s.filters.iter().map(|_| SubscribeReasonCode::Failure).collect();
                        if framed.send(Packet::SubAck(SubAck::new(s.pkid, codes))).await.is_err() { return; }
                    }
                    Packet::Disconnect => {
                        // Finish what is in flight, then close.
                        while let Some(done) = inflight.next().await {
                            if let Ok(Some(pkid)) = done {
                                let _ = framed.send(Packet::PubAck(PubAck::new(pkid))).await;
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

/// A care manager's or admin's session: alert topics only, QoS 0.
async fn subscriber_session<S>(
    mut framed: Framed<S, Codec>,
    who: Principal,
    mut rx: tokio::sync::broadcast::Receiver<(String, bytes::Bytes)>,
    keep_alive: Duration,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut filters: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            msg = rx.recv() => match msg {
                Ok((topic, payload)) => {
                    if filters.iter().any(|f| topic_matches(f, &topic)) {
                        let p = rumqttc::mqttbytes::v4::Publish::from_bytes(topic, QoS::AtMostOnce, payload);
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
                match packet {
                    Packet::Subscribe(s) => {
                        let mut codes = Vec::with_capacity(s.filters.len());
                        for f in &s.filters {
                            if may_subscribe(&who, &f.path) {
                                filters.push(f.path.clone());
                                codes.push(SubscribeReasonCode::Success(QoS::AtMostOnce));
                            } else {
                                codes.push(SubscribeReasonCode::Failure);
                            }
                        }
                        if framed.send(Packet::SubAck(SubAck::new(s.pkid, codes))).await.is_err() { return; }
                    }
                    Packet::Unsubscribe(u) => {
                        filters.retain(|f| !u.topics.contains(f));
                        let ack = rumqttc::mqttbytes::v4::UnsubAck::new(u.pkid);
                        if framed.send(Packet::UnsubAck(ack)).await.is_err() { return; }
                    }
                    Packet::PingReq => {
                        if framed.send(Packet::PingResp).await.is_err() { return; }
                    }
                    Packet::Publish(_) => {
                        tracing::info!("MQTT: a subscriber session tried to publish; closing");
                        return;
                    }
                    Packet::Disconnect => return,
                    _ => {}
                }
            }
        }
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
        };
        assert!(may_subscribe(&cm, "carewatch/alerts/north"));
        assert!(!may_subscribe(&cm, "carewatch/alerts/+"));
        assert!(!may_subscribe(&cm, "carewatch/alerts/south"));
        assert!(!may_subscribe(&cm, "devices/+/readings"));
        let admin = Principal {
            id: "a".into(),
            role: Role::Admin,
            subject: None,
        };
        assert!(may_subscribe(&admin, "carewatch/alerts/#"));
    }
}
