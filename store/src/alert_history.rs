//! The `alerts` Delta table's schema: the alert history's transitions, one row each,
//! with the columns of the `alerts` SQL table (ARCHITECTURE.md, "The alert history as a Delta
//! table"). A persisted contract like `observations`: additive changes only. Delta has no
//! unsigned integers, so `seq` is a long and `escalation_level` an integer here.

use std::sync::{Arc, LazyLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("at", ts(), false),
        text("alert_id", false),
        text("rule", false),
        text("severity", false),
        text("patient_id", false),
        text("care_team", true),
        text("status", false),
        text("event", false),
        Field::new("episode_start", ts(), false),
        Field::new("episode_end", ts(), false),
        Field::new("value", DataType::Float64, true),
        text("message", false),
        Field::new("escalation_level", DataType::Int32, false),
        text("acknowledged_by", true),
        text("previous_care_team", true),
        text("assignee", true),
        Field::new("snoozed_until", ts(), true),
        text("note", true),
        text("reason", true),
        text("actor", true),
        text("notified", true),
        text("level", false),
        text("held", true),
        Field::new("held_until", ts(), true),
    ]))
});

/// The `alerts` Delta table's Arrow schema.
pub fn alert_history_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// The `txn` app id whose version is the number of transitions the table holds (they are
/// `seq` 0 up to it): an export commits its rows and moves it in one Delta commit, so a
/// transition is in the table once, whichever node exports it.
pub const EXPORT_APP_ID: &str = "carewatch-alert-history";
