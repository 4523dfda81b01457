//! The journal's writer: segments created whole, appends as single
//! writes, rotation, and trimming to the size cap (oldest segments first).

use super::*;

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
