//! `carewatch-transform`: the pure data model of carewatch.
//!
//! A device payload (bytes) goes in; normalised [`Reading`]s — one per measured quantity, coded
//! with LOINC and a canonical UCUM unit from the [`catalogue`] — or [`Rejection`] values come out.
//!
//! Modules:
//! - [`catalogue`]: the vitals table (LOINC, display, canonical UCUM unit, unit aliases with
//!   conversions, plausible range). Terminology lives here and nowhere else.
//! - [`time`]: timestamps with their offsets; the explicit policy for zone-less times.
//! - [`reading`]: the normalised row and its deterministic observation id.
//! - [`reject`]: rejection reasons (stable codes) and messages.
//! - [`formats`]: carewatch JSON, FHIR Observation / Bundle, Open mHealth data points.
//! - [`template`]: MedTech / iomt-fhir compatible device mapping and FHIR destination mapping.
//! - [`normalise`]: format detection and the single entry point used by every edge.
//! - [`schema`]: the Arrow schema of the `observations` table and the batch builder.
//!
//! What this crate must not do: no async runtime, no I/O, no clock, no logging of payloads.
//! The received time, the transport and the zone policy are passed in by the caller.

pub mod catalogue;
pub mod formats;
pub mod normalise;
pub mod reading;
pub mod reject;
pub mod schema;
pub mod template;
pub mod time;

pub use catalogue::{Category, Vital};
pub use normalise::{Context, Format, Note, Outcome, normalise};
pub use reading::{Reading, Source, observation_id};
pub use reject::{Reason, Rejection};
pub use time::ZonePolicy;
