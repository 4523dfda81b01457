//! Boot capture on Windows: an ETW AutoLogger session, which Windows starts
//! early in boot (before services) from registry values under
//! `HKLM\SYSTEM\CurrentControlSet\Control\WMI\Autologger\<name>`
//! (documented in "Configuring and Starting an AutoLogger Session"). It
//! writes Microsoft-Windows-TCPIP (see [`BOOT_PROVIDERS`]) to an .etl file that
//! `portwatch history` reads. [`plan`] is pure: the values, and the exact
//! `reg add` commands `--dry-run` prints and the install runs.

use crate::source::windows::Provider;

pub const SESSION: &str = "portwatch-boot";
/// The session's own GUID (any fixed GUID names it).
pub const SESSION_GUID: &str = "{6E5A3A4C-9E26-4C1E-9A53-5F2B1C0D7A11}";
pub const AUTOLOGGER_KEY: &str = r"HKLM\SYSTEM\CurrentControlSet\Control\WMI\Autologger";
/// TRACE_LEVEL_INFORMATION: lifecycle events, not the per-packet verbose ones.
pub const LEVEL: u32 = 4;
/// EVENT_TRACE_FILE_MODE_CIRCULAR: the newest events win when the file is full.
pub const LOG_FILE_MODE: u32 = 0x0000_0002;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegData {
    Dword(u32),
    Qword(u64),
    Sz(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegWrite {
    /// Full key path, `HKLM\...`.
    pub key: String,
    pub name: &'static str,
    pub data: RegData,
}

impl RegWrite {
    /// The `reg.exe` arguments that make this write.
    pub fn reg_args(&self) -> Vec<String> {
        let (t, d) = match &self.data {
            RegData::Dword(v) => ("REG_DWORD", v.to_string()),
            RegData::Qword(v) => ("REG_QWORD", format!("0x{v:x}")),
            RegData::Sz(s) => ("REG_SZ", s.clone()),
        };
        vec![
            "add".into(),
            self.key.clone(),
            "/v".into(),
            self.name.into(),
            "/t".into(),
            t.into(),
            "/d".into(),
            d,
            "/f".into(),
        ]
    }

    /// The same as one command line to paste into an elevated prompt.
    pub fn command(&self) -> String {
        self.reg_args()
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("\"{a}\"")
                } else {
                    a.clone()
                }
            })
            .fold("reg".to_owned(), |acc, a| acc + " " + &a)
    }
}

/// Only TCPIP at boot: it names the first taker of a port (TCB states and
/// TcpConnectTcbComplete for an ephemeral port, TcpListenerBindFailedPort
/// for the service that lost it). Kernel-Network and AFD log per-packet and
/// per-call data events under the same keywords and level as the ones
/// portwatch wants, and an AutoLogger cannot be given the event-id filter
/// the live session uses: they would fill the circular file and push the
/// boot's first minutes out of it.
pub const BOOT_PROVIDERS: [Provider; 1] = [Provider::Tcpip];

/// The registry values of the AutoLogger writing to `etl` (at most
/// `max_mb` MiB, circular).
pub fn plan(etl: &str, max_mb: u32) -> Vec<RegWrite> {
    let key = format!(r"{AUTOLOGGER_KEY}\{SESSION}");
    let w = |name, data| RegWrite {
        key: key.clone(),
        name,
        data,
    };
    let mut out = vec![
        w("Start", RegData::Dword(1)),
        w("Guid", RegData::Sz(SESSION_GUID.into())),
        w("FileName", RegData::Sz(etl.into())),
        w("LogFileMode", RegData::Dword(LOG_FILE_MODE)),
        w("MaxFileSize", RegData::Dword(max_mb)),
        // 64 KiB buffers, at least 32 of them: boot is a burst.
        w("BufferSize", RegData::Dword(64)),
        w("MinimumBuffers", RegData::Dword(32)),
        w("MaximumBuffers", RegData::Dword(128)),
        w("FlushTimer", RegData::Dword(1)),
        // 2 = system time, so timestamps are wall-clock FILETIMEs.
        w("ClockType", RegData::Dword(2)),
    ];
    for p in BOOT_PROVIDERS {
        let pkey = format!(r"{key}\{}", p.guid());
        let pw = |name, data| RegWrite {
            key: pkey.clone(),
            name,
            data,
        };
        out.push(pw("Enabled", RegData::Dword(1)));
        out.push(pw("EnableLevel", RegData::Dword(LEVEL)));
        out.push(pw("MatchAnyKeyword", RegData::Qword(p.keywords())));
    }
    out
}

/// What removes it again.
pub fn uninstall_command() -> String {
    format!(r"reg delete {AUTOLOGGER_KEY}\{SESSION} /f")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_and_tcpip_are_configured() {
        let p = plan(r"C:\ProgramData\portwatch\portwatch.etl", 64);
        let get = |key_end: &str, name: &str| {
            p.iter()
                .find(|w| w.key.ends_with(key_end) && w.name == name)
                .map(|w| w.data.clone())
        };
        assert_eq!(get(SESSION, "Start"), Some(RegData::Dword(1)));
        assert_eq!(
            get(SESSION, "FileName"),
            Some(RegData::Sz(
                r"C:\ProgramData\portwatch\portwatch.etl".into()
            ))
        );
        let tcpip = Provider::Tcpip;
        assert_eq!(get(tcpip.guid(), "Enabled"), Some(RegData::Dword(1)));
        assert_eq!(
            get(tcpip.guid(), "MatchAnyKeyword"),
            Some(RegData::Qword(tcpip.keywords()))
        );
        // No provider whose data events would crowd the boot out of the file.
        for noisy in [Provider::KernelNetwork, Provider::WinsockAfd] {
            assert_eq!(get(noisy.guid(), "Enabled"), None);
        }
        // TCPIP without the send/receive paths.
        assert_eq!(Provider::Tcpip.keywords() & 0x3_0000_0000, 0);
    }

    #[test]
    fn commands_are_exact_and_quoted() {
        let p = plan(r"C:\Program Data\pw.etl", 8);
        let file = p.iter().find(|w| w.name == "FileName").unwrap();
        assert_eq!(
            file.command(),
            r#"reg add HKLM\SYSTEM\CurrentControlSet\Control\WMI\Autologger\portwatch-boot /v FileName /t REG_SZ /d "C:\Program Data\pw.etl" /f"#
        );
        let kw = p.iter().find(|w| w.name == "MatchAnyKeyword").unwrap();
        assert!(
            kw.command().contains("/t REG_QWORD /d 0x"),
            "{}",
            kw.command()
        );
        assert!(uninstall_command().ends_with(r"Autologger\portwatch-boot /f"));
    }
}
