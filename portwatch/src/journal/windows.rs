//! What the journal needs from Windows that Linux gets from /proc and
//! clock_gettime: the boot's identity, a monotonic clock, and no-op stand-ins
//! for the Unix mode setters (the journal folder under %ProgramData%
//! inherits its ACL, which admits Administrators and SYSTEM).

use std::io;

/// Where `record`/`history` keep the journal unless told otherwise.
pub const DEFAULT_DIR: &str = r"C:\ProgramData\portwatch";

/// Windows has no boot id; the boot's start time (now minus the time since
/// boot, to the second) names the boot as well, and is stable across calls.
pub fn boot_id() -> io::Result<String> {
    let now = crate::timefmt::now_ns();
    let up = i128::from(mono_ns());
    Ok(crate::windows::boot_id_from(now, up))
}

/// Nanoseconds since boot, counting sleep (GetTickCount64 is in ms).
pub fn mono_ns() -> u64 {
    // SAFETY: no arguments, cannot fail.
    let ms = unsafe { windows_sys::Win32::System::SystemInformation::GetTickCount64() };
    ms.saturating_mul(1_000_000)
}

/// `OpenOptionsExt::mode` has no meaning on Windows; ACLs are inherited.
pub trait OpenOptionsExt {
    fn mode(&mut self, mode: u32) -> &mut Self;
}

impl OpenOptionsExt for std::fs::OpenOptions {
    fn mode(&mut self, _mode: u32) -> &mut Self {
        self
    }
}

/// `DirBuilderExt::mode`, likewise.
pub trait DirBuilderExt {
    fn mode(&mut self, mode: u32) -> &mut Self;
}

impl DirBuilderExt for std::fs::DirBuilder {
    fn mode(&mut self, _mode: u32) -> &mut Self {
        self
    }
}
