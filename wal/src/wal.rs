//! The write-ahead log: checksummed, length-framed segment files.
//!
//! A segment is `wal/<16-digit id>.wal`: an 8-byte magic, then frames
//! `[u32 len][u32 crc32(len ‖ payload)][payload]`. One frame is one group commit. A torn or
//! corrupt tail (crash mid-write, bad sector) is detected by length and checksum, reported,
//! and cut off: it is never replayed as data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"CWWAL\x00\x00\x01";
/// Bytes before each frame's payload: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// Frames larger than this are corrupt by definition. The writer never writes a larger one: a
/// group commit beyond it is cut into several frames (one fsync for all of them).
pub const MAX_FRAME: usize = 256 << 20;
/// Parts smaller than this are copied into one write; larger ones are written as they are.
const COPY_BELOW: usize = 64 << 10;

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
    let (frames, found) = scan(&data);
    let found = found.map(|(offset, what)| Damage {
        segment: id,
        offset: offset as u64,
        what,
    });
    if cut && !data.starts_with(MAGIC) {
        truncate(&path, 0)?;
    } else if let Some(d) = &found
        && cut
    {
        truncate(&path, d.offset)?;
    }
    Ok((frames.into_iter().map(<[u8]>::to_vec).collect(), found))
}

/// The intact frames of a segment's bytes (magic included), and where and why the rest, if
/// any, is damaged (byte offset, description). Pure: what [`read_segment`] reads a file with.
/// Never allocates more than the frame list: a length field is checked against the bytes
/// present (and [`MAX_FRAME`]) before anything is taken.
pub fn scan(data: &[u8]) -> (Vec<&[u8]>, Option<(usize, String)>) {
    let mut frames = Vec::new();
    if !data.starts_with(MAGIC) {
        // A segment created but never written (crash right after creation) is empty, not damaged.
        let d = (!data.is_empty()).then(|| (0, "bad segment header".to_owned()));
        return (frames, d);
    }
    let mut pos = MAGIC.len();
    let mut found = None;
    while pos < data.len() {
        if data.len() - pos < FRAME_HEADER {
            found = Some((
                pos,
                format!("torn frame header ({} bytes)", data.len() - pos),
            ));
            break;
        }
        let len = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        let sum = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        let start = pos + FRAME_HEADER;
        if len as usize > MAX_FRAME || start + len as usize > data.len() {
            found = Some((
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
            found = Some((pos, "checksum mismatch".to_owned()));
            break;
        }
        frames.push(payload);
        pos = start + len as usize;
    }
    (frames, found)
}

/// The 8-byte header of a frame whose payload is the concatenation of `parts`
/// (`[u32 len][u32 crc32(len ‖ payload)]`, little-endian). The caller checks `len` ≤ [`MAX_FRAME`].
pub fn frame_header(len: u32, parts: &[&[u8]]) -> [u8; FRAME_HEADER] {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    parts.iter().for_each(|p| h.update(p));
    let mut out = [0u8; FRAME_HEADER];
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..].copy_from_slice(&h.finalize().to_le_bytes());
    out
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
    /// A failed write could not be cut back: the tail is garbage, append nothing more here.
    dirty: bool,
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
            dirty: false,
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

    /// Whether a failed write left bytes this segment could not cut off (then only
    /// [`Wal::rotate`] helps).
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Appends one frame and makes it durable (fdatasync). On failure the segment is cut back
    /// to its previous length so no partial frame stays behind.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        self.append_frames(&[vec![payload]])
    }

    /// Appends frames, each the concatenation of its parts, and syncs once. Every frame must be
    /// at most [`MAX_FRAME`] bytes (else nothing is written). On failure the segment is cut
    /// back to its previous length; if even that fails the segment is marked [`Wal::dirty`].
    pub fn append_frames(&mut self, frames: &[Vec<&[u8]>]) -> io::Result<()> {
        if self.dirty {
            return Err(io::Error::other("WAL segment has a damaged tail"));
        }
        let mut lens = Vec::with_capacity(frames.len());
        for parts in frames {
            let len: usize = parts.iter().map(|p| p.len()).sum();
            if len > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("frame of {len} bytes exceeds the WAL frame limit of {MAX_FRAME}"),
                ));
            }
            lens.push(len as u32);
        }
        let mut written = 0u64;
        let res = self.write_frames(frames, &lens, &mut written);
        let res = res.and_then(|()| self.file.sync_data());
        match res {
            Ok(()) => {
                self.size += written;
                Ok(())
            }
            Err(e) => {
                // Drop whatever part of the frames reached the file.
                let cut = self.file.set_len(self.size).and_then(|()| {
                    std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(self.size))
                });
                if cut.is_err() {
                    self.dirty = true;
                }
                Err(e)
            }
        }
    }

    fn write_frames(
        &mut self,
        frames: &[Vec<&[u8]>],
        lens: &[u32],
        written: &mut u64,
    ) -> io::Result<()> {
        self.buf.clear();
        for (parts, &len) in frames.iter().zip(lens) {
            self.buf.extend_from_slice(&frame_header(len, parts));
            for p in parts {
                if p.len() < COPY_BELOW {
                    self.buf.extend_from_slice(p);
                } else {
                    self.file.write_all(&self.buf)?;
                    self.file.write_all(p)?;
                    *written += self.buf.len() as u64 + p.len() as u64;
                    self.buf.clear();
                }
            }
        }
        self.file.write_all(&self.buf)?;
        *written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
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
    fn frames_of_parts_round_trip_and_oversized_frames_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = Wal::create(dir.path(), 1).expect("create");
        let big = vec![7u8; COPY_BELOW + 1];
        w.append_frames(&[vec![b"ab", &big, b"c"], vec![b"d"]])
            .expect("append");
        let size = w.size();
        let huge = vec![0u8; MAX_FRAME / 2 + 1];
        let err = w
            .append_frames(&[vec![&huge, &huge]])
            .expect_err("over the limit");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(w.size(), size);
        drop(w);
        let mut first = b"ab".to_vec();
        first.extend_from_slice(&big);
        first.push(b'c');
        let (frames, damage) = read_segment(dir.path(), 1).expect("read");
        assert_eq!(frames, vec![first, b"d".to_vec()]);
        assert_eq!(damage, None);
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
