//! errno names for the values bind() and connect() return. Linux numbering
//! (asm-generic/errno*.h), which is what every Linux architecture portwatch
//! builds for uses; the Windows collector maps WSA codes onto these names.

const TABLE: &[(i32, &str)] = &[
    (1, "EPERM"),
    (2, "ENOENT"),
    (4, "EINTR"),
    (9, "EBADF"),
    (11, "EAGAIN"),
    (12, "ENOMEM"),
    (13, "EACCES"),
    (14, "EFAULT"),
    (22, "EINVAL"),
    (24, "EMFILE"),
    (88, "ENOTSOCK"),
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

pub const EADDRINUSE: i32 = 98;
pub const EADDRNOTAVAIL: i32 = 99;
pub const EINPROGRESS: i32 = 115;

/// The symbolic name of a positive errno, or None if portwatch does not know it.
pub fn name(errno: i32) -> Option<&'static str> {
    TABLE.iter().find(|(n, _)| *n == errno).map(|(_, s)| *s)
}

/// The errno for a name such as `EADDRINUSE`.
pub fn from_name(name: &str) -> Option<i32> {
    TABLE.iter().find(|(_, s)| *s == name).map(|(n, _)| *n)
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
        assert_eq!(name(0), None);
        assert_eq!(display(4242), "E4242");
    }

    #[test]
    fn table_round_trips_and_has_no_duplicates() {
        for (n, s) in TABLE {
            assert_eq!(from_name(s), Some(*n));
            assert_eq!(TABLE.iter().filter(|(m, _)| m == n).count(), 1, "{s}");
        }
    }

    #[test]
    fn einprogress_is_not_a_failure() {
        assert!(!is_failure(-EINPROGRESS));
        assert!(is_failure(-EADDRNOTAVAIL));
        assert!(!is_failure(0));
    }
}
