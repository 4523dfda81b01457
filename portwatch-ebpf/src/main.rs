//! portwatch's eBPF programs. Each hook copies the fields it sees into a
//! [`RawEvent`] and submits it; attribution, TIME_WAIT confirmation and every
//! other judgement happens in userspace where it can be tested.
//!
//! Userspace picks, per kind of event, the cheapest hook the running kernel
//! accepts: fexit, then kprobe/kretprobe, then syscall tracepoints.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod bind;
#[cfg(target_arch = "bpf")]
mod cgroup;
#[cfg(target_arch = "bpf")]
mod common;
#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod state;
#[cfg(target_arch = "bpf")]
mod timewait;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

// Lets `cargo check --workspace` and clippy build this crate on the host.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
