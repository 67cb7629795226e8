//! Subscriber to an external broker (`--mqtt-url mqtt://host:port`, `mqtts://` for TLS).
//!
//! QoS 1, a persistent session (clean session off) and manual acks: a message is acknowledged
//! to the broker only after its readings (or dead letter) are durable, so a crash or broker
//! restart redelivers it and the natural-key de-duplication makes it one row. Reconnects with
//! backoff. With `shared_group` the subscription is `$share/<group>/devices/+/readings` so
//! several carewatch nodes split the load (Mosquitto accepts shared subscriptions from 3.1.1
//! clients too).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use tokio_util::sync::CancellationToken;

use carewatch_transform::{Reason, Rejection, Source};

use crate::pipeline::{Origin, Pipeline, Prepared};

/// External broker settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// MQTT client id (stable, so the broker keeps the session).
    pub client_id: String,
    /// Username/password for the broker, if it wants them.
    pub credentials: Option<(String, String)>,
    /// Shared-subscription group.
    pub shared_group: Option<String>,
}

/// Parses an `mqtt://` / `mqtts://` URL into host, port and TLS flag.
pub fn parse_url(url: &str) -> Result<(String, u16, bool), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!(
            "broker URL {url:?} must start with mqtt:// or mqtts://"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("bad port in {url:?}"))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(format!("no host in {url:?}"));
    }
    Ok((host.to_owned(), port, tls))
}

/// The device id in a `devices/{id}/readings` topic.
pub fn device_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("devices/")?;
    let (id, tail) = rest.split_once('/')?;
    (tail == "readings" && !id.is_empty()).then_some(id)
}

/// Messages stored concurrently per connection.
const MAX_INFLIGHT: usize = 1024;
/// Messages already queued are stored together, one append (one WAL frame) for up to this
/// many…
const MAX_BATCH: usize = 128;
/// …or this many payload bytes.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// The message, normalised (or refused for its topic), ready to store.
fn prepare(pipeline: &Pipeline, p: &rumqttc::Publish) -> Prepared {
    let device = device_of(&p.topic).map(str::to_owned);
    let origin = Origin {
        source: Some(Source::Mqtt),
        device: device.clone(),
        format: None,
    };
    match &device {
        Some(_) => pipeline.prepare(&p.payload, &origin),
        None => {
            let rej = Rejection::new(
                Reason::WrongTopic,
                format!("topic {:?} is not devices/<id>/readings", p.topic),
            );
            pipeline.prepare_refusal(&p.payload, &origin, rej)
        }
    }
}

/// Stores a batch of messages in one append: all of them are durable, or none.
async fn store_batch(
    pipeline: &Pipeline,
    batch: &[rumqttc::Publish],
) -> Result<(), carewatch_store::Error> {
    loop {
        let prepared = batch.iter().map(|p| prepare(pipeline, p)).collect();
        match pipeline.store_all(prepared).await {
            Err(carewatch_store::Error::Busy) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other.map(|_| ()),
        }
    }
}

/// The message just received, and whatever else is queued behind it (within the batch bounds).
fn take_batch(
    first: rumqttc::Publish,
    incoming: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    room: usize,
) -> Vec<rumqttc::Publish> {
    let mut bytes = first.payload.len();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH.min(room) && bytes < MAX_BATCH_BYTES {
        match incoming.try_recv() {
            Ok(p) => {
                bytes += p.payload.len();
                batch.push(p);
            }
            Err(_) => break,
        }
    }
    batch
}

/// Runs the subscriber until `shutdown`.
pub async fn run(
    cfg: ClientConfig,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let mut opts = options(&cfg.url, &cfg.client_id, cfg.credentials.as_ref())?;
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_max_packet_size(pipeline.max_bytes + 1024, pipeline.max_bytes + 1024);
    opts.set_inflight(256);
    let filter = match &cfg.shared_group {
        Some(g) => format!("$share/{g}/devices/+/readings"),
        None => "devices/+/readings".to_owned(),
    };
    subscribe_loop(opts, filter, pipeline, shutdown).await
}

/// Connection options for a broker URL (TLS with the system roots for `mqtts://`).
fn options(
    url: &str,
    client_id: &str,
    credentials: Option<&(String, String)>,
) -> Result<MqttOptions, String> {
    let (host, port, tls) = parse_url(url)?;
    let mut opts = MqttOptions::new(client_id.to_owned(), host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = credentials {
        opts.set_credentials(u, p);
    }
    if tls {
        // The system's trusted roots, plus `CAREWATCH_MQTT_CA` (a PEM file) for private brokers.
        let ca = std::env::var_os("CAREWATCH_MQTT_CA").map(std::path::PathBuf::from);
        let config = carewatch_store::tls::client_config(
            ca.as_deref(),
            "CAREWATCH_MQTT_CA",
            carewatch_store::tls::ExtraRoots::BestEffort,
        )?;
        opts.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
        ));
    }
    Ok(opts)
}

/// Publishes alert messages `(topic, payload)` to the broker at QoS 1 until `shutdown`, as
/// client `{client_id}-alerts`. Messages offered while the broker is away are queued by the
/// client (bounded) and sent on reconnection.
pub async fn publish_alerts(
    cfg: ClientConfig,
    mut rx: tokio::sync::broadcast::Receiver<(String, bytes::Bytes)>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let opts = options(
        &cfg.url,
        &format!("{}-alerts", cfg.client_id),
        cfg.credentials.as_ref(),
    )?;
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let stop = shutdown.clone();
    let poller = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                ev = eventloop.poll() => if let Err(e) = ev {
                    tracing::warn!(error = %e, "alert publisher: broker connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                },
            }
        }
    });
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            m = rx.recv() => match m {
                Ok((topic, payload)) => {
                    if let Err(e) = client.publish_bytes(topic, QoS::AtLeastOnce, false, payload).await {
                        tracing::warn!(error = %e, "alert publish failed");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "alert publisher lagged");
                }
                Err(_) => break,
            },
        }
    }
    poller.abort();
    Ok(())
}

async fn subscribe_loop(
    opts: MqttOptions,
    filter: String,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    // The event loop runs in its own task so it always drains our acks; incoming messages come
    // over an unbounded channel (the broker's in-flight window bounds it for QoS 1).
    let (fwd, mut incoming) = tokio::sync::mpsc::unbounded_channel::<rumqttc::Publish>();
    let poll_stop = shutdown.child_token();
    let (sub_client, sub_filter, stop) = (client.clone(), filter.clone(), poll_stop.clone());
    let poller = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let ev = tokio::select! {
                () = stop.cancelled() => return,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = Duration::from_millis(100);
                    tracing::info!(
                        session_present = ack.session_present,
                        "connected to external broker"
                    );
                    if !ack.session_present
                        && let Err(e) =
                            sub_client.try_subscribe(sub_filter.clone(), QoS::AtLeastOnce)
                    {
                        tracing::error!(error = %e, "subscribing failed");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if fwd.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "external broker connection lost");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
    // Batches of messages being stored concurrently (each batch one append; batches share
    // group commits); acks go out in arrival order as each batch completes.
    let mut inflight = futures::stream::FuturesOrdered::new();
    let mut held = 0usize;
    loop {
        tokio::select! {
            biased;
            Some((batch, res)) = futures::StreamExt::next(&mut inflight), if !inflight.is_empty() => {
                let batch: Vec<rumqttc::Publish> = batch;
                held -= batch.len();
                match res {
                    Ok(()) => {
                        for p in &batch {
                            if let Err(e) = client.ack(p).await {
                                tracing::warn!(error = %e, "ack to broker failed; it will redeliver");
                            }
                        }
                    }
                    Err(e) => {
                        // Not acknowledged: the broker redelivers after we reconnect.
                        tracing::error!(error = %e, "storing broker message failed; disconnecting");
                        let _ = client.disconnect().await;
                    }
                }
            }
            () = shutdown.cancelled(), if inflight.is_empty() => break,
            Some(p) = incoming.recv(), if held < MAX_INFLIGHT => {
                let batch = take_batch(p, &mut incoming, MAX_INFLIGHT - held);
                held += batch.len();
                let pipeline = pipeline.clone();
                inflight.push_back(async move {
                    let res = store_batch(&pipeline, &batch).await;
                    (batch, res)
                });
            }
        }
    }
    // Give the acks a moment to leave before the connection closes.
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    poll_stop.cancel();
    let _ = poller.await;
    Ok(())
}
