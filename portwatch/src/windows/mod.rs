//! portwatch on Windows, beyond the ETW collector (src/source/windows):
//! `who` from the IP Helper tables, `doctor` and `reserve` over the dynamic
//! port range, excluded ranges and the TCP registry parameters, and boot
//! capture through an ETW AutoLogger.
//!
//! Each piece is split the same way: what can be computed from data (table
//! rows, `netsh` output, registry values, the AutoLogger's registry plan)
//! is a pure function here, built and unit-tested on every platform; the
//! system calls that fetch the data are in [`sys`], built only on Windows.

pub mod autologger;
pub mod doctor;
pub mod history;
pub mod netsh;
pub mod reserve;
pub mod tables;
pub mod who;

#[cfg(windows)]
pub mod cmd;
#[cfg(windows)]
pub mod sys;

/// Windows has no boot id: the boot's start time (now minus the time since
/// boot) names the boot, as `boot-<unix seconds, rounded to 10 s>`; the
/// rounding absorbs the jitter between reading the two clocks.
pub fn boot_id_from(now_ns: i128, uptime_ns: i128) -> String {
    let boot_s = (now_ns - uptime_ns).div_euclid(1_000_000_000);
    format!("boot-{}", (boot_s + 5).div_euclid(10) * 10)
}

/// Text from the system (process names, service names, command output) as
/// it may be shown on a terminal: control characters escaped.
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
            if c.is_control() {
                Box::new(c.escape_default())
            } else {
                Box::new(std::iter::once(c))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_ids_are_stable_across_clock_jitter() {
        let s = 1_000_000_000i128;
        let a = boot_id_from(1_700_000_000 * s, 3_600 * s);
        let b = boot_id_from(1_700_000_002 * s + 7, 3_601 * s);
        assert_eq!(a, b);
        assert_eq!(a, "boot-1699996400");
        assert_ne!(a, boot_id_from(1_700_000_000 * s, 60 * s));
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(printable("svc\x1b[31m\n"), "svc\\u{1b}[31m\\n");
        assert_eq!(printable("sqlservr.exe"), "sqlservr.exe");
    }
}
