//! The `dead_letters` table: every rejected item with its raw payload.
//! Its Arrow schema is a persisted contract like `observations`: additive changes only.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    BinaryBuilder, Int32Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use sha2::{Digest, Sha256};

use crate::DeadLetter;

/// SHA-256 of a raw payload (what [`DeadLetter::raw_sha256`] holds).
pub fn digest(raw: &[u8]) -> [u8; 32] {
    Sha256::digest(raw).into()
}

fn hex(d: &[u8; 32]) -> String {
    use std::fmt::Write;
    d.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("received_time", ts, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("device_id", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        // Int32, not UInt32 (issue 13): Delta Lake has no unsigned types, and Polars refuses a
        // file whose type differs from the table's. Files written before hold UInt32; readers
        // here cast them ([`crate::tables::conform`]). Indexes are capped far below 2^31.
        Field::new("item_index", DataType::Int32, true),
        Field::new("raw", DataType::Binary, false),
        // Added (issue 12): one raw payload per message. Every dead letter of a message has
        // the payload's SHA-256 (hex); only the first carries `raw`, the others an empty one.
        // Null in files written before.
        Field::new("raw_sha256", DataType::Utf8, true),
    ]))
});

/// The `dead_letters` schema.
pub fn dead_letters_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Builds a batch of dead letters.
pub fn batch(dead: &[DeadLetter]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut t = TimestampMicrosecondBuilder::with_capacity(dead.len()).with_timezone("UTC");
    let mut s = StringBuilder::new();
    let mut d = StringBuilder::new();
    let mut r = StringBuilder::new();
    let mut m = StringBuilder::new();
    let mut i = Int32Builder::with_capacity(dead.len());
    let mut raw = BinaryBuilder::new();
    let mut sha = StringBuilder::new();
    for x in dead {
        t.append_value(x.received_us);
        s.append_value(x.source.as_str());
        d.append_option(x.device_id.as_deref());
        r.append_value(x.reason.code());
        m.append_value(&x.message);
        i.append_option(x.index.and_then(|n| i32::try_from(n).ok()));
        raw.append_value(&x.raw);
        sha.append_value(hex(&x.raw_sha256.unwrap_or_else(|| digest(&x.raw))));
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(t.finish()),
        Arc::new(s.finish()),
        Arc::new(d.finish()),
        Arc::new(r.finish()),
        Arc::new(m.finish()),
        Arc::new(i.finish()),
        Arc::new(raw.finish()),
        Arc::new(sha.finish()),
    ];
    RecordBatch::try_new(dead_letters_schema(), cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The persisted contract: changes are additive (new nullable columns at the end).
    #[test]
    fn dead_letters_schema_snapshot() {
        let text: Vec<String> = dead_letters_schema()
            .fields()
            .iter()
            .map(|f| format!("{}: {} {}", f.name(), f.data_type(), f.is_nullable()))
            .collect();
        assert_eq!(
            text,
            [
                "received_time: Timestamp(µs, \"UTC\") false",
                "source: Utf8 false",
                "device_id: Utf8 true",
                "reason: Utf8 false",
                "message: Utf8 false",
                "item_index: Int32 true",
                "raw: Binary false",
                "raw_sha256: Utf8 true",
            ]
        );
    }
}
