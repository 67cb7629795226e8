//! The WAL codec on structured input: arbitrary rows and dead letters (every vital, source,
//! format and reason; any strings, NaN and extreme numbers), several records in one group
//! commit, framed as the writer frames them (a frame of several parts). Checks that
//! `decode(encode(x)) == x`, that a segment reads back its frames, and that a segment cut
//! anywhere reads back exactly the frames before the cut, with the damage at the cut frame.
#![no_main]

use carewatch_transform::catalogue::VITALS;
use carewatch_transform::{Format, Reading, Reason, Source};
use carewatch_wal::codec::{Record, decode, encode_dead, encode_rows};
use carewatch_wal::wal::{FRAME_HEADER, MAGIC, frame_header, scan};
use carewatch_wal::{DeadLetter, Row};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

carewatch_fuzz::capped_allocator!();

const SOURCES: [Source; 4] = [Source::Http, Source::Mqtt, Source::Replay, Source::Cli];
const FORMATS: [Format; 4] = [
    Format::Carewatch,
    Format::Fhir,
    Format::Omh,
    Format::Template,
];

fn row(u: &mut Unstructured<'_>) -> Result<Row> {
    Ok(Row {
        reading: Reading {
            device_id: u.arbitrary()?,
            patient_id: u.arbitrary()?,
            vital: u.choose(VITALS)?,
            value: u.arbitrary()?,
            effective_us: u.arbitrary()?,
            effective_end_us: u.arbitrary()?,
            offset_min: u.arbitrary()?,
            extra: u.arbitrary()?,
        },
        received_us: u.arbitrary()?,
        source: *u.choose(&SOURCES)?,
        format: *u.choose(&FORMATS)?,
    })
}

fn dead(u: &mut Unstructured<'_>) -> Result<DeadLetter> {
    Ok(DeadLetter {
        received_us: u.arbitrary()?,
        source: *u.choose(&SOURCES)?,
        device_id: u.arbitrary()?,
        reason: *u.choose(&Reason::ALL)?,
        message: u.arbitrary()?,
        index: u.arbitrary()?,
        raw: u.arbitrary()?,
        raw_sha256: u.arbitrary()?,
    })
}

/// Records as comparable values (f64 by its bits, so NaN equals itself).
fn key(records: &[Record]) -> String {
    format!("{records:?}")
}

fn records(u: &mut Unstructured<'_>) -> Result<(Vec<u8>, Vec<Record>)> {
    let mut payload = Vec::new();
    let mut want = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        if u.arbitrary()? {
            let rows = (0..u.int_in_range(0..=8)?)
                .map(|_| row(u))
                .collect::<Result<Vec<_>>>()?;
            encode_rows(&mut payload, &rows);
            want.push(Record::Rows(rows));
        } else {
            let dead = (0..u.int_in_range(0..=8)?)
                .map(|_| dead(u))
                .collect::<Result<Vec<_>>>()?;
            encode_dead(&mut payload, &dead);
            want.push(Record::Dead(dead));
        }
    }
    Ok((payload, want))
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let mut segment = MAGIC.to_vec();
    let mut frames = Vec::new();
    let mut starts = Vec::new();
    for _ in 0..u.int_in_range(1..=3)? {
        let (payload, want) = records(u)?;
        let back = decode(&payload).expect("what we encode decodes");
        assert_eq!(key(&back), key(&want), "decode(encode(x)) == x");
        // The writer frames a group commit from parts; any split gives the same frame.
        let cut = u.int_in_range(0..=payload.len())?;
        let (a, b) = payload.split_at(cut);
        starts.push(segment.len());
        segment.extend_from_slice(&frame_header(payload.len() as u32, &[a, b]));
        segment.extend_from_slice(&payload);
        frames.push(payload);
    }
    let (got, damage) = scan(&segment);
    assert_eq!(got, frames, "a segment reads back its frames");
    assert_eq!(damage, None);
    // A crash mid-write: the segment cut anywhere after its magic.
    let len = u.int_in_range(MAGIC.len()..=segment.len())?;
    let (got, damage) = scan(&segment[..len]);
    let whole = starts
        .iter()
        .zip(&frames)
        .filter(|(s, f)| *s + FRAME_HEADER + f.len() <= len)
        .count();
    assert_eq!(
        got,
        frames[..whole],
        "a torn segment keeps the frames before the tear"
    );
    match damage {
        // A cut between frames leaves a shorter intact segment.
        None => assert!(len == segment.len() || starts.get(whole) == Some(&len)),
        Some((at, _)) => assert_eq!(at, starts[whole], "damage is reported at the torn frame"),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
