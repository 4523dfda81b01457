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
    let seed = include_bytes!("../../fuzz/seeds/journal_reader/two_records");
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
