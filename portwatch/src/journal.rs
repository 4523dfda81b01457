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
#[path = "journal_windows.rs"]
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

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync directory", dir, e))
}

/// Creates segment `seq` under a temporary name and renames it into place
/// once its header is written, so no segment is ever seen without one.
fn create_segment(dir: &Path, seq: u64, sync: bool) -> Result<(File, PathBuf), JournalError> {
    let path = dir.join(segment_name(seq));
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", segment_name(seq)));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err("create journal segment", &tmp, e))?;
    // The umask may only clear bits; set the mode outright so it is exactly 0600.
    #[cfg(unix)]
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err("write journal segment", &tmp, e))?;
    file.write_all(&segment_header())
        .and_then(|()| if sync { file.sync_data() } else { Ok(()) })
        .map_err(|e| io_err("write journal segment", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io_err("rename journal segment", &tmp, e))?;
    if sync {
        sync_dir(dir)?;
    }
    Ok((file, path))
}

/// How long `open` waits for a previous writer to let go of the lock: a
/// restarted recorder can overlap the old one's exit, and a process that
/// forks briefly shares the lock with its child until that child execs.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// Takes the directory's writer lock (released by the kernel however the process ends).
fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err("open journal lock", &path, e))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // flock(LOCK_EX | LOCK_NB) on Unix, LockFileEx on Windows.
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock journal", &path, e)),
        }
        if Instant::now() >= deadline {
            return Err(JournalError::Locked {
                path: dir.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Appends records to a journal directory. One writer per directory.
pub struct JournalWriter {
    dir: PathBuf,
    cfg: JournalConfig,
    _lock: File,
    file: File,
    path: PathBuf,
    seq: u64,
    /// Bytes in the current segment.
    len: u64,
    /// A write failed part way: the next append starts a fresh segment.
    broken: bool,
    /// Older segments, oldest first, with their sizes.
    closed: VecDeque<(PathBuf, u64)>,
    closed_bytes: u64,
    unsynced: bool,
    last_sync: Instant,
    buf: Vec<u8>,
    /// Segments deleted for space and not yet reported by
    /// [`JournalWriter::take_deleted`].
    deleted: u64,
}

impl JournalWriter {
    /// Opens (creating it mode 0700 if needed) the journal in `dir` and starts
    /// a new segment. An existing directory keeps its mode: it may be shared
    /// (the files in it are 0600 regardless).
    pub fn open(dir: &Path, cfg: JournalConfig) -> Result<Self, JournalError> {
        cfg.validate()?;
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(JournalError::NotADirectory {
                    path: dir.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| io_err("create journal directory", dir, e))?;
                #[cfg(unix)]
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| io_err("create journal directory", dir, e))?;
            }
            Err(e) => return Err(io_err("open journal directory", dir, e)),
        }
        let lock = lock_dir(dir)?;
        let sync = cfg.fsync != FsyncPolicy::Never;

        let mut closed = VecDeque::new();
        let mut closed_bytes = 0;
        let mut next = 1;
        let listed = list_segments(dir).map_err(|e| io_err("list journal directory", dir, e))?;
        for (seq, tmp, path) in listed {
            next = next.max(seq.saturating_add(1));
            if tmp {
                // Left by a writer that died while creating it; holds only a header.
                let _ = fs::remove_file(&path);
                continue;
            }
            let size = fs::metadata(&path)
                .map_err(|e| io_err("inspect journal segment", &path, e))?
                .len();
            closed_bytes += size;
            closed.push_back((path, size));
        }
        let (file, path) = create_segment(dir, next, sync)?;
        let mut w = JournalWriter {
            dir: dir.to_path_buf(),
            cfg,
            _lock: lock,
            file,
            path,
            seq: next,
            len: HEADER_LEN as u64,
            broken: false,
            closed,
            closed_bytes,
            unsynced: false,
            last_sync: Instant::now(),
            buf: Vec::new(),
            deleted: 0,
        };
        w.make_room(0)?;
        Ok(w)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment being written.
    pub fn segment_path(&self) -> &Path {
        &self.path
    }

    /// Writes one record as a single write(2), rotating and trimming first as needed.
    pub fn append(&mut self, rec: &Record) -> Result<(), JournalError> {
        self.buf.clear();
        encode_frame(rec, &mut self.buf)?;
        let frame = self.buf.len() as u64;
        let room = self.cfg.segment_bytes - HEADER_LEN as u64;
        if frame > room {
            return Err(JournalError::RecordTooLarge {
                len: self.buf.len() - FRAME_HEADER_LEN,
                max: (room as usize).saturating_sub(FRAME_HEADER_LEN),
            });
        }
        if self.broken
            || (self.len > HEADER_LEN as u64 && self.len + frame > self.cfg.segment_bytes)
        {
            self.rotate()?;
        }
        // Trim before writing so that a crash never leaves the journal over its cap.
        self.make_room(frame)?;
        if let Err(e) = self.file.write_all(&self.buf) {
            self.broken = true;
            return Err(io_err("write journal segment", &self.path, e));
        }
        self.len += frame;
        self.unsynced = true;
        match self.cfg.fsync {
            FsyncPolicy::Always => self.sync(),
            FsyncPolicy::Interval(_) => self.sync_if_due(),
            FsyncPolicy::Never => Ok(()),
        }
    }

    /// How many of the oldest segments were deleted for space since the
    /// last call: the recorder journals it, so that readers know what is gone.
    pub fn take_deleted(&mut self) -> u64 {
        std::mem::take(&mut self.deleted)
    }

    /// Forces what was appended to stable storage, whatever the policy.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if self.unsynced {
            self.file
                .sync_data()
                .map_err(|e| io_err("sync journal segment", &self.path, e))?;
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Under [`FsyncPolicy::Interval`], syncs if the interval has passed. A
    /// recorder calls this on a timer so a quiet spell does not leave the
    /// last records unsynced indefinitely.
    pub fn sync_if_due(&mut self) -> Result<(), JournalError> {
        match self.cfg.fsync {
            FsyncPolicy::Interval(every) if self.unsynced && self.last_sync.elapsed() >= every => {
                self.sync()
            }
            _ => Ok(()),
        }
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        let sync = self.cfg.fsync != FsyncPolicy::Never;
        if sync && !self.broken {
            self.sync()?;
        }
        let next = self.seq.saturating_add(1);
        let (file, path) = create_segment(&self.dir, next, sync)?;
        let old_file = std::mem::replace(&mut self.file, file);
        let old_path = std::mem::replace(&mut self.path, path);
        // After a failed write the counted length is a guess; ask the file.
        let old_len = if self.broken {
            old_file.metadata().map(|m| m.len()).unwrap_or(self.len)
        } else {
            self.len
        };
        self.closed.push_back((old_path, old_len));
        self.closed_bytes += old_len;
        self.seq = next;
        self.len = HEADER_LEN as u64;
        self.broken = false;
        self.unsynced = false;
        Ok(())
    }

    /// Deletes the oldest segments until `extra` more bytes fit under the cap.
    fn make_room(&mut self, extra: u64) -> Result<(), JournalError> {
        let mut deleted = false;
        while self.closed_bytes + self.len + extra > self.cfg.max_total_bytes {
            let Some((path, size)) = self.closed.pop_front() else {
                break;
            };
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.closed.push_front((path.clone(), size));
                    return Err(io_err("delete old journal segment", &path, e));
                }
            }
            self.closed_bytes -= size;
            self.deleted += 1;
            deleted = true;
        }
        if deleted && self.cfg.fsync != FsyncPolicy::Never {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        if self.cfg.fsync != FsyncPolicy::Never {
            let _ = self.sync();
        }
    }
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::model::{Attribution, EventKind, Holder, Protocol, TcpState};

    fn sample(i: u64, pad: usize) -> Record {
        let mut event = Event::new(
            1_763_900_000_000_000_000 + i as i128 * 1_000,
            EventKind::Bind,
        );
        event.pid = Some(1000 + i as u32);
        event.comm = Some("nginx-wörker".into());
        event.protocol = Some(Protocol::Tcp);
        event.saddr = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
        event.sport = Some(8080);
        event.set_ret(-98);
        event.attribution = Attribution::Current;
        if i.is_multiple_of(3) {
            event.holder = Some(Box::new(Holder {
                pid: Some(42),
                comm: Some("old\"server\n".to_owned()),
                state: Some(TcpState::TimeWait),
                protocol: Some(Protocol::Tcp),
                saddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                sport: 8080,
                daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                dport: 51000,
            }));
        }
        event.cmdline = Some(format!("/usr/sbin/nginx -g {}", "x".repeat(pad)).into());
        Record::event("0b4c3f2e-1111-4222-8333-944445555666".to_owned(), i, event)
    }

    fn small(segment_bytes: u64, max_total_bytes: u64) -> JournalConfig {
        JournalConfig {
            max_total_bytes,
            segment_bytes,
            fsync: FsyncPolicy::Never,
        }
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir)
            .unwrap()
            .into_iter()
            .filter(|(_, tmp, _)| !tmp)
            .map(|(_, _, p)| p)
            .collect()
    }

    /// Writes `recs` into a fresh journal and returns its single segment's bytes.
    fn one_segment(recs: &[Record]) -> Vec<u8> {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(tmp.path(), small(1 << 20, 1 << 20)).unwrap();
        for r in recs {
            w.append(r).unwrap();
        }
        let segs = segments(tmp.path());
        assert_eq!(segs.len(), 1);
        fs::read(&segs[0]).unwrap()
    }

    fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
        scan(bytes)
            .records
            .iter()
            .map(|(o, _)| *o as usize)
            .collect()
    }

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("journal");
        let recs: Vec<_> = (0..200)
            .map(|i| sample(i, (i as usize * 37) % 500))
            .collect();
        {
            let mut w = JournalWriter::open(&dir, JournalConfig::default()).unwrap();
            for r in &recs {
                w.append(r).unwrap();
            }
            w.sync().unwrap();
        }
        let out = read_dir(&dir).unwrap();
        assert_eq!(out.damage, vec![]);
        assert_eq!(out.records, recs);
        // The pure reader agrees with the directory reader.
        let (pure, damage) = read_segment_bytes(&fs::read(&segments(&dir)[0]).unwrap());
        assert_eq!(pure, recs);
        assert!(damage.is_empty());
    }

    #[test]
    fn reopening_starts_a_new_segment_and_leaves_a_torn_tail_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let recs: Vec<_> = (0..6).map(|i| sample(i, 10)).collect();
        {
            let mut w = JournalWriter::open(dir, small(4096, 1 << 20)).unwrap();
            for r in &recs[..3] {
                w.append(r).unwrap();
            }
        }
        // A crash mid-frame leaves a torn tail in the first segment.
        let first = segments(dir)[0].clone();
        let mut torn = fs::read(&first).unwrap();
        torn.extend_from_slice(&[0x30, 0x01, 0x00]);
        fs::write(&first, &torn).unwrap();
        {
            let mut w = JournalWriter::open(dir, small(4096, 1 << 20)).unwrap();
            assert_ne!(w.segment_path(), first.as_path());
            for r in &recs[3..] {
                w.append(r).unwrap();
            }
        }
        assert_eq!(fs::read(&first).unwrap(), torn, "old segment was modified");
        assert_eq!(segments(dir).len(), 2);
        let out = read_dir(dir).unwrap();
        assert_eq!(out.records, recs);
        assert_eq!(out.damage.len(), 1, "{:?}", out.damage);
        assert_eq!(out.damage[0].segment, first);
        assert_eq!(out.damage[0].offset, torn.len() as u64 - 3);
    }

    #[test]
    fn rotation_keeps_total_under_cap_and_drops_oldest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (seg, cap) = (4096, 16384);
        let mut w = JournalWriter::open(dir, small(seg, cap)).unwrap();
        let n = 300;
        let mut deleted = 0;
        for i in 0..n {
            w.append(&sample(i, (i as usize * 13) % 400)).unwrap();
            deleted += w.take_deleted();
            let sizes: Vec<u64> = segments(dir)
                .iter()
                .map(|p| fs::metadata(p).unwrap().len())
                .collect();
            assert!(sizes.iter().sum::<u64>() <= cap, "over cap: {sizes:?}");
            assert!(sizes.iter().all(|s| *s <= seg), "oversized: {sizes:?}");
        }
        // Every deletion is reported once, for the recorder to journal.
        let kept = segments(dir).len() as u64;
        let created = parse_segment_name(&w.segment_path().file_name().unwrap().to_string_lossy())
            .unwrap()
            .0;
        assert_eq!(deleted, created - kept);
        assert!(deleted > 0);
        assert_eq!(w.take_deleted(), 0);
        drop(w);
        assert!(segments(dir).len() >= 3);
        let out = read_dir(dir).unwrap();
        assert_eq!(out.damage, vec![]);
        let first = out.records[0].mono_ns;
        assert!(first > 0, "oldest records were not dropped");
        let expected: Vec<_> = (first..n)
            .map(|i| sample(i, (i as usize * 13) % 400))
            .collect();
        assert_eq!(out.records, expected);
        // Reopening counts the existing segments against the cap too.
        let mut w = JournalWriter::open(dir, small(seg, cap)).unwrap();
        w.append(&sample(n, 0)).unwrap();
        let total: u64 = segments(dir)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert!(total <= cap);
    }

    #[test]
    fn truncation_anywhere_in_the_last_frame_loses_only_that_record() {
        let recs: Vec<_> = (0..3).map(|i| sample(i, 50)).collect();
        let bytes = one_segment(&recs);
        let last = frame_offsets(&bytes)[2];
        for cut in last..bytes.len() {
            let (got, damage) = read_segment_bytes(&bytes[..cut]);
            assert_eq!(got, recs[..2], "cut at {cut}");
            if cut == last {
                assert!(damage.is_empty(), "cut at a frame boundary: {damage:?}");
            } else {
                assert_eq!(damage.len(), 1, "cut at {cut}: {damage:?}");
                assert_eq!(damage[0].0, last as u64);
            }
        }
        // A header cut short is reported, not fatal.
        for cut in 0..HEADER_LEN {
            let (got, damage) = read_segment_bytes(&bytes[..cut]);
            assert!(got.is_empty());
            assert_eq!(damage.len(), 1);
        }
        // The same through the filesystem.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(segment_name(1));
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let out = read_dir(tmp.path()).unwrap();
        assert_eq!(out.records, recs[..2]);
        assert_eq!(out.damage.len(), 1);
        assert_eq!(out.damage[0].offset, last as u64);
    }

    #[test]
    fn corrupting_the_middle_frame_loses_only_it_and_the_reader_resyncs() {
        let recs: Vec<_> = (0..3).map(|i| sample(i, 40)).collect();
        let bytes = one_segment(&recs);
        let offs = frame_offsets(&bytes);
        let (start, end) = (offs[1], offs[2]);
        for i in start..end {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= mask;
                let (got, damage) = read_segment_bytes(&b);
                assert_eq!(
                    got,
                    [recs[0].clone(), recs[2].clone()],
                    "byte {i} ^ {mask:#x}"
                );
                assert_eq!(damage.len(), 1, "byte {i} ^ {mask:#x}: {damage:?}");
                assert_eq!(damage[0].0, start as u64);
            }
        }
    }

    #[test]
    fn damage_across_two_frames_is_one_stretch_and_later_records_survive() {
        let recs: Vec<_> = (0..5).map(|i| sample(i, 40)).collect();
        let mut bytes = one_segment(&recs);
        let offs = frame_offsets(&bytes);
        // From the middle of record 1 to the middle of record 2's header.
        bytes[offs[2] - 20..offs[2] + 4].fill(0);
        let (got, damage) = read_segment_bytes(&bytes);
        assert_eq!(got, [recs[0].clone(), recs[3].clone(), recs[4].clone()]);
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(damage[0].0, offs[1] as u64);
    }

    #[test]
    fn zero_filled_tail_after_power_loss_is_reported_at_the_tail() {
        let recs: Vec<_> = (0..4).map(|i| sample(i, 5)).collect();
        let mut bytes = one_segment(&recs);
        let end = bytes.len();
        bytes.resize(end + 4096, 0);
        let (got, damage) = read_segment_bytes(&bytes);
        assert_eq!(got, recs);
        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].0, end as u64);
    }

    #[test]
    fn segment_with_garbage_header_is_reported_and_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let recs: Vec<_> = (0..4).map(|i| sample(i, 5)).collect();
        for half in recs.chunks(2) {
            let mut w = JournalWriter::open(dir, small(4096, 1 << 20)).unwrap();
            for r in half {
                w.append(r).unwrap();
            }
        }
        let segs = segments(dir);
        assert_eq!(segs.len(), 2);
        let mut bytes = fs::read(&segs[0]).unwrap();
        bytes[..HEADER_LEN].copy_from_slice(b"GARBAGE GARBAGE!");
        fs::write(&segs[0], &bytes).unwrap();
        // Files that are not segments are none of the reader's business.
        fs::write(dir.join("notes.txt"), "hello").unwrap();
        fs::write(dir.join(format!("{}.tmp", segment_name(99))), "partial").unwrap();

        let out = read_dir(dir).unwrap();
        assert_eq!(out.records, recs[2..]);
        assert_eq!(out.damage.len(), 1, "{:?}", out.damage);
        assert_eq!(out.damage[0].segment, segs[0]);
        assert_eq!(out.damage[0].offset, 0);
        assert!(out.damage[0].what.contains("bad magic"));
    }

    #[test]
    fn header_checksum_and_version_are_checked() {
        let recs = [sample(1, 1)];
        let good = one_segment(&recs);
        let mut flipped = good.clone();
        flipped[8] ^= 1;
        let (got, damage) = read_segment_bytes(&flipped);
        assert!(got.is_empty());
        assert!(damage[0].1.contains("header checksum"), "{damage:?}");

        let mut newer = good.clone();
        newer[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = CRC32C.checksum(&newer[..12]);
        newer[12..16].copy_from_slice(&crc.to_le_bytes());
        let (got, damage) = read_segment_bytes(&newer);
        assert!(got.is_empty());
        assert!(damage[0].1.contains("version 2"), "{damage:?}");
    }

    #[test]
    fn intact_frame_that_does_not_decode_is_reported_and_skipped() {
        let recs: Vec<_> = (0..2).map(|i| sample(i, 1)).collect();
        let mut bytes = one_segment(&recs[..1]);
        let odd = br#"{"boot_id":7}"#;
        bytes.extend_from_slice(&(odd.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&CRC32C.checksum(odd).to_le_bytes());
        bytes.extend_from_slice(odd);
        let at = bytes.len();
        encode_frame(&recs[1], &mut bytes).unwrap();
        let (got, damage) = read_segment_bytes(&bytes);
        assert_eq!(got, recs);
        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].0, at as u64 - 8 - odd.len() as u64);
        assert!(damage[0].1.contains("does not decode"));
    }

    /// The fuzz seed was framed by an independent (Python) encoder from the
    /// format description above, so this pins the on-disk format itself.
    #[test]
    fn reads_a_segment_framed_from_the_format_description() {
        let seed = include_bytes!("../fuzz/seeds/journal_reader/two_records");
        let (got, damage) = read_segment_bytes(seed);
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].mono_ns, 1);
        assert_eq!(got[0].event.errno.as_deref(), Some("EADDRINUSE"));
        assert_eq!(got[1].event.lost, Some(3));
        // And this writer's header is byte for byte the one described.
        assert_eq!(seed[..HEADER_LEN], segment_header());
    }

    #[test]
    fn files_are_0600_in_a_0700_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("var/lib/portwatch");
        let mut w = JournalWriter::open(&dir, small(4096, 1 << 20)).unwrap();
        for i in 0..30 {
            w.append(&sample(i, 100)).unwrap();
        }
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        let segs = segments(&dir);
        assert!(segs.len() > 1);
        for p in segs.iter().chain([&dir.join(LOCK_FILE)]) {
            assert_eq!(mode(p), 0o600, "{}", p.display());
        }
    }

    #[test]
    fn one_writer_per_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let w = JournalWriter::open(tmp.path(), JournalConfig::default()).unwrap();
        let second = JournalWriter::open(tmp.path(), JournalConfig::default());
        assert!(matches!(second, Err(JournalError::Locked { .. })));
        drop(w);
        JournalWriter::open(tmp.path(), JournalConfig::default()).unwrap();
    }

    #[test]
    fn bad_configs_and_oversized_records_are_refused_without_harm() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for cfg in [small(100, 1 << 20), small(8192, 4096)] {
            let e = JournalWriter::open(dir, cfg).err();
            assert!(matches!(e, Some(JournalError::Config(_))), "{e:?}");
        }
        let mut w = JournalWriter::open(dir, small(4096, 1 << 20)).unwrap();
        let e = w.append(&sample(0, 5000)).err();
        assert!(
            matches!(e, Some(JournalError::RecordTooLarge { max, .. }) if max < 4096),
            "{e:?}"
        );
        let e = JournalWriter::open(&dir.join("big"), JournalConfig::default())
            .unwrap()
            .append(&sample(0, MAX_RECORD_BYTES))
            .err();
        assert!(
            matches!(
                e,
                Some(JournalError::RecordTooLarge {
                    max: MAX_RECORD_BYTES,
                    ..
                })
            ),
            "{e:?}"
        );
        w.append(&sample(1, 5)).unwrap();
        drop(w);
        let out = read_dir(dir).unwrap();
        assert_eq!(out.records, [sample(1, 5)]);
        assert!(out.damage.is_empty());
    }

    #[test]
    fn errors_tell_the_user_what_to_do() {
        let denied = io_err(
            "create journal directory",
            Path::new(DEFAULT_DIR),
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        let msg = denied.to_string();
        assert!(
            msg.contains(DEFAULT_DIR) && msg.contains("run as root"),
            "{msg}"
        );
        assert!(msg.contains("--journal DIR"), "{msg}");
        assert!(msg.ends_with("a directory you can write"), "{msg}");
        let unreadable = read_err(
            "list journal directory",
            Path::new(DEFAULT_DIR),
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(
            unreadable.to_string().ends_with("a directory you can read"),
            "{unreadable}"
        );
        // The cause is said once, also through an error chain.
        let gone = io_err(
            "create journal directory",
            Path::new("/proc/foo"),
            io::Error::from_raw_os_error(libc::ENOENT),
        );
        let chain = format!("{:#}", anyhow::Error::new(gone));
        assert_eq!(chain.matches("os error 2").count(), 1, "{chain}");

        let tmp = tempfile::tempdir().unwrap();
        let missing = read_dir(&tmp.path().join("nope")).err();
        assert!(
            matches!(missing, Some(JournalError::NotFound { .. })),
            "{missing:?}"
        );
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        let e = JournalWriter::open(&file, JournalConfig::default()).err();
        assert!(
            matches!(e, Some(JournalError::NotADirectory { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn reader_survives_random_damage() {
        let recs: Vec<_> = (0..6).map(|i| sample(i, (i as usize * 11) % 60)).collect();
        let good = one_segment(&recs);
        // xorshift: deterministic, no extra dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..(next() % 6) {
                let i = (next() as usize) % b.len();
                match next() % 3 {
                    0 => b[i] ^= next() as u8 | 1,
                    1 => b.truncate(i.max(1)),
                    _ => {
                        let junk: Vec<u8> = (0..next() % 40).map(|_| next() as u8).collect();
                        b.splice(i..i, junk);
                    }
                }
            }
            let (got, damage) = read_segment_bytes(&b);
            for r in &got {
                assert!(recs.contains(r), "invented a record: {r:?}");
            }
            assert!(damage.iter().all(|(o, _)| *o <= b.len() as u64));
            if b == good {
                assert_eq!(got, recs);
            }
        }
    }

    const KILL9_ENV: &str = "PORTWATCH_JOURNAL_KILL9_DIR";
    const KILL9_RUN_ENV: &str = "PORTWATCH_JOURNAL_KILL9_RUN";
    /// Record numbers of run `r` start at `r * KILL9_RUN_STRIDE`.
    const KILL9_RUN_STRIDE: u64 = 1_000_000;

    fn kill9_record(i: u64) -> Record {
        // Every fifth record spans many pages, so SIGKILL can land inside its write(2).
        sample(
            i,
            if i.is_multiple_of(5) {
                200_000
            } else {
                (i % 97) as usize
            },
        )
    }

    /// The writer half of `kill9_mid_write_*`: a no-op unless that test runs it.
    #[test]
    fn kill9_child_writer() {
        let Some(dir) = std::env::var_os(KILL9_ENV) else {
            return;
        };
        let run: u64 = std::env::var(KILL9_RUN_ENV)
            .expect("child: run number")
            .parse()
            .expect("child: run number");
        // A cap below what three runs write, so rotation deletes under the kills too.
        let cfg = small(1 << 20, 6 << 20);
        let mut w = JournalWriter::open(Path::new(&dir), cfg).expect("child: open");
        for i in run * KILL9_RUN_STRIDE.. {
            w.append(&kill9_record(i)).expect("child: append");
        }
    }

    /// A writer killed three times over (as a crash-looping recorder would be)
    /// leaves a journal whose every record is intact and in order, with
    /// damage only at the tail of a segment that was being written.
    #[test]
    fn kill9_mid_write_loses_at_most_the_record_being_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("journal");
        let test = module_path!()
            .split_once("::")
            .map_or("", |(_, rest)| rest)
            .to_owned()
            + "::kill9_child_writer";
        let runs = 3;
        for run in 0..runs {
            let before = newest_seq(&dir);
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
                .env(KILL9_ENV, &dir)
                .env(KILL9_RUN_ENV, run.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Count the 200 ms from when the child is writing, not starting up.
            let deadline = Instant::now() + Duration::from_secs(20);
            while newest_seq(&dir) <= before {
                if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                    let _ = child.kill();
                    panic!("the writer child never started writing");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(200));
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "child ended on its own"
            );
        }

        let out = read_dir(&dir).unwrap();
        assert!(out.records.len() > 10, "only {} records", out.records.len());
        // Each run's records are a gapless sequence; runs follow one another.
        let mut prev: Option<u64> = None;
        let mut run_starts = 0;
        for r in &out.records {
            let i = r.mono_ns;
            let same_run = prev.is_some_and(|p| p / KILL9_RUN_STRIDE == i / KILL9_RUN_STRIDE);
            if same_run {
                assert_eq!(Some(i), prev.map(|p| p + 1), "gap or reorder");
            } else {
                assert!(prev.is_none_or(|p| p < i), "runs out of order");
                run_starts += 1;
            }
            assert!(*r == kill9_record(i), "record {i} differs");
            prev = Some(i);
        }
        let last_run = out.records.last().map(|r| r.mono_ns / KILL9_RUN_STRIDE);
        assert_eq!(last_run, Some(runs - 1), "the last run wrote nothing");
        // Damage only at the tail of the segment a run was writing when killed.
        let segs = segments(&dir);
        let mut damaged = 0;
        for d in &out.damage {
            let at = segs.iter().position(|s| *s == d.segment).unwrap();
            let here = scan(&fs::read(&segs[at]).unwrap());
            assert_eq!(here.damage.len(), 1, "{:?}", here.damage);
            assert!(
                here.records.last().is_none_or(|(o, _)| d.offset > *o),
                "damage before the last record: {d}"
            );
            let run_of =
                |recs: &[(u64, Record)]| recs.last().map(|(_, r)| r.mono_ns / KILL9_RUN_STRIDE);
            if let Some(next) = segs.get(at + 1) {
                let next = scan(&fs::read(next).unwrap());
                let next_run = next
                    .records
                    .first()
                    .map(|(_, r)| r.mono_ns / KILL9_RUN_STRIDE);
                assert!(
                    run_of(&here.records).is_none() || next_run > run_of(&here.records),
                    "the run went on writing after damage: {d}"
                );
            }
            damaged += 1;
        }
        assert!(damaged <= runs);
        eprintln!(
            "kill -9 x{runs}: {} records from {run_starts} runs kept (from #{}) in {} segments, torn tails: {}",
            out.records.len(),
            out.records[0].mono_ns,
            segs.len(),
            out.damage.len()
        );
    }

    /// The sequence number of the newest segment, 0 if none (or no directory yet).
    fn newest_seq(dir: &Path) -> u64 {
        list_segments(dir)
            .ok()
            .and_then(|l| {
                l.into_iter()
                    .filter(|(_, tmp, _)| !tmp)
                    .map(|(s, _, _)| s)
                    .max()
            })
            .unwrap_or(0)
    }
}
