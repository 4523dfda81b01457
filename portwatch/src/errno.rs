//! errno names for the values bind() and connect() return, from `nix`'s
//! `Errno` (the C library's numbering for the target, which is what the
//! kernel returns on it); the Windows collector maps WSA codes onto these
//! names.

use std::sync::OnceLock;

use nix::errno::Errno;

pub const EADDRINUSE: i32 = Errno::EADDRINUSE as i32;
pub const EADDRNOTAVAIL: i32 = Errno::EADDRNOTAVAIL as i32;
pub const EINPROGRESS: i32 = Errno::EINPROGRESS as i32;

/// Every errno this target knows, by number, with its symbolic name as
/// `nix` spells it (`EADDRINUSE`). Built once.
fn table() -> &'static [(i32, String)] {
    static TABLE: OnceLock<Vec<(i32, String)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (1..4096)
            .map(|n| (n, Errno::from_raw(n)))
            .filter(|(_, e)| *e != Errno::UnknownErrno)
            .map(|(n, e)| (n, format!("{e:?}")))
            .collect()
    })
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
const SOCKET_CALL_ERRNOS: &[Errno] = &[
    Errno::EPERM,
    Errno::ENOENT,
    Errno::EINTR,
    Errno::EBADF,
    Errno::EAGAIN,
    Errno::ENOMEM,
    Errno::EACCES,
    Errno::EFAULT,
    Errno::EINVAL,
    Errno::EMFILE,
    Errno::ENOTSOCK,
    Errno::EPROTOTYPE,
    Errno::EPROTONOSUPPORT,
    Errno::EOPNOTSUPP,
    Errno::EAFNOSUPPORT,
    Errno::EADDRINUSE,
    Errno::EADDRNOTAVAIL,
    Errno::ENETDOWN,
    Errno::ENETUNREACH,
    Errno::ECONNABORTED,
    Errno::ECONNRESET,
    Errno::ENOBUFS,
    Errno::EISCONN,
    Errno::ETIMEDOUT,
    Errno::ECONNREFUSED,
    Errno::EHOSTUNREACH,
    Errno::EALREADY,
    Errno::EINPROGRESS,
];

/// The name of `errno` if bind() or connect() can return it.
pub fn socket_call_name(errno: i32) -> Option<&'static str> {
    SOCKET_CALL_ERRNOS
        .iter()
        .any(|e| *e as i32 == errno)
        .then(|| name(errno))
        .flatten()
}

/// A display name that never fails: unknown values print as `E123`.
pub fn display(errno: i32) -> String {
    name(errno).map_or_else(|| format!("E{errno}"), str::to_owned)
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
