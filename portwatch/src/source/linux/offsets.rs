//! Offsets into kernel structures, from the running kernel's BTF.
//!
//! The eBPF programs read a socket's network namespace, its protocol and the
//! socket behind a syscall's fd by following kernel pointers. Those layouts
//! change between kernel builds, so nothing is hard-coded: the offsets are
//! looked up here in `/sys/kernel/btf/vmlinux` and handed to the programs as
//! a read-only global ([`KernelOffsets`]). Each group of fields has its own
//! validity bit, so a kernel missing one field loses only what needs it.

use btfparse::{Offset, Readable, TypeInformation};
use portwatch_common::{offsets_valid as valid, KernelOffsets};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// What the offsets make possible on this kernel, for the `attached` line
/// and doctor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetsReport {
    pub offsets: KernelOffsets,
    /// Why socket namespaces could not be read, when they cannot.
    pub missing: Option<String>,
}

impl OffsetsReport {
    /// Where each event's network namespace comes from.
    pub fn describe(&self) -> String {
        match &self.missing {
            None => "kernel (BTF offsets)".to_owned(),
            Some(why) => format!("/proc of the event's process ({why})"),
        }
    }
}

/// The whole BTF file in memory: btfparse reads through this trait.
struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).ok();
        let slice = start
            .and_then(|s| s.checked_add(buffer.len()).map(|e| (s, e)))
            .and_then(|(s, e)| self.0.get(s..e));
        match slice {
            Some(src) => {
                buffer.copy_from_slice(src);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::IOError,
                "read past the end of the BTF data",
            )),
        }
    }
}

/// Byte offset of `path` (dot-separated members) in struct `ty`.
fn byte_offset(ti: &TypeInformation, ty: &str, path: &str) -> Result<u32, String> {
    let id = ti
        .id_of(ty)
        .ok_or_else(|| format!("no struct {ty} in the kernel's BTF"))?;
    match ti.offset_of(id, path) {
        Ok((_, Offset::ByteOffset(b))) => Ok(b),
        Ok((_, Offset::BitOffsetAndSize(..))) => Err(format!("{ty}.{path} is a bitfield")),
        Err(e) => Err(format!("{ty}.{path}: {e:?}")),
    }
}

/// Reads the offsets from BTF `data` (the contents of [`VMLINUX_BTF`]).
pub fn from_btf(data: Vec<u8>) -> OffsetsReport {
    let ti = match TypeInformation::new(&Bytes(data)) {
        Ok(ti) => ti,
        Err(e) => {
            return OffsetsReport {
                offsets: KernelOffsets::default(),
                missing: Some(format!("the kernel's BTF does not parse: {e:?}")),
            }
        }
    };
    let mut o = KernelOffsets::default();
    let mut missing = None;
    // Each group: every field found, or the group stays off.
    let sock_net = byte_offset(&ti, "sock", "__sk_common.skc_net.net");
    let net_inum = byte_offset(&ti, "net", "ns.inum");
    match (&sock_net, &net_inum) {
        (Ok(a), Ok(b)) => {
            o.sock_net = *a;
            o.net_inum = *b;
            o.valid |= valid::SOCK_NETNS;
        }
        (Err(e), _) | (_, Err(e)) => missing = Some(e.clone()),
    }
    if let (Ok(inum), Ok(nsproxy), Ok(net)) = (
        &net_inum,
        byte_offset(&ti, "task_struct", "nsproxy"),
        byte_offset(&ti, "nsproxy", "net_ns"),
    ) {
        o.net_inum = *inum;
        o.task_nsproxy = nsproxy;
        o.nsproxy_net = net;
        o.valid |= valid::TASK_NETNS;
    }
    // A plain u16 since Linux 5.6; a bitfield (left off) before.
    if let Ok(p) = byte_offset(&ti, "sock", "sk_protocol") {
        o.sock_protocol = p;
        o.valid |= valid::PROTOCOL;
    }
    if let Ok(sk) = byte_offset(&ti, "socket", "sk") {
        o.socket_sk = sk;
        o.valid |= valid::SOCKET_SK;
    }
    if let (Ok(files), Ok(fdt), Ok(fd), Ok(max), Ok(private)) = (
        byte_offset(&ti, "task_struct", "files"),
        byte_offset(&ti, "files_struct", "fdt"),
        byte_offset(&ti, "fdtable", "fd"),
        byte_offset(&ti, "fdtable", "max_fds"),
        byte_offset(&ti, "file", "private_data"),
    ) {
        o.task_files = files;
        o.files_fdt = fdt;
        o.fdt_fd = fd;
        o.fdt_max_fds = max;
        o.file_private = private;
        o.valid |= valid::FD_TABLE;
    }
    OffsetsReport {
        offsets: o,
        missing,
    }
}

/// The running kernel's offsets; none (and why) when it publishes no BTF.
pub fn kernel() -> OffsetsReport {
    match std::fs::read(VMLINUX_BTF) {
        Ok(data) => from_btf(data),
        Err(e) => OffsetsReport {
            offsets: KernelOffsets::default(),
            missing: Some(format!(
                "no kernel BTF at {VMLINUX_BTF} ({e}); the kernel was built without CONFIG_DEBUG_INFO_BTF"
            )),
        },
    }
}

/// The argument that makes portwatch print the kernel's offsets and exit
/// (see [`kernel_isolated`]).
pub const CHILD_ARG: &str = "__kernel-offsets";

fn fields(o: &KernelOffsets) -> [u32; 12] {
    [
        o.valid,
        o.sock_net,
        o.net_inum,
        o.sock_protocol,
        o.socket_sk,
        o.task_nsproxy,
        o.nsproxy_net,
        o.task_files,
        o.files_fdt,
        o.fdt_fd,
        o.fdt_max_fds,
        o.file_private,
    ]
}

/// Prints [`kernel`]'s answer for a parent (see [`kernel_isolated`]): the
/// twelve offsets on one line, then why some are missing, if they are.
pub fn print_for_parent() {
    let r = kernel();
    let nums: Vec<String> = fields(&r.offsets).iter().map(u32::to_string).collect();
    println!("{}", nums.join(" "));
    if let Some(why) = r.missing {
        println!("{why}");
    }
}

fn parse_child(out: &str) -> Option<OffsetsReport> {
    let mut lines = out.lines();
    let nums: Vec<u32> = lines
        .next()?
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    let [valid, sock_net, net_inum, sock_protocol, socket_sk, task_nsproxy, nsproxy_net, task_files, files_fdt, fdt_fd, fdt_max_fds, file_private] =
        nums[..]
    else {
        return None;
    };
    Some(OffsetsReport {
        offsets: KernelOffsets {
            valid,
            sock_net,
            net_inum,
            sock_protocol,
            socket_sk,
            task_nsproxy,
            nsproxy_net,
            task_files,
            files_fdt,
            fdt_fd,
            fdt_max_fds,
            file_private,
        },
        missing: lines.next().map(str::to_owned),
    })
}

/// [`kernel`], computed in a child process: parsing the whole kernel BTF
/// takes tens of megabytes at its peak, which a long-running tracer should
/// not carry as its high-water mark. Falls back to this process when the
/// child cannot be run.
pub fn kernel_isolated() -> OffsetsReport {
    let child = std::env::current_exe()
        .and_then(|exe| std::process::Command::new(exe).arg(CHILD_ARG).output());
    match child {
        Ok(out) if out.status.success() => {
            match parse_child(&String::from_utf8_lossy(&out.stdout)) {
                Some(r) => r,
                None => kernel(),
            }
        }
        _ => kernel(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_gives_every_group() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("SKIPPED: no {VMLINUX_BTF} on this kernel");
            return;
        }
        let r = kernel();
        assert_eq!(r.missing, None);
        let all = valid::SOCK_NETNS | valid::TASK_NETNS | valid::SOCKET_SK | valid::FD_TABLE;
        assert_eq!(r.offsets.valid & all, all, "{r:?}");
        // struct sock begins with struct sock_common, whose skc_net follows
        // the addresses, ports, family and state: never at offset 0.
        assert!(r.offsets.sock_net > 0 && r.offsets.sock_net < 256, "{r:?}");
        assert_eq!(r.offsets.socket_sk % 8, 0, "{r:?}");
    }

    #[test]
    fn the_childs_answer_reads_back_as_it_was() {
        let r = kernel();
        let nums: Vec<String> = fields(&r.offsets).iter().map(u32::to_string).collect();
        let text = format!("{}\nno BTF here\n", nums.join(" "));
        let back = parse_child(&text).expect("parses");
        assert_eq!(back.offsets, r.offsets);
        assert_eq!(back.missing.as_deref(), Some("no BTF here"));
        assert_eq!(parse_child("1 2 3"), None);
        assert_eq!(parse_child(""), None);
    }

    #[test]
    fn garbage_is_reported_not_panicked_on() {
        let r = from_btf(b"not btf at all".to_vec());
        assert_eq!(r.offsets.valid, 0);
        assert!(r.missing.is_some_and(|m| m.contains("does not parse")));
        let r = from_btf(Vec::new());
        assert_eq!(r.offsets.valid, 0);
    }
}
