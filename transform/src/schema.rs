//! The Arrow schema of the `observations` table and the batch builder.
//!
//! The schema is a persisted contract (Parquet files on disk, SQL users' queries): it is defined
//! in [`observations_schema`] only, a snapshot test guards it, and changes are additive.
//! The observation id is not a column: it is derived from the natural key on read.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    Float64Builder, Int16Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{
    Array, ArrayRef, Float64Array, Int16Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::normalise::Format;
use crate::reading::{Reading, Source, observation_id};

/// Version of the `observations` schema, stored in the schema metadata.
pub const SCHEMA_VERSION: &str = "1";

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn field(name: &str, dt: DataType, nullable: bool, description: &str) -> Field {
    Field::new(name, dt, nullable)
        .with_metadata([("description".to_owned(), description.to_owned())].into())
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(
        Schema::new(vec![
            field(
                "patient_id",
                DataType::Utf8,
                true,
                "patient, from the payload or the device registry",
            ),
            field(
                "device_id",
                DataType::Utf8,
                false,
                "device that measured the value",
            ),
            field(
                "code",
                DataType::Utf8,
                false,
                "LOINC code of the measured quantity",
            ),
            field(
                "panel_code",
                DataType::Utf8,
                true,
                "panel LOINC code (85354-9 for blood pressure)",
            ),
            field(
                "value",
                DataType::Float64,
                false,
                "value in the code's canonical UCUM unit",
            ),
            field("unit", DataType::Utf8, false, "canonical UCUM unit"),
            field(
                "effective_time",
                ts(),
                false,
                "when it was measured (device clock), UTC",
            ),
            field(
                "effective_end",
                ts(),
                true,
                "end of the measured interval, when it is one",
            ),
            field(
                "tz_offset_min",
                DataType::Int16,
                true,
                "the sender's UTC offset in minutes",
            ),
            field(
                "received_time",
                ts(),
                false,
                "when carewatch received it, UTC",
            ),
            field(
                "source",
                DataType::Utf8,
                false,
                "transport: http, mqtt, replay, cli",
            ),
            field(
                "format",
                DataType::Utf8,
                false,
                "payload format: carewatch, fhir, omh, template",
            ),
            field(
                "extra",
                DataType::Utf8,
                true,
                "FHIR elements with no column, as JSON",
            ),
        ])
        .with_metadata(
            [(
                "carewatch.schema_version".to_owned(),
                SCHEMA_VERSION.to_owned(),
            )]
            .into(),
        ),
    )
});

/// The `observations` schema: the persisted contract.
pub fn observations_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Builds `observations` record batches from readings.
#[derive(Debug)]
pub struct ObservationBatchBuilder {
    patient: StringBuilder,
    device: StringBuilder,
    code: StringBuilder,
    panel: StringBuilder,
    value: Float64Builder,
    unit: StringBuilder,
    effective: TimestampMicrosecondBuilder,
    end: TimestampMicrosecondBuilder,
    offset: Int16Builder,
    received: TimestampMicrosecondBuilder,
    source: StringBuilder,
    format: StringBuilder,
    extra: StringBuilder,
    len: usize,
}

impl ObservationBatchBuilder {
    /// A builder sized for `capacity` rows.
    pub fn new(capacity: usize) -> Self {
        let s = || StringBuilder::with_capacity(capacity, capacity * 8);
        let t = || TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC");
        ObservationBatchBuilder {
            patient: s(),
            device: s(),
            code: s(),
            panel: s(),
            value: Float64Builder::with_capacity(capacity),
            unit: s(),
            effective: t(),
            end: t(),
            offset: Int16Builder::with_capacity(capacity),
            received: t(),
            source: s(),
            format: s(),
            extra: StringBuilder::new(),
            len: 0,
        }
    }

    /// Appends one reading.
    pub fn push(&mut self, r: &Reading, received_us: i64, source: Source, format: Format) {
        self.patient.append_option(r.patient_id.as_deref());
        self.device.append_value(&r.device_id);
        self.code.append_value(r.code());
        self.panel.append_option(r.panel());
        self.value.append_value(r.value);
        self.unit.append_value(r.unit());
        self.effective.append_value(r.effective_us);
        self.end.append_option(r.effective_end_us);
        self.offset.append_option(r.offset_min);
        self.received.append_value(received_us);
        self.source.append_value(source.as_str());
        self.format.append_value(format.as_str());
        self.extra.append_option(r.extra.as_deref());
        self.len += 1;
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no row was pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finishes the batch and resets the builder.
    pub fn finish(&mut self) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.patient.finish()),
            Arc::new(self.device.finish()),
            Arc::new(self.code.finish()),
            Arc::new(self.panel.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.unit.finish()),
            Arc::new(self.effective.finish()),
            Arc::new(self.end.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.received.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.format.finish()),
            Arc::new(self.extra.finish()),
        ];
        self.len = 0;
        // Columns match the schema by construction; an error here is a programming error that
        // the tests catch, so fall back to an empty batch rather than panic.
        RecordBatch::try_new(observations_schema(), cols)
            .unwrap_or_else(|_| RecordBatch::new_empty(observations_schema()))
    }
}

/// A stored row read back from a batch (owned).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// Patient.
    pub patient_id: Option<String>,
    /// Device.
    pub device_id: String,
    /// LOINC code.
    pub code: String,
    /// Panel code.
    pub panel_code: Option<String>,
    /// Value in `unit`.
    pub value: f64,
    /// UCUM unit.
    pub unit: String,
    /// Effective time, UTC micros.
    pub effective_us: i64,
    /// End of the interval.
    pub effective_end_us: Option<i64>,
    /// Sender's offset.
    pub tz_offset_min: Option<i16>,
    /// Received time, UTC micros.
    pub received_us: i64,
    /// Transport.
    pub source: String,
    /// Payload format.
    pub format: String,
    /// Extra FHIR elements.
    pub extra: Option<String>,
}

impl StoredRow {
    /// The FHIR Observation id (shared by both blood-pressure rows).
    pub fn observation_id(&self) -> String {
        observation_id(
            &self.device_id,
            self.panel_code.as_deref().unwrap_or(&self.code),
            self.effective_us,
        )
    }
}

/// A column was missing or had another type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("observations batch: column `{column}` {problem}")]
pub struct SchemaError {
    /// The column.
    pub column: String,
    /// What is wrong.
    pub problem: String,
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, SchemaError> {
    let c = b.column_by_name(name).ok_or_else(|| SchemaError {
        column: name.to_owned(),
        problem: "is missing".to_owned(),
    })?;
    c.as_any().downcast_ref::<T>().ok_or_else(|| SchemaError {
        column: name.to_owned(),
        problem: format!("has type {}", c.data_type()),
    })
}

fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    (!a.is_null(i)).then(|| a.value(i).to_owned())
}

/// Reads rows back from an `observations` batch; columns are found by name, so batches with
/// extra (newer) columns still read.
pub fn readings_from_batch(b: &RecordBatch) -> Result<Vec<StoredRow>, SchemaError> {
    let patient = col::<StringArray>(b, "patient_id")?;
    let device = col::<StringArray>(b, "device_id")?;
    let code = col::<StringArray>(b, "code")?;
    let panel = col::<StringArray>(b, "panel_code")?;
    let value = col::<Float64Array>(b, "value")?;
    let unit = col::<StringArray>(b, "unit")?;
    let eff = col::<TimestampMicrosecondArray>(b, "effective_time")?;
    let end = col::<TimestampMicrosecondArray>(b, "effective_end")?;
    let off = col::<Int16Array>(b, "tz_offset_min")?;
    let rec = col::<TimestampMicrosecondArray>(b, "received_time")?;
    let source = col::<StringArray>(b, "source")?;
    let format = col::<StringArray>(b, "format")?;
    let extra = col::<StringArray>(b, "extra")?;
    Ok((0..b.num_rows())
        .map(|i| StoredRow {
            patient_id: opt_str(patient, i),
            device_id: device.value(i).to_owned(),
            code: code.value(i).to_owned(),
            panel_code: opt_str(panel, i),
            value: value.value(i),
            unit: unit.value(i).to_owned(),
            effective_us: eff.value(i),
            effective_end_us: (!end.is_null(i)).then(|| end.value(i)),
            tz_offset_min: (!off.is_null(i)).then(|| off.value(i)),
            received_us: rec.value(i),
            source: source.value(i).to_owned(),
            format: format.value(i).to_owned(),
            extra: opt_str(extra, i),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::by_key;

    fn reading(key: &str, value: f64, t: i64) -> Reading {
        Reading {
            device_id: "dev-1".into(),
            patient_id: Some("p-1".into()),
            vital: by_key(key).expect("vital"),
            value,
            effective_us: t,
            effective_end_us: None,
            offset_min: Some(120),
            extra: None,
        }
    }

    #[test]
    fn schema_snapshot() {
        let s = observations_schema();
        let mut text = String::new();
        for f in s.fields() {
            text.push_str(&format!(
                "{} {} {} -- {}\n",
                f.name(),
                f.data_type(),
                if f.is_nullable() { "NULL" } else { "NOT NULL" },
                f.metadata()
                    .get("description")
                    .map(String::as_str)
                    .unwrap_or("")
            ));
        }
        text.push_str(&format!("metadata {:?}\n", s.metadata()));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn batch_round_trip() {
        let mut b = ObservationBatchBuilder::new(4);
        let mut steps = reading("steps", 120.0, 1_700_000_000_000_000);
        steps.effective_end_us = Some(1_700_000_060_000_000);
        steps.offset_min = None;
        let mut hr = reading("heart_rate", 72.0, 1_700_000_000_000_000);
        hr.extra = Some(r#"{"id":"src-1"}"#.into());
        let rows = [
            hr,
            reading("systolic", 120.0, 1_700_000_000_000_000),
            reading("diastolic", 80.0, 1_700_000_000_000_000),
            steps,
        ];
        for r in &rows {
            b.push(r, 1_700_000_001_000_000, Source::Http, Format::Carewatch);
        }
        assert_eq!(b.len(), 4);
        let batch = b.finish();
        assert!(b.is_empty());
        let table = arrow_cast::pretty::pretty_format_batches(&[batch.clone()])
            .expect("pretty")
            .to_string();
        insta::assert_snapshot!(table);
        let back = readings_from_batch(&batch).expect("read");
        assert_eq!(back.len(), 4);
        assert_eq!(back[1].observation_id(), back[2].observation_id());
        assert_eq!(back[0].observation_id(), rows[0].observation_id());
        assert_eq!(back[3].effective_end_us, Some(1_700_000_060_000_000));
        assert_eq!(back[0].extra.as_deref(), Some(r#"{"id":"src-1"}"#));
    }

    #[test]
    fn reads_by_name_and_names_missing_columns() {
        let mut b = ObservationBatchBuilder::new(1);
        b.push(
            &reading("heart_rate", 72.0, 1),
            2,
            Source::Mqtt,
            Format::Fhir,
        );
        let batch = b.finish();
        // An extra, newer column is ignored.
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("future", DataType::Utf8, true));
        let mut cols = batch.columns().to_vec();
        cols.push(Arc::new(StringArray::from(vec![Some("x")])));
        let wider = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("wider");
        assert_eq!(readings_from_batch(&wider).expect("read")[0].value, 72.0);
        let narrower = batch
            .project(&[0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12])
            .expect("project");
        let e = readings_from_batch(&narrower).unwrap_err();
        assert_eq!(
            e.to_string(),
            "observations batch: column `value` is missing"
        );
    }
}
