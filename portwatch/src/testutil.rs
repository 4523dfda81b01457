//! Helpers shared by the unit tests that drive real sockets.

use std::os::fd::AsRawFd;

/// Inode of one of our own sockets, read from /proc/self/fd the way
/// `ss -p` and lsof do.
pub fn inode_of(fd: &impl AsRawFd) -> u64 {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .expect("read our own fd link");
    let s = link.to_str().expect("fd link is UTF-8");
    s.strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not a socket link: {s}"))
        .parse()
        .expect("socket inode")
}
