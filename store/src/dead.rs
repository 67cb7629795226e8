//! The `dead_letters` table: every rejected item with its raw payload.
//! Its Arrow schema is a persisted contract like `observations`: additive changes only.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    BinaryBuilder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::DeadLetter;

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("received_time", ts, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("device_id", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("item_index", DataType::UInt32, true),
        Field::new("raw", DataType::Binary, false),
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
    let mut i = UInt32Builder::with_capacity(dead.len());
    let mut raw = BinaryBuilder::new();
    for x in dead {
        t.append_value(x.received_us);
        s.append_value(x.source.as_str());
        d.append_option(x.device_id.as_deref());
        r.append_value(x.reason.code());
        m.append_value(&x.message);
        i.append_option(x.index);
        raw.append_value(&x.raw);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(t.finish()),
        Arc::new(s.finish()),
        Arc::new(d.finish()),
        Arc::new(r.finish()),
        Arc::new(m.finish()),
        Arc::new(i.finish()),
        Arc::new(raw.finish()),
    ];
    RecordBatch::try_new(dead_letters_schema(), cols)
}
