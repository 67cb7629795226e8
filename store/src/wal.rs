//! The write-ahead log: checksummed, length-framed segment files.
//!
//! A segment is `wal/<16-digit id>.wal`: an 8-byte magic, then frames
//! `[u32 len][u32 crc32(len ‖ payload)][payload]`. One frame is one group commit. A torn or
//! corrupt tail (crash mid-write, bad sector) is detected by length and checksum, reported,
//! and cut off: it is never replayed as data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"CWWAL\x00\x00\x01";
const FRAME_HEADER: usize = 8;
/// Frames larger than this are corrupt by definition (a group commit is bounded far below).
const MAX_FRAME: usize = 256 << 20;

/// The path of segment `id`.
pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.wal"))
}

/// The segment ids present, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for e in fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_suffix(".wal")
            .and_then(|s| s.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn crc(len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// What replay found wrong in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Segment id.
    pub segment: u64,
    /// Byte offset where the damage starts (the segment was cut there).
    pub offset: u64,
    /// What was wrong.
    pub what: String,
}

/// Reads every intact frame of a segment; cuts a torn or corrupt tail (truncating the file).
pub fn read_segment(dir: &Path, id: u64) -> io::Result<(Vec<Vec<u8>>, Option<Damage>)> {
    read_segment_opts(dir, id, true)
}

/// Like [`read_segment`]; with `cut == false` the file is left untouched (read-only opens).
pub fn read_segment_opts(
    dir: &Path,
    id: u64,
    cut: bool,
) -> io::Result<(Vec<Vec<u8>>, Option<Damage>)> {
    let path = segment_path(dir, id);
    let data = fs::read(&path)?;
    let mut frames = Vec::new();
    let damage = |offset: usize, what: String| Damage {
        segment: id,
        offset: offset as u64,
        what,
    };
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        // A segment created but never written (crash right after creation) is empty, not damaged.
        let d = (!data.is_empty()).then(|| damage(0, "bad segment header".to_owned()));
        if cut {
            truncate(&path, 0)?;
        }
        return Ok((frames, d));
    }
    let mut pos = MAGIC.len();
    let mut found = None;
    while pos < data.len() {
        if data.len() - pos < FRAME_HEADER {
            found = Some(damage(
                pos,
                format!("torn frame header ({} bytes)", data.len() - pos),
            ));
            break;
        }
        let len = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        let sum = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        let start = pos + FRAME_HEADER;
        if len as usize > MAX_FRAME || start + len as usize > data.len() {
            found = Some(damage(
                pos,
                format!(
                    "torn frame: {len} bytes declared, {} present",
                    data.len() - start
                ),
            ));
            break;
        }
        let payload = &data[start..start + len as usize];
        if crc(len, payload) != sum {
            found = Some(damage(pos, "checksum mismatch".to_owned()));
            break;
        }
        frames.push(payload.to_vec());
        pos = start + len as usize;
    }
    if let Some(d) = &found
        && cut
    {
        truncate(&path, d.offset)?;
    }
    Ok((frames, found))
}

fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The open segment being appended to.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    file: File,
    id: u64,
    size: u64,
    buf: Vec<u8>,
}

impl Wal {
    /// Creates segment `id` (always a fresh one: replayed segments are never appended to).
    pub fn create(dir: &Path, id: u64) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        let path = segment_path(dir, id);
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_owned(),
            file,
            id,
            size: MAGIC.len() as u64,
            buf: Vec::new(),
        })
    }

    /// The current segment id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes in the current segment.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one frame and makes it durable (fdatasync). On failure the segment is cut back
    /// to its previous length so no partial frame stays behind.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too large"))?;
        self.buf.clear();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&crc(len, payload).to_le_bytes());
        self.buf.extend_from_slice(payload);
        let res = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        match res {
            Ok(()) => {
                self.size += self.buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Best effort: drop whatever part of the frame reached the file.
                let _ = self.file.set_len(self.size);
                let _ = std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(self.size));
                Err(e)
            }
        }
    }

    /// Closes the current segment and starts the next; returns the closed id.
    pub fn rotate(&mut self) -> io::Result<u64> {
        let next = Wal::create(&self.dir, self.id + 1)?;
        let closed = self.id;
        *self = next;
        Ok(closed)
    }
}

/// Deletes every segment with id ≤ `upto`.
pub fn remove_upto(dir: &Path, upto: u64) -> io::Result<()> {
    for id in list_segments(dir)? {
        if id <= upto {
            fs::remove_file(segment_path(dir, id))?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = Wal::create(dir.path(), 7).expect("create");
        w.append(b"first").expect("append");
        w.append(b"second").expect("append");
        let good = w.size();
        drop(w);
        // A crash mid-write: half a frame at the end.
        let path = segment_path(dir.path(), 7);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'x'])
            .expect("write");
        drop(f);
        let (frames, damage) = read_segment(dir.path(), 7).expect("read");
        assert_eq!(frames, vec![b"first".to_vec(), b"second".to_vec()]);
        let d = damage.expect("damage reported");
        assert_eq!(d.offset, good);
        assert!(d.what.contains("torn"), "{}", d.what);
        assert_eq!(fs::metadata(&path).expect("meta").len(), good);
        // Reading again finds it clean.
        assert_eq!(read_segment(dir.path(), 7).expect("read").1, None);
    }

    #[test]
    fn corrupt_frame_is_detected_not_replayed() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = Wal::create(dir.path(), 1).expect("create");
        w.append(b"aaaa").expect("append");
        w.append(b"bbbb").expect("append");
        drop(w);
        let path = segment_path(dir.path(), 1);
        let mut data = fs::read(&path).expect("read");
        let n = data.len();
        data[n - 2] ^= 0xff; // flip a byte inside the second payload
        fs::write(&path, &data).expect("write");
        let (frames, damage) = read_segment(dir.path(), 1).expect("read");
        assert_eq!(frames, vec![b"aaaa".to_vec()]);
        assert_eq!(damage.expect("damage").what, "checksum mismatch");
    }

    #[test]
    fn rotate_and_remove() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = Wal::create(dir.path(), 1).expect("create");
        assert_eq!(w.rotate().expect("rotate"), 1);
        assert_eq!(w.rotate().expect("rotate"), 2);
        assert_eq!(list_segments(dir.path()).expect("list"), vec![1, 2, 3]);
        remove_upto(dir.path(), 2).expect("remove");
        assert_eq!(list_segments(dir.path()).expect("list"), vec![3]);
        // An empty (never written) segment reads as empty, not damaged.
        fs::write(segment_path(dir.path(), 9), b"").expect("write");
        assert_eq!(read_segment(dir.path(), 9).expect("read"), (vec![], None));
    }
}
