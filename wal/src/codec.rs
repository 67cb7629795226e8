//! Binary encoding of WAL records: rows and dead letters.
//!
//! Little-endian, length-prefixed; every field of a row is written, so replay rebuilds the
//! exact row. The vital is stored by its LOINC code and looked up in the catalogue on decode.

use carewatch_transform::catalogue;
use carewatch_transform::{Format, Reading, Reason, Source};

use crate::{DeadLetter, Row};

/// Record kinds.
pub const KIND_ROWS: u8 = 1;
/// Dead letters as first written (no payload digest); still read.
pub const KIND_DEAD: u8 = 2;
/// Dead letters with the payload digest that links a message's dead letters to its one raw copy.
pub const KIND_DEAD_SHA: u8 = 3;

/// Decoding failed: the payload is not what we wrote (checked by CRC first, so this means a bug
/// or a catalogue that lost a code).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("WAL record decode: {0}")]
pub struct DecodeError(pub String);

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_bytes(b, s.as_bytes());
}
fn put_bytes(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s);
}
fn put_opt_str(b: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            b.push(1);
            put_str(b, s);
        }
        None => b.push(0),
    }
}

/// Source as a byte.
pub fn source_byte(s: Source) -> u8 {
    match s {
        Source::Http => 1,
        Source::Mqtt => 2,
        Source::Replay => 3,
        Source::Cli => 4,
        Source::Destination => 5,
    }
}
fn source_of(b: u8) -> Result<Source, DecodeError> {
    Ok(match b {
        1 => Source::Http,
        2 => Source::Mqtt,
        3 => Source::Replay,
        4 => Source::Cli,
        5 => Source::Destination,
        _ => return Err(DecodeError(format!("unknown source {b}"))),
    })
}
fn format_byte(f: Format) -> u8 {
    match f {
        Format::Carewatch => 1,
        Format::Fhir => 2,
        Format::Omh => 3,
        Format::Template => 4,
    }
}
fn format_of(b: u8) -> Result<Format, DecodeError> {
    Ok(match b {
        1 => Format::Carewatch,
        2 => Format::Fhir,
        3 => Format::Omh,
        4 => Format::Template,
        _ => return Err(DecodeError(format!("unknown format {b}"))),
    })
}

/// Appends the encoding of `rows` to `b`.
pub fn encode_rows(b: &mut Vec<u8>, rows: &[Row]) {
    b.push(KIND_ROWS);
    b.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for r in rows {
        let x = &r.reading;
        put_str(b, &x.device_id);
        put_opt_str(b, x.patient_id.as_deref());
        put_str(b, x.code());
        b.extend_from_slice(&x.value.to_le_bytes());
        b.extend_from_slice(&x.effective_us.to_le_bytes());
        match x.effective_end_us {
            Some(e) => {
                b.push(1);
                b.extend_from_slice(&e.to_le_bytes());
            }
            None => b.push(0),
        }
        match x.offset_min {
            Some(o) => {
                b.push(1);
                b.extend_from_slice(&o.to_le_bytes());
            }
            None => b.push(0),
        }
        b.extend_from_slice(&r.received_us.to_le_bytes());
        b.push(source_byte(r.source));
        b.push(format_byte(r.format));
        put_opt_str(b, x.extra.as_deref());
    }
}

/// Appends the encoding of dead letters to `b`.
pub fn encode_dead(b: &mut Vec<u8>, dead: &[DeadLetter]) {
    b.push(KIND_DEAD_SHA);
    b.extend_from_slice(&(dead.len() as u32).to_le_bytes());
    for d in dead {
        b.extend_from_slice(&d.received_us.to_le_bytes());
        b.push(source_byte(d.source));
        put_opt_str(b, d.device_id.as_deref());
        put_str(b, d.reason.code());
        put_str(b, &d.message);
        match d.index {
            Some(i) => {
                b.push(1);
                b.extend_from_slice(&i.to_le_bytes());
            }
            None => b.push(0),
        }
        put_bytes(b, &d.raw);
        match &d.raw_sha256 {
            Some(h) => {
                b.push(1);
                b.extend_from_slice(h);
            }
            None => b.push(0),
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| DecodeError("truncated".into()))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError("invalid UTF-8".into()))
    }
    fn opt_string(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.string().map(Some),
        }
    }
}

/// A decoded record.
#[derive(Debug)]
pub enum Record {
    /// Rows.
    Rows(Vec<Row>),
    /// Dead letters.
    Dead(Vec<DeadLetter>),
}

/// Decodes every record in a frame payload (a group commit may hold several).
pub fn decode(payload: &[u8]) -> Result<Vec<Record>, DecodeError> {
    let mut c = Cursor { b: payload, pos: 0 };
    let mut out = Vec::new();
    while c.pos < payload.len() {
        let kind = c.u8()?;
        let n = c.u32()? as usize;
        match kind {
            KIND_ROWS => {
                let mut rows = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    let device_id = c.string()?;
                    let patient_id = c.opt_string()?;
                    let code = c.string()?;
                    let vital = catalogue::by_code(&code)
                        .filter(|v| v.code == code)
                        .ok_or_else(|| DecodeError(format!("code {code} not in catalogue")))?;
                    let value = f64::from_le_bytes(c.arr()?);
                    let effective_us = c.i64()?;
                    let effective_end_us = match c.u8()? {
                        0 => None,
                        _ => Some(c.i64()?),
                    };
                    let offset_min = match c.u8()? {
                        0 => None,
                        _ => Some(i16::from_le_bytes(c.arr()?)),
                    };
                    let received_us = c.i64()?;
                    let source = source_of(c.u8()?)?;
                    let format = format_of(c.u8()?)?;
                    let extra = c.opt_string()?;
                    rows.push(Row {
                        reading: Reading {
                            device_id,
                            patient_id,
                            vital,
                            value,
                            effective_us,
                            effective_end_us,
                            offset_min,
                            extra,
                        },
                        received_us,
                        source,
                        format,
                    });
                }
                out.push(Record::Rows(rows));
            }
            KIND_DEAD | KIND_DEAD_SHA => {
                let mut dead = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    let received_us = c.i64()?;
                    let source = source_of(c.u8()?)?;
                    let device_id = c.opt_string()?;
                    let reason_code = c.string()?;
                    let reason = Reason::from_code(&reason_code)
                        .ok_or_else(|| DecodeError(format!("unknown reason {reason_code}")))?;
                    let message = c.string()?;
                    let index = match c.u8()? {
                        0 => None,
                        _ => Some(c.u32()?),
                    };
                    let raw = c.bytes()?.to_vec();
                    let raw_sha256 = match kind {
                        KIND_DEAD_SHA if c.u8()? != 0 => Some(c.arr()?),
                        _ => None,
                    };
                    dead.push(DeadLetter {
                        received_us,
                        source,
                        device_id,
                        reason,
                        message,
                        index,
                        raw,
                        raw_sha256,
                    });
                }
                out.push(Record::Dead(dead));
            }
            k => return Err(DecodeError(format!("unknown record kind {k}"))),
        }
    }
    Ok(out)
}
