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
            // Only FHIR-native input fills `extra`: reserve offsets, not bytes.
            extra: StringBuilder::with_capacity(capacity, 0),
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

    /// Finishes the batch and resets the builder (it can be reused for the next batch).
    ///
    /// # Panics
    ///
    /// Never for any input: every column is appended once per [`push`](Self::push) with the
    /// schema's type and nullability, so the batch always matches [`observations_schema`]. A
    /// mismatch is a bug in this module (the tests cover it); it panics rather than return an
    /// empty batch, which would silently drop acknowledged rows.
    #[expect(
        clippy::expect_used,
        reason = "columns match the schema by construction; failing loudly beats losing rows"
    )]
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
        RecordBatch::try_new(observations_schema(), cols)
            .expect("observations builder columns match observations_schema()")
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

/// A column was missing, had another type, or held nulls where the schema has none.
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

/// A column the schema declares not null: reject nulls rather than read them as `""` / `0`.
fn required<'a, T: Array + 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, SchemaError> {
    let c = col::<T>(b, name)?;
    if c.null_count() > 0 {
        return Err(SchemaError {
            column: name.to_owned(),
            problem: format!("has {} null(s) but is not nullable", c.null_count()),
        });
    }
    Ok(c)
}

fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    (!a.is_null(i)).then(|| a.value(i).to_owned())
}

/// Reads rows back from an `observations` batch; columns are found by name, so batches with
/// extra (newer) columns or another column order still read.
///
/// # Errors
///
/// [`SchemaError`] naming the column when one of the thirteen columns is missing, has another
/// Arrow type, or holds nulls although the schema declares it not null.
pub fn readings_from_batch(b: &RecordBatch) -> Result<Vec<StoredRow>, SchemaError> {
    let patient = col::<StringArray>(b, "patient_id")?;
    let device = required::<StringArray>(b, "device_id")?;
    let code = required::<StringArray>(b, "code")?;
    let panel = col::<StringArray>(b, "panel_code")?;
    let value = required::<Float64Array>(b, "value")?;
    let unit = required::<StringArray>(b, "unit")?;
    let eff = required::<TimestampMicrosecondArray>(b, "effective_time")?;
    let end = col::<TimestampMicrosecondArray>(b, "effective_end")?;
    let off = col::<Int16Array>(b, "tz_offset_min")?;
    let rec = required::<TimestampMicrosecondArray>(b, "received_time")?;
    let source = required::<StringArray>(b, "source")?;
    let format = required::<StringArray>(b, "format")?;
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
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::catalogue::by_key;

    /// 2023-11-14T22:13:20Z.
    const T0: i64 = 1_700_000_000_000_000;
    /// One second later: when every test row was received.
    const RECEIVED: i64 = T0 + 1_000_000;

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

    /// Heart rate with extra FHIR elements, a blood-pressure pair, and an OMH-like step count
    /// over an interval from an unassigned device without an offset; with how each arrived.
    fn sample() -> Vec<(Reading, Source, Format)> {
        let mut hr = reading("heart_rate", 72.0, T0);
        hr.extra = Some(r#"{"id":"src-1","note":[{"text":"at rest"}]}"#.into());
        let mut steps = reading("steps", 1234.0, T0 - 60_000_000);
        steps.device_id = "dev-2".into();
        steps.patient_id = None;
        steps.effective_end_us = Some(T0);
        steps.offset_min = None;
        let mut temp = reading("body_temperature", 37.25, T0 + 500);
        temp.offset_min = Some(-330);
        vec![
            (hr, Source::Http, Format::Fhir),
            (
                reading("systolic", 120.0, T0),
                Source::Mqtt,
                Format::Carewatch,
            ),
            (
                reading("diastolic", 80.0, T0),
                Source::Mqtt,
                Format::Carewatch,
            ),
            (steps, Source::Replay, Format::Omh),
            (temp, Source::Cli, Format::Template),
        ]
    }

    fn build(rows: &[(Reading, Source, Format)]) -> RecordBatch {
        let mut b = ObservationBatchBuilder::new(rows.len());
        for (r, source, format) in rows {
            b.push(r, RECEIVED, *source, *format);
        }
        assert_eq!(b.len(), rows.len());
        b.finish()
    }

    fn pretty(batch: &RecordBatch) -> String {
        arrow_cast::pretty::pretty_format_batches(std::slice::from_ref(batch))
            .expect("pretty")
            .to_string()
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
    fn every_field_is_described_and_no_observation_id_is_stored() {
        let s = observations_schema();
        assert_eq!(s.fields().len(), 13);
        for f in s.fields() {
            let d = f.metadata().get("description").map(String::as_str);
            assert!(d.is_some_and(|d| !d.is_empty()), "{} undescribed", f.name());
        }
        assert!(s.column_with_name("observation_id").is_none());
        assert_eq!(
            s.metadata()
                .get("carewatch.schema_version")
                .map(String::as_str),
            Some(SCHEMA_VERSION)
        );
    }

    #[test]
    fn batch_table_and_round_trip() {
        let rows = sample();
        let batch = build(&rows);
        assert_eq!(batch.schema(), observations_schema());
        let expected = r#"
+------------+-----------+---------+------------+--------+---------+-----------------------------+----------------------+---------------+----------------------+--------+-----------+--------------------------------------------+
| patient_id | device_id | code    | panel_code | value  | unit    | effective_time              | effective_end        | tz_offset_min | received_time        | source | format    | extra                                      |
+------------+-----------+---------+------------+--------+---------+-----------------------------+----------------------+---------------+----------------------+--------+-----------+--------------------------------------------+
| p-1        | dev-1     | 8867-4  |            | 72.0   | /min    | 2023-11-14T22:13:20Z        |                      | 120           | 2023-11-14T22:13:21Z | http   | fhir      | {"id":"src-1","note":[{"text":"at rest"}]} |
| p-1        | dev-1     | 8480-6  | 85354-9    | 120.0  | mm[Hg]  | 2023-11-14T22:13:20Z        |                      | 120           | 2023-11-14T22:13:21Z | mqtt   | carewatch |                                            |
| p-1        | dev-1     | 8462-4  | 85354-9    | 80.0   | mm[Hg]  | 2023-11-14T22:13:20Z        |                      | 120           | 2023-11-14T22:13:21Z | mqtt   | carewatch |                                            |
|            | dev-2     | 55423-8 |            | 1234.0 | {steps} | 2023-11-14T22:12:20Z        | 2023-11-14T22:13:20Z |               | 2023-11-14T22:13:21Z | replay | omh       |                                            |
| p-1        | dev-1     | 8310-5  |            | 37.25  | Cel     | 2023-11-14T22:13:20.000500Z |                      | -330          | 2023-11-14T22:13:21Z | cli    | template  |                                            |
+------------+-----------+---------+------------+--------+---------+-----------------------------+----------------------+---------------+----------------------+--------+-----------+--------------------------------------------+"#
            .trim_start();
        assert_eq!(pretty(&batch), expected);

        let back = readings_from_batch(&batch).expect("read");
        let want: Vec<StoredRow> = rows
            .iter()
            .map(|(r, source, format)| StoredRow {
                patient_id: r.patient_id.clone(),
                device_id: r.device_id.clone(),
                code: r.code().to_owned(),
                panel_code: r.panel().map(str::to_owned),
                value: r.value,
                unit: r.unit().to_owned(),
                effective_us: r.effective_us,
                effective_end_us: r.effective_end_us,
                tz_offset_min: r.offset_min,
                received_us: RECEIVED,
                source: source.as_str().to_owned(),
                format: format.as_str().to_owned(),
                extra: r.extra.clone(),
            })
            .collect();
        assert_eq!(back, want);
        for (stored, (r, _, _)) in back.iter().zip(&rows) {
            assert_eq!(stored.observation_id(), r.observation_id());
        }
        // The blood-pressure pair is one Observation; the heart rate at the same instant is not.
        assert_eq!(back[1].observation_id(), back[2].observation_id());
        assert_ne!(back[0].observation_id(), back[1].observation_id());
        assert_eq!(
            back[1].observation_id(),
            observation_id("dev-1", "85354-9", T0)
        );
    }

    #[test]
    fn builder_resets_and_is_reusable() {
        let rows = sample();
        let mut b = ObservationBatchBuilder::new(2);
        assert!(b.is_empty());
        let empty = b.finish();
        assert_eq!(empty.num_rows(), 0);
        assert_eq!(empty.schema(), observations_schema());
        // Beyond the initial capacity, then a second batch from the same builder.
        for (r, s, f) in &rows {
            b.push(r, RECEIVED, *s, *f);
        }
        let first = b.finish();
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
        b.push(&rows[3].0, RECEIVED, Source::Replay, Format::Omh);
        assert_eq!(b.len(), 1);
        let second = b.finish();
        assert_eq!(first.num_rows(), rows.len());
        assert_eq!(second.num_rows(), 1);
        assert_eq!(second.schema(), observations_schema());
        assert_eq!(
            readings_from_batch(&second).expect("read"),
            readings_from_batch(&first).expect("read")[3..4]
        );
    }

    fn with_column(batch: &RecordBatch, name: &str, field: Field, array: ArrayRef) -> RecordBatch {
        let schema = batch.schema();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut cols = batch.columns().to_vec();
        match schema.index_of(name) {
            Ok(i) => {
                fields[i] = field;
                cols[i] = array;
            }
            Err(_) => {
                fields.push(field);
                cols.push(array);
            }
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("batch")
    }

    #[test]
    fn additive_columns_and_reordering_still_read() {
        let batch = build(&sample());
        let n = batch.num_rows();
        let future = Arc::new(StringArray::from(vec![Some("x"); n])) as ArrayRef;
        let wider = with_column(
            &batch,
            "future",
            Field::new("future", DataType::Utf8, true),
            future,
        );
        assert_eq!(
            readings_from_batch(&wider).expect("wider"),
            readings_from_batch(&batch).expect("read")
        );
        // Columns are looked up by name, not position.
        let reversed: Vec<usize> = (0..batch.num_columns()).rev().collect();
        let reordered = batch.project(&reversed).expect("project");
        assert_eq!(
            readings_from_batch(&reordered).expect("reordered"),
            readings_from_batch(&batch).expect("read")
        );
    }

    #[test]
    fn missing_mistyped_or_null_columns_are_named() {
        let batch = build(&sample());
        let n = batch.num_rows();
        let value = batch.schema().index_of("value").expect("value");
        let keep: Vec<usize> = (0..batch.num_columns()).filter(|&i| i != value).collect();
        let narrower = batch.project(&keep).expect("project");
        let e = readings_from_batch(&narrower).unwrap_err();
        assert_eq!(e.column, "value");
        assert_eq!(
            e.to_string(),
            "observations batch: column `value` is missing"
        );

        let as_text = Arc::new(StringArray::from(vec![Some("72"); n])) as ArrayRef;
        let mistyped = with_column(
            &batch,
            "value",
            Field::new("value", DataType::Utf8, false),
            as_text,
        );
        let e = readings_from_batch(&mistyped).unwrap_err();
        assert_eq!(
            e.to_string(),
            "observations batch: column `value` has type Utf8"
        );

        let mut devices = vec![Some("dev-1"); n];
        devices[1] = None;
        let nulls = Arc::new(StringArray::from(devices)) as ArrayRef;
        let nulled = with_column(
            &batch,
            "device_id",
            Field::new("device_id", DataType::Utf8, true),
            nulls,
        );
        let e = readings_from_batch(&nulled).unwrap_err();
        assert_eq!(
            e.to_string(),
            "observations batch: column `device_id` has 1 null(s) but is not nullable"
        );
    }
}
