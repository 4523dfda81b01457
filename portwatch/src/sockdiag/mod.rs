//! Socket snapshots straight from the kernel over `NETLINK_SOCK_DIAG`.
//!
//! Why netlink instead of `/proc/net/{tcp,udp}{,6}`: the kernel answers with
//! binary, per-socket records (no text parsing, no hex addresses), it can look
//! up a single connection by its 4-tuple without dumping the whole table, and
//! that lookup also searches the TIME_WAIT hash, which is exactly what a
//! socket-lifecycle tracer needs.

use std::io;
use std::net::{IpAddr, Ipv6Addr};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_ALIGNTO, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetRequestBuffer, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// Bitmask selecting every TCP state, for [`SockDiag::tcp_sockets`].
///
/// Covers states 0..=12 (12 is `TCP_NEW_SYN_RECV`, request sockets); the
/// kernel ignores bits for states that do not exist.
pub const TCP_ALL_STATES: u32 = (1 << 13) - 1;

/// `inet_diag_sockid.idiag_cookie` value meaning "don't check the cookie".
/// An all-zero cookie would make single-socket lookups fail with `ESTALE`.
const INET_DIAG_NOCOOKIE: [u8; 8] = [0xff; 8];

/// Initial receive buffer; grown on demand if the kernel sends more.
const RECV_BUF_LEN: usize = 64 * 1024;

/// How long a receive waits for the kernel's answer (SO_RCVTIMEO). Replies
/// come at once or never (one dropped from a full receive buffer): a lost
/// one must not stall the event thread.
pub const RECV_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Errors from talking to the kernel's socket-diagnostics interface.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// The netlink socket could not be created or bound.
    #[error(
        "cannot open a NETLINK_SOCK_DIAG socket: {0}; the kernel needs CONFIG_INET_DIAG, \
         and seccomp/container policies must allow netlink sockets"
    )]
    Open(#[source] io::Error),
    /// Sending to or receiving from the netlink socket failed.
    #[error("netlink sock_diag I/O failed: {0}; retry, and check that the process is not out of memory or file descriptors")]
    Io(#[from] io::Error),
    /// The kernel rejected a request with an errno.
    #[error(
        "kernel rejected the sock_diag {request} request: {source}; make sure the \
         inet_diag, tcp_diag and udp_diag modules are available (`modprobe tcp_diag udp_diag`)"
    )]
    Kernel {
        /// What was being asked (e.g. "TCP/IPv4 dump").
        request: &'static str,
        /// The errno the kernel returned.
        #[source]
        source: io::Error,
    },
    /// No answer came within [`RECV_TIMEOUT`].
    #[error(
        "the kernel did not answer a sock_diag request within {} s (a reply was dropped, or the machine is overloaded); the lookup is skipped and the next one uses a fresh socket",
        .0.as_secs()
    )]
    Timeout(std::time::Duration),
    /// The kernel's answer could not be decoded (protocol mismatch or crate bug).
    #[error("malformed sock_diag reply: {0}; please report this together with `uname -r`")]
    Netlink(String),
}

/// Transport protocol of a [`SocketEntry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One socket as the kernel reports it, with addresses and ports in host form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketEntry {
    pub proto: Proto,
    /// Kernel TCP state number (1 = ESTABLISHED .. 6 = TIME_WAIT, 7 = CLOSE,
    /// 10 = LISTEN, ...). UDP reuses these: 7 = unconnected, 1 = connected.
    pub state: u8,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Socket inode (matches `socket:[N]` in `/proc/PID/fd`); 0 for TIME_WAIT
    /// and orphaned sockets, which no process owns any more.
    pub inode: u64,
    pub uid: u32,
    /// `IPV6_V6ONLY` of an AF_INET6 socket; false for IPv4 and TIME_WAIT ones
    /// (the kernel does not report it there).
    pub ipv6_only: bool,
}

/// A reusable `NETLINK_SOCK_DIAG` socket.
///
/// Keeps one socket and one receive buffer so repeated snapshots do not pay
/// for socket creation; not `Sync`, each thread should own its own.
pub struct SockDiag {
    sock: Socket,
    buf: Vec<u8>,
    seq: u32,
    /// Set when an exchange was abandoned half-way; unread replies would then
    /// confuse the next request (or make the kernel answer `EBUSY`), so the
    /// socket is replaced before it is used again.
    poisoned: bool,
    /// The network namespace the socket was opened in, when not the caller's;
    /// a replacement socket must be opened there too.
    netns: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// What kind of request an exchange is, for reply handling and error messages.
struct Request {
    family: u8,
    proto: Proto,
    states: u32,
    socket_id: SocketId,
    dump: bool,
    what: &'static str,
}

impl SockDiag {
    /// Opens a NETLINK_SOCK_DIAG socket in the caller's network namespace.
    pub fn new() -> Result<Self, SockDiagError> {
        Ok(SockDiag {
            sock: open_socket().map_err(SockDiagError::Open)?,
            buf: Vec::with_capacity(RECV_BUF_LEN),
            seq: 0,
            poisoned: false,
            netns: None,
        })
    }

    /// Opens a NETLINK_SOCK_DIAG socket in another network namespace (an fd
    /// of `/proc/PID/ns/net`), so that a container's sockets can be seen.
    /// Needs CAP_SYS_ADMIN.
    pub fn in_netns(netns: std::sync::Arc<std::os::fd::OwnedFd>) -> Result<Self, SockDiagError> {
        Ok(SockDiag {
            sock: open_socket_in(Some(&netns)).map_err(SockDiagError::Open)?,
            buf: Vec::with_capacity(RECV_BUF_LEN),
            seq: 0,
            poisoned: false,
            netns: Some(netns),
        })
    }

    /// Every TCP and UDP socket (IPv4 and IPv6, all states, TIME_WAIT
    /// included) whose LOCAL port is `port`.
    ///
    /// Dumps each table and filters in userspace: the crate cannot attach the
    /// kernel's bytecode filter, and the plain `idiag_sport` dump hint is not
    /// trustworthy for UDP on every kernel.
    pub fn sockets_on_port(&mut self, port: u16) -> Result<Vec<SocketEntry>, SockDiagError> {
        let mut out = Vec::new();
        for (proto, states) in [(Proto::Tcp, TCP_ALL_STATES), (Proto::Udp, u32::MAX)] {
            for family in [AF_INET, AF_INET6] {
                self.dump(family, proto, states, &mut out)?;
            }
        }
        out.retain(|e| e.sport == port);
        Ok(out)
    }

    /// Every TCP socket (both families) in any of the states given as a
    /// bitmask (`1 << state`); pass [`TCP_ALL_STATES`] for all of them.
    pub fn tcp_sockets(&mut self, states: u32) -> Result<Vec<SocketEntry>, SockDiagError> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(family, Proto::Tcp, states, &mut out)?;
        }
        Ok(out)
    }

    /// Every UDP socket of both families (bound, connected or not).
    pub fn udp_sockets(&mut self) -> Result<Vec<SocketEntry>, SockDiagError> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(family, Proto::Udp, u32::MAX, &mut out)?;
        }
        Ok(out)
    }

    /// Exact lookup of one TCP socket by its 4-tuple (local `saddr:sport`,
    /// remote `daddr:dport`), using the kernel's single-socket query.
    ///
    /// Cheap compared with a dump, and it searches the established and
    /// TIME_WAIT hashes. Returns `Ok(None)` when the kernel answers `ENOENT`.
    /// The kernel falls back to a listener on the local port for any remote;
    /// that answer is dropped (`None`) unless the caller asked for the
    /// listener itself (unspecified `daddr`, `dport` 0), so a closed
    /// connection is never mistaken for its server's LISTEN socket. Mixed
    /// IPv4/IPv6 tuples are looked up as IPv4-mapped IPv6 addresses.
    pub fn tcp_lookup(
        &mut self,
        saddr: IpAddr,
        sport: u16,
        daddr: IpAddr,
        dport: u16,
    ) -> Result<Option<SocketEntry>, SockDiagError> {
        let req = lookup_request(saddr, sport, daddr, dport);
        let mut out = Vec::new();
        match self.exchange(&req, &mut out) {
            Ok(()) => Ok(out
                .pop()
                .filter(|e| lookup_matches(e, saddr, sport, daddr, dport))),
            Err(SockDiagError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// [`SockDiag::tcp_lookup`] for many 4-tuples, with up to
    /// [`LOOKUP_CHUNK`] requests per datagram sent: one send and one receive
    /// per answer instead of three system calls per lookup. Answers come in
    /// the order asked; a socket that does not exist is `None`.
    pub fn tcp_lookup_many(
        &mut self,
        tuples: &[(IpAddr, u16, IpAddr, u16)],
    ) -> Result<Vec<Option<SocketEntry>>, SockDiagError> {
        let mut out: Vec<Option<SocketEntry>> = vec![None; tuples.len()];
        for (c, chunk) in tuples.chunks(LOOKUP_CHUNK).enumerate() {
            self.reopen_if_poisoned()?;
            let first = self.seq.wrapping_add(1);
            let mut msg = Vec::with_capacity(chunk.len() * 128);
            for &(sa, sp, da, dp) in chunk {
                self.seq = self.seq.wrapping_add(1);
                msg.extend_from_slice(&encode_request(&lookup_request(sa, sp, da, dp), self.seq));
            }
            self.poisoned = true;
            self.sock.send(&msg, 0)?;
            // Each request gets exactly one answer: its socket, or an error
            // (ENOENT when there is none).
            let mut pending = chunk.len();
            while pending > 0 {
                let len = self.recv_answer()?;
                for m in messages(&self.buf[..len]) {
                    let (seq, bytes) = m?;
                    let i = seq.wrapping_sub(first) as usize;
                    if i >= chunk.len() {
                        // Leftover from an earlier, abandoned request.
                        continue;
                    }
                    let answer = match NetlinkMessage::<SockDiagMessage>::deserialize(bytes) {
                        Ok(m) => match m.payload {
                            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                                let (sa, sp, da, dp) = chunk[i];
                                Some(
                                    Some(to_entry(Proto::Tcp, &r))
                                        .filter(|e| lookup_matches(e, sa, sp, da, dp)),
                                )
                            }
                            NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => Some(None),
                            _ => None,
                        },
                        Err(e) => return Err(SockDiagError::Netlink(format!("TCP lookup: {e}"))),
                    };
                    if let Some(a) = answer {
                        out[c * LOOKUP_CHUNK + i] = a;
                        pending -= 1;
                    }
                }
            }
            self.poisoned = false;
        }
        Ok(out)
    }

    /// After an abandoned exchange, unread replies would confuse the next
    /// request: start over with a fresh socket, in the same namespace.
    fn reopen_if_poisoned(&mut self) -> Result<(), SockDiagError> {
        if self.poisoned {
            self.sock = open_socket_in(self.netns.as_deref()).map_err(SockDiagError::Open)?;
            self.poisoned = false;
        }
        Ok(())
    }

    fn dump(
        &mut self,
        family: u8,
        proto: Proto,
        states: u32,
        out: &mut Vec<SocketEntry>,
    ) -> Result<(), SockDiagError> {
        let socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        let what = match (proto, family == AF_INET) {
            (Proto::Tcp, true) => "TCP/IPv4 dump",
            (Proto::Tcp, false) => "TCP/IPv6 dump",
            (Proto::Udp, true) => "UDP/IPv4 dump",
            (Proto::Udp, false) => "UDP/IPv6 dump",
        };
        let req = Request {
            family,
            proto,
            states,
            socket_id,
            dump: true,
            what,
        };
        self.exchange(&req, out)
    }

    /// Sends one request and collects the replies belonging to it.
    fn exchange(&mut self, req: &Request, out: &mut Vec<SocketEntry>) -> Result<(), SockDiagError> {
        self.reopen_if_poisoned()?;
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = encode_request(req, seq);
        // Assume the worst until the exchange completes cleanly.
        self.poisoned = true;
        self.sock.send(&msg, 0)?;

        // A decode error must not abandon a dump half-read: remember the first
        // one, keep reading to the end, then report it.
        let mut first_err: Option<SockDiagError> = None;
        let mut finished = false;
        while !finished {
            let len = self.recv_datagram()?;
            for m in messages(&self.buf[..len]) {
                let (msg_seq, bytes) = m?;
                if msg_seq != seq {
                    // Leftover from an earlier, abandoned request.
                    continue;
                }
                let parsed = NetlinkMessage::<SockDiagMessage>::deserialize(bytes);
                match parsed {
                    Ok(m) => match m.payload {
                        NetlinkPayload::Done(done) => {
                            if done.code != 0 && first_err.is_none() {
                                first_err = Some(kernel_error(req.what, done.code));
                            }
                            finished = true;
                        }
                        NetlinkPayload::Error(err) => {
                            // `code: None` is an ACK; we never ask for one, but
                            // it would still end a non-dump exchange.
                            if let Some(code) = err.code {
                                if first_err.is_none() {
                                    first_err = Some(kernel_error(req.what, code.get()));
                                }
                                finished = true;
                            } else if !req.dump {
                                finished = true;
                            }
                        }
                        NetlinkPayload::Overrun(_) => {
                            first_err.get_or_insert(SockDiagError::Netlink(
                                "kernel reported NLMSG_OVERRUN".into(),
                            ));
                            finished = true;
                        }
                        NetlinkPayload::Noop => {}
                        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(resp)) => {
                            out.push(to_entry(req.proto, &resp));
                            if !req.dump {
                                finished = true;
                            }
                        }
                        NetlinkPayload::InnerMessage(_) => {}
                        // NetlinkPayload is #[non_exhaustive].
                        _ => {}
                    },
                    Err(e) => {
                        first_err
                            .get_or_insert(SockDiagError::Netlink(format!("{}: {e}", req.what)));
                        if !req.dump {
                            finished = true;
                        }
                    }
                }
            }
        }
        self.poisoned = false;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Reads one datagram of single-socket answers (each a few hundred bytes
    /// at most, far below the buffer's size) with one system call.
    fn recv_answer(&mut self) -> Result<usize, SockDiagError> {
        if self.buf.capacity() < RECV_BUF_LEN {
            self.buf.reserve(RECV_BUF_LEN);
        }
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) if n > self.buf.len() => {
                    return Err(SockDiagError::Netlink(format!(
                        "a {n}-byte answer overflowed the {}-byte buffer",
                        self.buf.capacity()
                    )))
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(timeout_or(e)),
            }
        }
    }

    /// Reads one whole datagram into `self.buf`, growing it if needed, and
    /// returns its length.
    fn recv_datagram(&mut self) -> Result<usize, SockDiagError> {
        loop {
            self.buf.clear();
            // Peek with MSG_TRUNC to learn the real size so nothing is cut off.
            let size = match self
                .sock
                .recv(&mut self.buf, libc::MSG_PEEK | libc::MSG_TRUNC)
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(timeout_or(e)),
            };
            if size > self.buf.capacity() {
                self.buf.reserve(size);
                continue;
            }
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(n) => return Ok(n.min(self.buf.len())),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(timeout_or(e)),
            }
        }
    }
}

/// The netlink messages of one datagram, each with its sequence number.
fn messages(buf: &[u8]) -> impl Iterator<Item = Result<(u32, &[u8]), SockDiagError>> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset >= buf.len() {
            return None;
        }
        let bytes = &buf[offset..];
        let nl = match NetlinkBuffer::new_checked(bytes) {
            Ok(nl) => nl,
            Err(e) => {
                offset = buf.len();
                return Some(Err(SockDiagError::Netlink(format!(
                    "bad netlink header: {e}"
                ))));
            }
        };
        let len = (nl.length() as usize).min(bytes.len());
        offset += len
            .next_multiple_of(usize::from(NLMSG_ALIGNTO))
            .max(usize::from(NLMSG_ALIGNTO));
        Some(Ok((nl.sequence_number(), &bytes[..len])))
    })
}

/// A socket keeps the namespace it was created in, so create it on a
/// short-lived thread that has joined `netns` (setns affects one thread).
fn open_socket_in(netns: Option<&std::os::fd::OwnedFd>) -> io::Result<Socket> {
    use std::os::fd::AsRawFd;
    let Some(ns) = netns else {
        return open_socket();
    };
    let raw = ns.as_raw_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: a valid namespace fd, borrowed for the call.
                if unsafe { libc::setns(raw, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                open_socket()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the netns helper thread panicked")))
    })
}

/// A receive that ran into SO_RCVTIMEO says so; other errors are I/O.
fn timeout_or(e: io::Error) -> SockDiagError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => SockDiagError::Timeout(RECV_TIMEOUT),
        _ => SockDiagError::Io(e),
    }
}

fn set_recv_timeout(sock: &Socket, d: std::time::Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(d.subsec_micros()),
    };
    // SAFETY: a live socket fd, and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn open_socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
    set_recv_timeout(&sock, RECV_TIMEOUT)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    Ok(sock)
}

fn encode_request(req: &Request, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if req.dump { NLM_F_DUMP } else { 0 };
    header.sequence_number = seq;
    let inner = SockDiagMessage::InetRequest(InetRequest {
        family: req.family,
        protocol: match req.proto {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        },
        extensions: ExtensionFlags::empty(),
        // Overwritten below: the crate's StateFlags only knows states 1..=11.
        states: StateFlags::all(),
        socket_id: req.socket_id.clone(),
    });
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(inner));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    // Write the caller's raw mask so bits the bitflags type lacks (bit 0,
    // NEW_SYN_RECV = 12, anything newer) reach the kernel unchanged.
    let mut nl = NetlinkBuffer::new(&mut buf[..]);
    InetRequestBuffer::new(nl.payload_mut()).set_states(req.states);
    buf
}

/// Requests per datagram in [`SockDiag::tcp_lookup_many`]: their answers
/// (about 100 bytes each) must fit the socket's receive buffer.
pub const LOOKUP_CHUNK: usize = 64;

fn lookup_request(saddr: IpAddr, sport: u16, daddr: IpAddr, dport: u16) -> Request {
    let (family, saddr, daddr) = match (saddr, daddr) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (AF_INET, saddr, daddr),
        _ => (AF_INET6, IpAddr::V6(to_v6(saddr)), IpAddr::V6(to_v6(daddr))),
    };
    Request {
        family,
        proto: Proto::Tcp,
        states: TCP_ALL_STATES,
        socket_id: SocketId {
            source_port: sport,
            destination_port: dport,
            source_address: saddr,
            destination_address: daddr,
            interface_id: 0,
            cookie: INET_DIAG_NOCOOKIE,
        },
        dump: false,
        what: if family == AF_INET {
            "TCP/IPv4 lookup"
        } else {
            "TCP/IPv6 lookup"
        },
    }
}

/// The remote must match exactly; the local address may differ only for a
/// wildcard-bound listener.
fn lookup_matches(e: &SocketEntry, saddr: IpAddr, sport: u16, daddr: IpAddr, dport: u16) -> bool {
    e.sport == sport
        && e.dport == dport
        && to_v6(e.daddr) == to_v6(daddr)
        && (to_v6(e.saddr) == to_v6(saddr) || e.saddr.is_unspecified())
}

fn kernel_error(request: &'static str, code: i32) -> SockDiagError {
    SockDiagError::Kernel {
        request,
        source: io::Error::from_raw_os_error(code.saturating_abs()),
    }
}

fn to_v6(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

fn to_entry(proto: Proto, resp: &netlink_packet_sock_diag::inet::InetResponse) -> SocketEntry {
    let h = &resp.header;
    let ipv6_only = resp
        .nlas
        .iter()
        .any(|nla| matches!(nla, Nla::SkV6Only(true)));
    SocketEntry {
        proto,
        state: h.state,
        saddr: h.socket_id.source_address,
        sport: h.socket_id.source_port,
        daddr: h.socket_id.destination_address,
        dport: h.socket_id.destination_port,
        inode: u64::from(h.inode),
        uid: h.uid,
        ipv6_only,
    }
}

#[cfg(test)]
mod tests;
