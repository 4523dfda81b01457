//! The crash-safe on-disk journal that `portwatch record` writes and
//! `portwatch history` reads.
//!
//! A journal is a directory (mode 0700) of append-only segment files (mode
//! 0600) named `seg-<20-digit sequence>.pwj`, so a name sort is an age sort.
//! Each segment starts with a 16-byte header:
//!
//! ```text
//! [8  magic "PWJOURNL"][u32 LE format version = 1][u32 LE crc32c of the first 12 bytes]
//! ```
//!
//! followed by frames:
//!
//! ```text
//! [u32 LE payload length][u32 LE crc32c (Castagnoli) of the payload][payload = JSON of a Record]
//! ```
//!
//! A payload is 2 bytes to 1 MiB and starts with `{`. Crash safety rests on
//! three rules: the writer never appends to a segment it did not create in
//! this run (an old tail may be torn), a segment only appears under its
//! final name once its header is written, and the reader treats any frame
//! that fails its checks as damage, then scans forward for the next frame
//! whose checksum holds. JSON text never contains a zero byte, so a frame
//! length (whose top byte is zero) cannot be mistaken for one inside a
//! payload, and resyncing lands on real frame starts.
//!
//! A `lock` file in the directory, held with flock(2) while a writer is
//! open, keeps two recorders from rotating each other's segments away.

#[cfg(windows)]
use platform::{DirBuilderExt, OpenOptionsExt};
use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::model::Event;

/// Where `portwatch record` keeps its journal unless told otherwise.
#[cfg(not(windows))]
pub const DEFAULT_DIR: &str = "/var/lib/portwatch";
#[cfg(windows)]
pub use platform::DEFAULT_DIR;

// Windows has no /proc, CLOCK_BOOTTIME or mode bits: its boot id, clock and
// no-op mode setters live beside this file.
#[cfg(windows)]
#[path = "windows.rs"]
mod platform;
#[cfg(windows)]
pub use platform::{boot_id, mono_ns};
/// The segment format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the segment header.
pub const HEADER_LEN: usize = 16;
/// Bytes before each payload: length and checksum.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload written or accepted; also bounds what a corrupt length can make the reader consider.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Smallest segment size a configuration may ask for.
pub const MIN_SEGMENT_BYTES: u64 = 1024;

const MAGIC: [u8; 8] = *b"PWJOURNL";
/// `{}` is the shortest JSON object; a zero length (as in a zero-filled tail) is never a frame.
const MIN_RECORD_BYTES: usize = 2;
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
const LOCK_FILE: &str = "lock";

/// One journaled event, with the boot it happened in and a clock that wall
/// time adjustments cannot reorder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `/proc/sys/kernel/random/boot_id` of the boot that saw the event.
    pub boot_id: String,
    /// CLOCK_BOOTTIME in ns (see [`mono_ns`]); only comparable within one boot.
    pub mono_ns: u64,
    pub event: Event,
    /// Set on what the recorder says about itself rather than an event the
    /// kernel reported (its start, stop, start-up snapshot, deletions):
    /// what a reader needs to know what the journal cannot have seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<Mark>,
}

impl Record {
    /// An event as the kernel reported it.
    pub fn event(boot_id: String, mono_ns: u64, event: Event) -> Self {
        Record {
            boot_id,
            mono_ns,
            event,
            mark: None,
        }
    }
}

/// What a marker record says; its event carries the time (and, for
/// [`Mark::Existing`], the socket and its owner).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Mark {
    /// The recorder attached at this time: nothing earlier in this boot,
    /// or since it last stopped, was recorded.
    Started,
    /// A socket that already existed when the recorder started, from its
    /// start-up snapshot: its ends and state, and its owner where known.
    Existing,
    /// The start-up snapshot is missing or partial (why): ports already
    /// taken then may be missing from the [`Mark::Existing`] records.
    SnapshotIncomplete { why: String },
    /// The recorder stopped cleanly (a crash leaves no such record).
    Stopped,
    /// This many of the oldest segments were deleted to stay under the
    /// size cap: what they held is gone.
    Deleted { segments: u64 },
}

/// When the writer forces data to stable storage. A kill -9 loses nothing
/// already written whatever the policy; this bounds what power loss can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fdatasync after every record: nothing acknowledged is lost, at a cost per record.
    Always,
    /// fdatasync on the first append (or [`JournalWriter::sync_if_due`]) once
    /// this long has passed since the last one.
    Interval(Duration),
    /// Leave it to the kernel (typically within 30 s).
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_secs(1))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// Cap on all segments together; the oldest are deleted to stay under it.
    pub max_total_bytes: u64,
    /// A segment is closed and a new one started before it would exceed this.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_total_bytes: 64 << 20,
            segment_bytes: 4 << 20,
            fsync: FsyncPolicy::default(),
        }
    }
}

impl JournalConfig {
    fn validate(&self) -> Result<(), JournalError> {
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(JournalError::Config(format!(
                "segment size {} is below the minimum of {MIN_SEGMENT_BYTES} bytes",
                self.segment_bytes
            )));
        }
        if self.max_total_bytes < self.segment_bytes {
            return Err(JournalError::Config(format!(
                "total size limit {} is smaller than one segment ({} bytes); raise the limit",
                self.max_total_bytes, self.segment_bytes
            )));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "permission denied trying to {action} {}: run as root, or pass --journal DIR \
         naming a directory you can {access}",
        path.display()
    )]
    PermissionDenied {
        action: &'static str,
        path: PathBuf,
        /// `read` for a reader, `write` for the recorder.
        access: &'static str,
    },
    #[error("{} is on a read-only filesystem: pass --journal DIR naming a writable directory", path.display())]
    ReadOnly { path: PathBuf },
    #[error(
        "no space left on the device holding {}: free some space, or lower the journal's size limit",
        path.display()
    )]
    NoSpace { path: PathBuf },
    #[error("{} exists and is not a directory: pass --journal DIR naming a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error(
        "no journal at {}: nothing was recorded there yet (run `portwatch record`), or pass \
         --journal DIR naming the directory it wrote",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error(
        "another portwatch is already writing the journal in {}: stop it, or pass --journal DIR \
         naming another directory",
        path.display()
    )]
    Locked { path: PathBuf },
    // The cause is part of the message and deliberately not a `source`:
    // error chains (`{:#}`) would print it twice.
    #[error("cannot {action} {}: {cause}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error(
        "record of {len} bytes is larger than the {max} bytes a journal record may take; \
         it was not written (a larger segment size allows up to {MAX_RECORD_BYTES})"
    )]
    RecordTooLarge { len: usize, max: usize },
    #[error("invalid journal configuration: {0}")]
    Config(String),
    #[error("cannot encode a journal record: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Maps a writer's I/O error to the variant that tells the user what to do.
fn io_err(action: &'static str, path: &Path, e: io::Error) -> JournalError {
    map_io_err(action, path, e, "write")
}

/// [`io_err`] for a reader: it needs to read the journal, not to write it.
fn read_err(action: &'static str, path: &Path, e: io::Error) -> JournalError {
    map_io_err(action, path, e, "read")
}

fn map_io_err(
    action: &'static str,
    path: &Path,
    e: io::Error,
    access: &'static str,
) -> JournalError {
    let path = path.to_path_buf();
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::PermissionDenied, _) => JournalError::PermissionDenied {
            action,
            path,
            access,
        },
        #[cfg(unix)]
        (_, Some(libc::EROFS)) => JournalError::ReadOnly { path },
        #[cfg(unix)]
        (_, Some(libc::ENOSPC)) | (_, Some(libc::EDQUOT)) => JournalError::NoSpace { path },
        (io::ErrorKind::ReadOnlyFilesystem, _) => JournalError::ReadOnly { path },
        (io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded, _) => {
            JournalError::NoSpace { path }
        }
        _ => JournalError::Io {
            action,
            path,
            cause: e,
        },
    }
}

/// A stretch of a segment the reader could not use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    /// Byte offset in the segment where the damage starts.
    pub offset: u64,
    pub what: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte {}: {}",
            self.segment.display(),
            self.offset,
            self.what
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadOutcome {
    /// Every intact record, oldest segment first, in write order.
    pub records: Vec<Record>,
    pub damage: Vec<Damage>,
}

/// The current boot's id, to tell boots apart in a journal that spans reboots.
#[cfg(not(windows))]
pub fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

/// CLOCK_BOOTTIME in ns: monotonic, counts suspend, and is the clock the
/// eBPF programs stamp events with (`bpf_ktime_get_boot_ns`).
#[cfg(not(windows))]
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_BOOTTIME exists on Linux >= 2.6.39.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

fn segment_name(seq: u64) -> String {
    format!("seg-{seq:020}.pwj")
}

const TMP_SUFFIX: &str = ".tmp";

/// The sequence number of a segment file name (or of its not yet renamed `.tmp`).
fn parse_segment_name(name: &str) -> Option<(u64, bool)> {
    let (name, tmp) = match name.strip_suffix(TMP_SUFFIX) {
        Some(base) => (base, true),
        None => (name, false),
    };
    let digits = name.strip_prefix("seg-")?.strip_suffix(".pwj")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, tmp))
}

/// Segment (and stale `.tmp`) files in `dir`, oldest first.
fn list_segments(dir: &Path) -> io::Result<Vec<(u64, bool, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some((seq, tmp)) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push((seq, tmp, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The header every segment starts with.
pub fn segment_header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = CRC32C.checksum(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Appends `rec` as one frame to `out`.
pub fn encode_frame(rec: &Record, out: &mut Vec<u8>) -> Result<(), JournalError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let payload_at = out.len();
    if let Err(e) = serde_json::to_writer(&mut *out, rec) {
        out.truncate(start);
        return Err(JournalError::Encode(e));
    }
    let len = out.len() - payload_at;
    if len > MAX_RECORD_BYTES {
        out.truncate(start);
        return Err(JournalError::RecordTooLarge {
            len,
            max: MAX_RECORD_BYTES,
        });
    }
    let crc = CRC32C.checksum(&out[payload_at..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..payload_at].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Reads every segment in `dir`, oldest first. Damaged content is reported
/// in [`ReadOutcome::damage`]; only an unusable directory is an error. While
/// a writer is running, a record it is writing at that moment can show up
/// as damage at the tail of the newest segment.
pub fn read_dir(dir: &Path) -> Result<ReadOutcome, JournalError> {
    let listed = list_segments(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => JournalError::NotFound {
            path: dir.to_path_buf(),
        },
        io::ErrorKind::NotADirectory => JournalError::NotADirectory {
            path: dir.to_path_buf(),
        },
        _ => read_err("list journal directory", dir, e),
    })?;
    let mut out = ReadOutcome::default();
    for (_, tmp, path) in listed {
        if tmp {
            continue;
        }
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            // Rotated away by a running writer since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(read_err("read journal segment", &path, e))
            }
            Err(e) => {
                out.damage.push(Damage {
                    segment: path,
                    offset: 0,
                    what: format!("cannot read the segment: {e}; skipped"),
                });
                continue;
            }
        };
        let scanned = scan(&bytes);
        out.records
            .extend(scanned.records.into_iter().map(|(_, rec)| rec));
        out.damage
            .extend(scanned.damage.into_iter().map(|(offset, what)| Damage {
                segment: path.clone(),
                offset,
                what,
            }));
    }
    Ok(out)
}

/// Decodes one segment's bytes: its intact records, and (offset, what) for
/// each damaged stretch. Never panics, whatever the input.
pub fn read_segment_bytes(bytes: &[u8]) -> (Vec<Record>, Vec<(u64, String)>) {
    let scanned = scan(bytes);
    (
        scanned.records.into_iter().map(|(_, rec)| rec).collect(),
        scanned.damage,
    )
}

/// Records with the offsets of their frames.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    pub records: Vec<(u64, Record)>,
    pub damage: Vec<(u64, String)>,
}

enum BadFrame {
    ShortHeader,
    Length(u32),
    PastEnd { len: usize, have: usize },
    Checksum,
}

impl fmt::Display for BadFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadFrame::ShortHeader => f.write_str(
                "incomplete record header at the end of the segment (the writer was interrupted)",
            ),
            BadFrame::Length(len) => write!(f, "implausible record length {len}"),
            BadFrame::PastEnd { len, have } => write!(
                f,
                "record of {len} bytes but only {have} left in the segment (the writer was \
                 interrupted while writing it, or the length is corrupt)"
            ),
            BadFrame::Checksum => f.write_str("record checksum mismatch"),
        }
    }
}

/// The payload range of the frame at `pos`, if it is intact.
fn frame_at(bytes: &[u8], pos: usize) -> Result<(usize, usize), BadFrame> {
    let payload = pos
        .checked_add(FRAME_HEADER_LEN)
        .ok_or(BadFrame::ShortHeader)?;
    let head = bytes.get(pos..payload).ok_or(BadFrame::ShortHeader)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let n = len as usize;
    if !(MIN_RECORD_BYTES..=MAX_RECORD_BYTES).contains(&n) {
        return Err(BadFrame::Length(len));
    }
    let have = bytes.len() - payload;
    if n > have {
        return Err(BadFrame::PastEnd { len: n, have });
    }
    let end = payload + n;
    if CRC32C.checksum(&bytes[payload..end]) != crc {
        return Err(BadFrame::Checksum);
    }
    Ok((payload, end))
}

/// The next offset from `from` where an intact frame starts.
fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    let last = bytes
        .len()
        .checked_sub(FRAME_HEADER_LEN + MIN_RECORD_BYTES)?;
    (from..=last).find(|&q| {
        // Cheap filters first, so only likely candidates pay for a checksum.
        bytes[q + 3] == 0 && bytes[q + FRAME_HEADER_LEN] == b'{' && frame_at(bytes, q).is_ok()
    })
}

pub(crate) fn scan(bytes: &[u8]) -> Scanned {
    let mut out = Scanned::default();
    if bytes.is_empty() {
        out.damage.push((
            0,
            "empty segment (the writer stopped while creating it)".to_owned(),
        ));
        return out;
    }
    let Some(header) = bytes.get(..HEADER_LEN) else {
        out.damage.push((
            0,
            format!(
                "segment header truncated to {} bytes; segment skipped",
                bytes.len()
            ),
        ));
        return out;
    };
    if header[..8] != MAGIC {
        out.damage.push((
            0,
            "not a portwatch journal segment (bad magic); segment skipped".to_owned(),
        ));
        return out;
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if CRC32C.checksum(&header[..12]) != crc {
        out.damage.push((
            0,
            "segment header checksum mismatch; segment skipped".to_owned(),
        ));
        return out;
    }
    if version != FORMAT_VERSION {
        out.damage.push((
            0,
            format!(
                "segment format version {version}, this portwatch reads version {FORMAT_VERSION}; \
                 segment skipped (a newer portwatch can read it)"
            ),
        ));
        return out;
    }

    let mut pos = HEADER_LEN;
    while pos < bytes.len() {
        match frame_at(bytes, pos) {
            Ok((payload, end)) => {
                match serde_json::from_slice::<Record>(&bytes[payload..end]) {
                    Ok(rec) => out.records.push((pos as u64, rec)),
                    Err(e) => out.damage.push((
                        pos as u64,
                        format!(
                            "intact record that does not decode ({e}); written by a newer portwatch?"
                        ),
                    )),
                }
                pos = end;
            }
            Err(bad) => match resync(bytes, pos + 1) {
                Some(next) => {
                    out.damage.push((
                        pos as u64,
                        format!(
                            "{bad}; skipped {} bytes to the next intact record",
                            next - pos
                        ),
                    ));
                    pos = next;
                }
                None => {
                    out.damage.push((
                        pos as u64,
                        format!(
                            "{bad}; the last {} bytes of the segment hold no intact record",
                            bytes.len() - pos
                        ),
                    ));
                    break;
                }
            },
        }
    }
    out
}

mod writer;
pub use writer::JournalWriter;

#[cfg(test)]
mod tests;
