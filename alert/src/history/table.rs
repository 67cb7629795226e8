//! The `alerts` table: the history's transitions, one row each, as Arrow for SQL.

use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::History;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The `alerts` table: one row per transition.
#[derive(Debug)]
pub struct AlertsTable {
    history: Arc<History>,
    schema: SchemaRef,
}

impl AlertsTable {
    /// A provider over the history.
    pub fn new(history: Arc<History>) -> Self {
        AlertsTable {
            history,
            schema: alerts_schema(),
        }
    }
}

/// The `alerts` table's columns (the `alerts` Delta table has the same ones, with
/// signed integers: `carewatch_store::alert_history`).
pub(super) fn alerts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new("at", ts_type(), false),
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("care_team", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, false),
        Field::new("episode_start", ts_type(), false),
        Field::new("episode_end", ts_type(), false),
        Field::new("value", DataType::Float64, true),
        Field::new("message", DataType::Utf8, false),
        Field::new("escalation_level", DataType::UInt32, false),
        Field::new("acknowledged_by", DataType::Utf8, true),
        Field::new("previous_care_team", DataType::Utf8, true),
        Field::new("assignee", DataType::Utf8, true),
        Field::new("snoozed_until", ts_type(), true),
        Field::new("note", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("actor", DataType::Utf8, true),
        Field::new("notified", DataType::Utf8, true),
        Field::new("level", DataType::Utf8, false),
        Field::new("held", DataType::Utf8, true),
        Field::new("held_until", ts_type(), true),
    ]))
}

impl carewatch_query::table::BatchSource for AlertsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn batch(&self) -> datafusion::error::Result<RecordBatch> {
        Ok(batch_of(&self.schema, &self.history.since(0))?)
    }
}

/// The rows of `alerts` (schema [`AlertsTable`]'s) for these transitions.
pub(super) fn batch_of(
    schema: &SchemaRef,
    rows: &[Arc<super::Transition>],
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let n = rows.len();
    let mut seq = UInt64Builder::with_capacity(n);
    let ts = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let (mut at, mut start, mut end) = (ts(), ts(), ts());
    let s = || StringBuilder::with_capacity(n, n * 16);
    let (mut id, mut rule, mut sev, mut pat, mut team, mut status, mut event, mut msg, mut ack) =
        (s(), s(), s(), s(), s(), s(), s(), s(), s());
    let (mut prev, mut assignee, mut note, mut reason, mut actor) = (s(), s(), s(), s(), s());
    let (mut notified, mut lvl, mut held) = (s(), s(), s());
    let (mut until, mut held_until) = (ts(), ts());
    let mut value = Float64Builder::with_capacity(n);
    let mut level = UInt32Builder::with_capacity(n);
    for r in rows {
        seq.append_value(r.seq);
        at.append_value(r.at_us);
        id.append_value(&r.alert_id);
        rule.append_value(&r.rule);
        sev.append_value(r.severity.as_str());
        pat.append_value(&r.patient_id);
        team.append_option(r.care_team.as_deref());
        status.append_value(r.status.as_str());
        event.append_value(r.event.as_str());
        start.append_value(r.episode_start_us);
        end.append_value(r.episode_end_us);
        value.append_option(r.value);
        msg.append_value(&r.message);
        level.append_value(r.escalation_level);
        ack.append_option(r.acknowledged_by.as_deref());
        prev.append_option(r.previous_care_team.as_deref());
        assignee.append_option(r.assignee.as_deref());
        until.append_option(r.snoozed_until_us);
        note.append_option(r.note.as_deref());
        reason.append_option(r.reason.as_deref());
        actor.append_option(r.actor.as_deref());
        notified.append_option(r.notified.as_deref());
        lvl.append_value(r.level.as_str());
        held.append_option(r.held.as_deref());
        held_until.append_option(r.held_until_us);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(seq.finish()),
        Arc::new(at.finish()),
        Arc::new(id.finish()),
        Arc::new(rule.finish()),
        Arc::new(sev.finish()),
        Arc::new(pat.finish()),
        Arc::new(team.finish()),
        Arc::new(status.finish()),
        Arc::new(event.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(value.finish()),
        Arc::new(msg.finish()),
        Arc::new(level.finish()),
        Arc::new(ack.finish()),
        Arc::new(prev.finish()),
        Arc::new(assignee.finish()),
        Arc::new(until.finish()),
        Arc::new(note.finish()),
        Arc::new(reason.finish()),
        Arc::new(actor.finish()),
        Arc::new(notified.finish()),
        Arc::new(lvl.finish()),
        Arc::new(held.finish()),
        Arc::new(held_until.finish()),
    ];
    RecordBatch::try_new(schema.clone(), cols)
}

/// Registers the `alerts` table with a session.
pub fn register(
    ctx: &datafusion::prelude::SessionContext,
    history: Arc<History>,
) -> datafusion::error::Result<()> {
    ctx.register_table(
        "alerts",
        Arc::new(carewatch_query::table::ComputedTable(AlertsTable::new(
            history,
        ))),
    )?;
    Ok(())
}
