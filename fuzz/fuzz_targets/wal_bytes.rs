//! The WAL codec on arbitrary bytes: as a segment (magic, length-framed, CRC-checked frames)
//! and as a frame payload (records). Never panics, never allocates from a length or count field
//! beyond what the bytes can hold (the capped allocator aborts on one allocation over 64 MiB);
//! the frames found lie inside the segment, and what decodes survives encode + decode unchanged.
#![no_main]

use carewatch_wal::codec::{Record, decode, encode_dead, encode_rows};
use carewatch_wal::wal::{MAX_FRAME, scan};
use libfuzzer_sys::fuzz_target;

carewatch_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    let (frames, damage) = scan(data);
    for f in &frames {
        assert!(f.len() <= MAX_FRAME);
    }
    if let Some((at, _)) = damage {
        assert!(at <= data.len());
    }
    if let Ok(records) = decode(data) {
        // Encoding what decoded and decoding again gives the same records (flags and the old
        // dead-letter kind are normalised by the first decode).
        let mut again = Vec::new();
        for r in &records {
            match r {
                Record::Rows(rows) => encode_rows(&mut again, rows),
                Record::Dead(dead) => encode_dead(&mut again, dead),
            }
        }
        let back = decode(&again).expect("what we encode decodes");
        assert_eq!(format!("{back:?}"), format!("{records:?}"));
    }
});
