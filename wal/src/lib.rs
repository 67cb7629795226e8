//! `carewatch-wal`: the write-ahead log's segment files ([`wal`]: checksummed frames, torn
//! tails cut on replay) and the encoding of what goes in them ([`codec`]: rows and dead
//! letters). The store (`carewatch-store`) writes and replays it; this crate holds no I/O
//! policy of its own beyond the files, so the fuzz targets can build it alone.

pub mod codec;
pub mod wal;

use carewatch_transform::{Format, Reading, Reason, Source};

/// One row to store: a normalised reading plus how and when it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The reading (patient already resolved by the edge).
    pub reading: Reading,
    /// When carewatch received it, UTC microseconds.
    pub received_us: i64,
    /// Transport.
    pub source: Source,
    /// Payload format.
    pub format: Format,
}

/// One rejected item, kept with its raw payload.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// When carewatch received it, UTC microseconds.
    pub received_us: i64,
    /// Transport.
    pub source: Source,
    /// The device, when known.
    pub device_id: Option<String>,
    /// Stable reason.
    pub reason: Reason,
    /// Human-readable reason.
    pub message: String,
    /// Item index within the payload.
    pub index: Option<u32>,
    /// The raw payload bytes. A message's payload is stored once: with its first dead letter;
    /// the others of the same message leave this empty and share [`DeadLetter::raw_sha256`].
    pub raw: Vec<u8>,
    /// SHA-256 of the message's raw payload (the `raw_sha256` column, hex), linking every dead
    /// letter of a message to the one that carries `raw`. `None`: computed from `raw`.
    pub raw_sha256: Option<[u8; 32]>,
}
