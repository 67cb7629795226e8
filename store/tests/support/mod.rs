//! Readings for the shared-table tests: one heart rate a minute per device.
#![allow(dead_code)]

use carewatch_store::Row;
use carewatch_transform::catalogue;
use carewatch_transform::{Format, Reading, Source};

pub const T0: i64 = 1_700_000_000_000_000; // 2023-11-14T22:13:20Z
pub const MIN: i64 = 60_000_000;

/// `n` heart-rate readings of `device` (patient `p-<device>`), one a minute from `T0 + from_min`.
pub fn rows(device: &str, from_min: i64, n: i64) -> Vec<Row> {
    (from_min..from_min + n)
        .map(|i| Row {
            reading: Reading {
                device_id: device.to_owned(),
                patient_id: Some(format!("p-{device}")),
                vital: catalogue::by_key("heart_rate").expect("vital"),
                value: 70.0,
                effective_us: T0 + i * MIN,
                effective_end_us: None,
                offset_min: Some(60),
                extra: None,
            },
            received_us: T0,
            source: Source::Http,
            format: Format::Carewatch,
        })
        .collect()
}
