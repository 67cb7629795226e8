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

use carewatch_transform::{Reason, Rejection, Source};

use crate::pipeline::{Origin, Pipeline};

/// Publishes in flight per connection (their appends run concurrently; acks stay in order).
const MAX_INFLIGHT: usize = 64;

/// Serves MQTT on `listener` (with TLS when an acceptor is given) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
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
                    tracker.spawn(async move {
                        match tls {
                            None => connection(stream, p, s).await,
                            Some(acceptor) => {
                                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                    Ok(Ok(tls)) => connection(tls, p, s).await,
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

async fn connection<S>(stream: S, pipeline: Arc<Pipeline>, shutdown: CancellationToken)
where
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
