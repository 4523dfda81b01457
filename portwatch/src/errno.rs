//! errno names for the values bind() and connect() return, from `nix`'s
//! `Errno` (the C library's numbering for the target, which is what the
//! kernel returns on it); the Windows collector maps WSA codes onto these
//! names.

use std::sync::OnceLock;

/// The errno numbering of the model: Linux's. On Linux it comes from
/// `nix`; elsewhere (the Windows collector maps WSA codes onto these names)
/// from the few socket-call errors, numbered as asm-generic/errno*.h does.
#[cfg(target_os = "linux")]
mod numbering {
    use nix::errno::Errno;

    pub const EADDRINUSE: i32 = Errno::EADDRINUSE as i32;
    pub const EADDRNOTAVAIL: i32 = Errno::EADDRNOTAVAIL as i32;
    pub const EINPROGRESS: i32 = Errno::EINPROGRESS as i32;

    /// Every errno this target knows, with the name `nix` spells.
    pub fn all() -> Vec<(i32, String)> {
        (1..4096)
            .map(|n| (n, Errno::from_raw(n)))
            .filter(|(_, e)| *e != Errno::UnknownErrno)
            .map(|(n, e)| (n, format!("{e:?}")))
            .collect()
    }
}

#[cfg(not(target_os = "linux"))]
mod numbering {
    pub const EADDRINUSE: i32 = 98;
    pub const EADDRNOTAVAIL: i32 = 99;
    pub const EINPROGRESS: i32 = 115;

    const LINUX: &[(i32, &str)] = &[
        (1, "EPERM"),
        (2, "ENOENT"),
        (4, "EINTR"),
        (7, "E2BIG"),
        (9, "EBADF"),
        (11, "EAGAIN"),
        (12, "ENOMEM"),
        (13, "EACCES"),
        (14, "EFAULT"),
        (22, "EINVAL"),
        (24, "EMFILE"),
        (88, "ENOTSOCK"),
        (91, "EPROTOTYPE"),
        (93, "EPROTONOSUPPORT"),
        (95, "EOPNOTSUPP"),
        (97, "EAFNOSUPPORT"),
        (98, "EADDRINUSE"),
        (99, "EADDRNOTAVAIL"),
        (100, "ENETDOWN"),
        (101, "ENETUNREACH"),
        (103, "ECONNABORTED"),
        (104, "ECONNRESET"),
        (105, "ENOBUFS"),
        (106, "EISCONN"),
        (110, "ETIMEDOUT"),
        (111, "ECONNREFUSED"),
        (113, "EHOSTUNREACH"),
        (114, "EALREADY"),
        (115, "EINPROGRESS"),
    ];

    pub fn all() -> Vec<(i32, String)> {
        LINUX.iter().map(|(n, s)| (*n, (*s).to_owned())).collect()
    }
}

pub use numbering::{EADDRINUSE, EADDRNOTAVAIL, EINPROGRESS};

fn table() -> &'static [(i32, String)] {
    static TABLE: OnceLock<Vec<(i32, String)>> = OnceLock::new();
    TABLE.get_or_init(numbering::all)
}

/// The symbolic name of a positive errno, or None if it is not one.
pub fn name(errno: i32) -> Option<&'static str> {
    table()
        .iter()
        .find(|(n, _)| *n == errno)
        .map(|(_, s)| s.as_str())
}

/// The errno for a name such as `EADDRINUSE`.
pub fn from_name(name: &str) -> Option<i32> {
    table().iter().find(|(_, s)| s == name).map(|(n, _)| *n)
}

/// The errors bind(2) and connect(2) document (and ENOENT for a Unix
/// socket path): what a port error message can be about. Text that only
/// mentions a number, such as `curl: (7)`, names an errno only if it is one
/// of these.
const SOCKET_CALL_ERRNOS: &[&str] = &[
    "EPERM",
    "ENOENT",
    "EINTR",
    "EBADF",
    "EAGAIN",
    "ENOMEM",
    "EACCES",
    "EFAULT",
    "EINVAL",
    "EMFILE",
    "ENOTSOCK",
    "EPROTOTYPE",
    "EPROTONOSUPPORT",
    "EOPNOTSUPP",
    "EAFNOSUPPORT",
    "EADDRINUSE",
    "EADDRNOTAVAIL",
    "ENETDOWN",
    "ENETUNREACH",
    "ECONNABORTED",
    "ECONNRESET",
    "ENOBUFS",
    "EISCONN",
    "ETIMEDOUT",
    "ECONNREFUSED",
    "EHOSTUNREACH",
    "EALREADY",
    "EINPROGRESS",
];

/// The name of `errno` if bind() or connect() can return it.
pub fn socket_call_name(errno: i32) -> Option<&'static str> {
    name(errno).filter(|n| SOCKET_CALL_ERRNOS.contains(n))
}

/// A display name that never fails: unknown values print as `E123`.
/// Inline, not allocated: every failed call's event carries one.
pub fn display(errno: i32) -> smol_str::SmolStr {
    match name(errno) {
        Some(n) => smol_str::SmolStr::new(n),
        None => smol_str::format_smolstr!("E{errno}"),
    }
}

/// Whether a return value is a failure worth reporting. A non-blocking
/// connect() returning EINPROGRESS has not failed yet.
pub fn is_failure(ret: i32) -> bool {
    ret < 0 && -ret != EINPROGRESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_linux_numbers() {
        assert_eq!(name(98), Some("EADDRINUSE"));
        assert_eq!(name(99), Some("EADDRNOTAVAIL"));
        assert_eq!(name(111), Some("ECONNREFUSED"));
        assert_eq!(name(115), Some("EINPROGRESS"));
        assert_eq!(name(13), Some("EACCES"));
        assert_eq!(name(0), None);
        assert_eq!(display(4242), "E4242");
    }

    #[test]
    fn names_round_trip_and_are_unique() {
        #[cfg(target_os = "linux")]
        assert!(table().len() > 100, "{}", table().len());
        for (n, s) in table() {
            assert!(s.starts_with('E'), "{s}");
            assert_eq!(from_name(s), Some(*n), "{s}");
        }
        assert_eq!(from_name("EADDRINUSE"), Some(98));
        assert_eq!(from_name("ENOSUCHTHING"), None);
    }

    #[test]
    fn only_socket_call_errors_count_for_messages() {
        assert_eq!(socket_call_name(98), Some("EADDRINUSE"));
        assert_eq!(socket_call_name(111), Some("ECONNREFUSED"));
        assert_eq!(socket_call_name(7), None, "E2BIG is no socket error");
        assert_eq!(name(7), Some("E2BIG"));
    }

    #[test]
    fn einprogress_is_not_a_failure() {
        assert!(!is_failure(-EINPROGRESS));
        assert!(is_failure(-EADDRNOTAVAIL));
        assert!(!is_failure(0));
    }
}
