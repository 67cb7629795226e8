//! The registry's log file: `registry.log` in the data directory, one [`Tx`] per line, appended
//! and fsynced before a change is answered, rewritten (compacted) when it has doubled.
//!
//! A line is `<crc32 of the JSON, 8 hex digits> <JSON>\n`; the first line is a header naming
//! the format. Reading stops at the first line that is incomplete or fails its checksum (a
//! write torn by a crash): a transaction is on its line whole or not at all. A writer cuts such
//! a tail off before it appends.
//!
//! Several processes may write the same directory (`serve`, and `carewatch token|devices …`
//! offline): every write holds an exclusive `flock` on `registry.lock` and first reads what the
//! others appended. Compaction writes the whole state to a temporary file and renames it over
//! `registry.log`; the others notice the new inode and reload. Readers (`poll`) take no lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::persist::{Backend, Changes, Tx};
use crate::{Error, Result};

const LOG: &str = "registry.log";
const LOCK: &str = "registry.lock";
/// The document of earlier versions, migrated on the first open.
pub(crate) const LEGACY: &str = "registry.json";
const HEADER: &str = r#"{"format":"carewatch-registry-log","version":1}"#;
/// Below this size the log is never compacted.
const COMPACT_MIN: u64 = 8 << 20;

fn io(e: std::io::Error) -> Error {
    Error::Io(format!("registry: {e}"))
}

/// One line: checksum, space, JSON, newline.
fn line(json: &str) -> String {
    format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()))
}

pub(crate) fn encode(txs: &[Tx]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for tx in txs {
        let json = serde_json::to_string(tx).map_err(|e| Error::Encode(e.to_string()))?;
        out.extend_from_slice(line(&json).as_bytes());
    }
    Ok(out)
}

/// The JSON of a line if it is whole and its checksum matches.
fn checked(l: &[u8]) -> Option<&[u8]> {
    let (crc, json) = (l.get(..8)?, l.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    (l.get(8) == Some(&b' ') && crc32fast::hash(json) == crc).then_some(json)
}

/// Parses the transactions in `bytes` (starting at a line boundary, `at_start` if that is the
/// file's start); returns them and how many bytes they covered.
fn parse(bytes: &[u8], at_start: bool) -> Result<(Vec<Tx>, usize)> {
    let mut txs = Vec::new();
    let mut used = 0;
    while let Some(n) = bytes[used..].iter().position(|b| *b == b'\n') {
        let Some(json) = checked(&bytes[used..used + n]) else {
            break;
        };
        if at_start && used == 0 {
            if json != HEADER.as_bytes() {
                return Err(Error::Config(format!(
                    "{LOG}: not a carewatch registry log (or a newer version)"
                )));
            }
        } else {
            match serde_json::from_slice(json) {
                Ok(tx) => txs.push(tx),
                // A whole, checksummed line we cannot read is not a torn write: refuse it
                // rather than silently dropping everything after it.
                Err(e) => return Err(Error::Config(format!("{LOG}: line unreadable: {e}"))),
            }
        }
        used += n + 1;
    }
    Ok((txs, used))
}

/// `registry.log` and the lock beside it.
#[derive(Debug)]
pub(crate) struct LogFile {
    dir: PathBuf,
    /// `registry.lock` (writers only).
    lock: Option<File>,
    /// The log as last opened (None: read-only on a directory without one).
    file: Option<File>,
    ino: u64,
    /// Bytes read and applied: always the end of a whole line.
    offset: u64,
    /// Size after the last compaction (or at open).
    base: u64,
}

/// What [`LogFile::open`] found.
#[derive(Debug)]
pub(crate) struct Opened {
    pub log: LogFile,
    pub txs: Vec<Tx>,
}

impl LogFile {
    /// Opens the log in `dir` as a writer, creating it or migrating `registry.json` (converted
    /// by `legacy`; the old file is kept as `registry.json.migrated`).
    pub fn open(dir: &Path, legacy: impl FnOnce(&[u8]) -> Result<Vec<Tx>>) -> Result<Opened> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .map_err(io)?;
        lock.lock().map_err(io)?;
        let out = Self::open_locked(dir, legacy);
        let _ = lock.unlock();
        let mut opened = out?;
        opened.log.lock = Some(lock);
        Ok(opened)
    }

    fn open_locked(dir: &Path, legacy: impl FnOnce(&[u8]) -> Result<Vec<Tx>>) -> Result<Opened> {
        let path = dir.join(LOG);
        if path.exists() {
            let (mut log, txs) = Self::read_existing(dir)?;
            log.cut_tail()?;
            return Ok(Opened { log, txs });
        }
        let (txs, fresh) = match std::fs::read(dir.join(LEGACY)) {
            Ok(bytes) => (legacy(&bytes)?, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), true),
            Err(e) => return Err(io(e)),
        };
        let mut log = LogFile::closed(dir);
        log.rewrite(&txs)?;
        if !fresh {
            let old = dir.join(LEGACY);
            std::fs::rename(&old, dir.join(format!("{LEGACY}.migrated"))).map_err(io)?;
            tracing::info!("registry migrated from {LEGACY} to {LOG}");
        }
        Ok(Opened { log, txs })
    }

    /// Opens the log for reading only: never creates, migrates or cuts anything.
    pub fn open_read_only(
        dir: &Path,
        legacy: impl FnOnce(&[u8]) -> Result<Vec<Tx>>,
    ) -> Result<Opened> {
        if dir.join(LOG).exists() {
            let (log, txs) = Self::read_existing(dir)?;
            return Ok(Opened { log, txs });
        }
        let txs = match std::fs::read(dir.join(LEGACY)) {
            Ok(bytes) => legacy(&bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        Ok(Opened {
            log: LogFile::closed(dir),
            txs,
        })
    }

    fn closed(dir: &Path) -> LogFile {
        LogFile {
            dir: dir.to_owned(),
            lock: None,
            file: None,
            ino: 0,
            offset: 0,
            base: 0,
        }
    }

    fn read_existing(dir: &Path) -> Result<(LogFile, Vec<Tx>)> {
        let mut log = LogFile::closed(dir);
        let txs = log.reopen()?;
        log.base = log.offset;
        Ok((log, txs))
    }

    /// (Re)opens `registry.log` and reads it whole.
    fn reopen(&mut self) -> Result<Vec<Tx>> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(self.dir.join(LOG))
            .map_err(io)?;
        self.ino = file.metadata().map_err(io)?.ino();
        self.file = Some(file);
        self.offset = 0;
        self.read_tail()
    }

    /// Reads whole lines from `offset` to the end.
    fn read_tail(&mut self) -> Result<Vec<Tx>> {
        let Some(f) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        let mut bytes = Vec::new();
        f.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        f.read_to_end(&mut bytes).map_err(io)?;
        let (txs, used) = parse(&bytes, self.offset == 0)?;
        self.offset += used as u64;
        Ok(txs)
    }

    /// Cuts whatever follows the last whole line (a torn write); writers only, under the lock.
    fn cut_tail(&mut self) -> Result<()> {
        if let Some(f) = &self.file {
            let len = f.metadata().map_err(io)?.len();
            if len > self.offset {
                tracing::warn!(
                    bytes = len - self.offset,
                    "registry log: cutting a torn last write"
                );
                f.set_len(self.offset)
                    .and_then(|()| f.sync_data())
                    .map_err(io)?;
            }
        }
        Ok(())
    }

    /// Others' changes since the last look: a new file (compacted elsewhere) or new lines.
    fn changes(&mut self) -> Result<Changes> {
        let meta = match std::fs::metadata(self.dir.join(LOG)) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Changes::None),
            Err(e) => return Err(io(e)),
        };
        if self.file.is_none() || meta.ino() != self.ino {
            let txs = self.reopen()?;
            self.base = self.offset;
            return Ok(Changes::Reload(txs));
        }
        if meta.len() == self.offset {
            return Ok(Changes::None);
        }
        let txs = self.read_tail()?;
        Ok(if txs.is_empty() {
            Changes::None
        } else {
            Changes::Append(txs)
        })
    }

    /// Writes `txs` as a new log through a temporary file and a rename, then reopens it.
    fn rewrite(&mut self, txs: &[Tx]) -> Result<()> {
        let tmp = self.dir.join(format!(".{LOG}.{}.tmp", std::process::id()));
        let mut bytes = line(HEADER).into_bytes();
        bytes.extend_from_slice(&encode(txs)?);
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, self.dir.join(LOG)).map_err(io)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        self.reopen()?;
        self.base = self.offset;
        Ok(())
    }

    fn unlock(&self) {
        if let Some(l) = &self.lock {
            let _ = l.unlock();
        }
    }
}

impl Backend for LogFile {
    fn begin(&mut self) -> Result<Changes> {
        let Some(lock) = &self.lock else {
            return Err(Error::Config("the registry was opened read-only".into()));
        };
        lock.lock().map_err(io)?;
        let out = self.changes().and_then(|c| self.cut_tail().map(|()| c));
        if out.is_err() {
            self.unlock();
        }
        out
    }

    fn commit(&mut self, txs: &[Tx]) -> Result<()> {
        let out = self.append(txs);
        self.unlock();
        out
    }

    fn abort(&mut self) {
        self.unlock();
    }

    fn poll(&mut self) -> Result<Changes> {
        self.changes()
    }

    fn wants_compaction(&self) -> bool {
        self.offset > COMPACT_MIN.max(self.base.saturating_mul(2))
    }

    fn compact(&mut self, state: &[Tx]) -> Result<()> {
        let out = self.rewrite(state);
        self.unlock();
        out
    }
}

impl LogFile {
    /// Appends the lines and syncs; a failed write is cut back so no partial line stays.
    fn append(&mut self, txs: &[Tx]) -> Result<()> {
        if txs.is_empty() {
            return Ok(());
        }
        let bytes = encode(txs)?;
        let Some(f) = self.file.as_mut() else {
            return Err(Error::Config("the registry was opened read-only".into()));
        };
        match f.write_all(&bytes).and_then(|()| f.sync_data()) {
            Ok(()) => {
                self.offset += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = f.set_len(self.offset);
                Err(io(e))
            }
        }
    }
}
