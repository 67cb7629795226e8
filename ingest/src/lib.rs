//! `carewatch-ingest`: the edges devices talk to.
//!
//! - [`pipeline`]: bytes + origin -> normalise (transform) -> attribute to a patient through the
//!   registry -> append rows and dead letters durably (store). Every edge goes through it.
//! - [`http`]: `POST /v1/readings`, `POST /fhir/Observation`, `POST /fhir`, the registry API
//!   (`/v1/devices`, `/v1/patients/{id}/care-team`, `/v1/tokens`) and `/healthz`.
//! - [`fleet`]: `POST /v1/devices` with one registration or a batch (array or NDJSON, one
//!   result per item), `GET /v1/devices` with filters and paging.
//! - [`identity`]: the registry written as FHIR `Device`, `CareTeam` and `Patient` resources.
//! - [`mqtt_server`]: the embedded MQTT 3.1.1 listener for devices; QoS 1 PUBACK only after
//!   the readings are durable.
//! - [`mqtt_client`]: subscriber to an external broker (Mosquitto, EMQX, HiveMQ) with
//!   manual acks on a persistent session.
//!
//! What it must not do: answer before data is durable, log payloads or patient ids above
//! debug, or depend on `query`.

pub mod admin;
pub mod device_file;
pub mod fleet;
pub mod http;
pub mod identity;
pub mod mqtt_client;
pub mod mqtt_server;
pub mod pipeline;
pub mod replay;
pub mod server;
pub mod simulate;
pub mod tls;

pub use pipeline::{Ingested, Origin, Pipeline, Prepared};
