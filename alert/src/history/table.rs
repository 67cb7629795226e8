//! The `alerts` table: the history's transitions, one row each, as Arrow for SQL.

use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::History;

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

/// The `alerts` SQL table's columns: the `alerts` Delta table's (one list of them, in
/// `carewatch_store::alert_history`), with `seq` and `escalation_level` unsigned as the history
/// holds them (Delta has no unsigned integers; the export casts back with `tables::conform`).
pub(super) fn alerts_schema() -> SchemaRef {
    let delta = carewatch_store::alert_history::alert_history_schema();
    let fields: Vec<Field> = delta
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "seq" => Field::new("seq", DataType::UInt64, false),
            "escalation_level" => Field::new("escalation_level", DataType::UInt32, false),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
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
