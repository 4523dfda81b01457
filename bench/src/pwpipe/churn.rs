//! Synthetic raw events of a loopback churn, byte for byte as the ring
//! buffer delivers them on a host without fentry (TIME_WAIT is confirmed
//! through the socket table): client and server sockets of many
//! connections in flight at once, each with its ten state transitions and
//! its connect(), socket addresses and 4-tuples reused as the kernel
//! reuses them, and now and then a failed bind() or connect().

use portwatch_common::{
    flags, kind, side, tcp_state as st, Owner, RawEvent, AF_INET, AF_INET6, IPPROTO_TCP,
};

/// A process of the workload.
#[derive(Clone, Copy)]
pub struct Proc {
    pub pid: u32,
    pub comm: &'static str,
    pub threads: u32,
    pub cgroup_id: u64,
}

pub const CLIENTS: [Proc; 3] = [
    Proc {
        pid: 3100,
        comm: "java",
        threads: 8,
        cgroup_id: 7001,
    },
    Proc {
        pid: 3200,
        comm: "python3",
        threads: 2,
        cgroup_id: 7002,
    },
    Proc {
        pid: 3300,
        comm: "pwload",
        threads: 4,
        cgroup_id: 7003,
    },
];

pub const SERVERS: [Proc; 2] = [
    Proc {
        pid: 2200,
        comm: "nginx",
        threads: 4,
        cgroup_id: 6001,
    },
    Proc {
        pid: 2300,
        comm: "postgres",
        threads: 4,
        cgroup_id: 6002,
    },
];

/// A process that binds and connects where it cannot.
pub const FAILING: Proc = Proc {
    pid: 4400,
    comm: "node",
    threads: 1,
    cgroup_id: 7004,
};

/// Where clients connect: address, port, index into [`SERVERS`].
pub struct Dest {
    pub v6: bool,
    pub port: u16,
    pub server: usize,
}

pub const DESTS: [Dest; 3] = [
    Dest {
        v6: false,
        port: 8080,
        server: 0,
    },
    Dest {
        v6: false,
        port: 5432,
        server: 1,
    },
    Dest {
        v6: true,
        port: 8443,
        server: 0,
    },
];

pub const NETNS: u32 = 4026532000;
/// The ephemeral range clients take ports from.
const PORT_LOW: u16 = 32768;
const PORT_HIGH: u16 = 60999;

/// One connection in flight: the client's socket and the server's child.
#[derive(Clone, Copy)]
struct Conn {
    step: u8,
    client_closes: bool,
    csk: u64,
    ssk: u64,
    cport: u16,
    dest: usize,
    client: usize,
    ctid: u32,
    stid: u32,
}

pub struct Churn {
    rng: u64,
    conns: Vec<Conn>,
    /// Socket addresses of closed sockets, reused last-freed first as the
    /// slab does.
    free: Vec<u64>,
    next_sk: u64,
    next_port: u16,
    ts: u64,
    step_ns: u64,
    n: u64,
    /// Records between two failed calls; 0: none.
    failure_every: u64,
    /// Listens and binds of the servers, sent first.
    setup: Vec<RawEvent>,
}

fn addr(v6: bool) -> [u8; 16] {
    let mut a = [0u8; 16];
    if v6 {
        a[15] = 1;
    } else {
        a[..4].copy_from_slice(&[127, 0, 0, 1]);
    }
    a
}

fn owner(p: &Proc, tid: u32) -> Owner {
    let mut o = Owner::zeroed();
    o.tgid = p.pid;
    o.tid = tid;
    o.uid = 1000;
    o.cgroup_id = p.cgroup_id;
    o.comm[..p.comm.len()].copy_from_slice(p.comm.as_bytes());
    o
}

impl Churn {
    /// `alive` connections in flight (twice as many sockets); the kernel
    /// clock advances `step_ns` per record; a failed call every
    /// `failure_every` records (0: none).
    pub fn new(alive: usize, step_ns: u64, seed: u64, failure_every: u64) -> Self {
        let mut c = Churn {
            rng: seed | 1,
            conns: Vec::with_capacity(alive),
            free: Vec::with_capacity(2 * alive),
            next_sk: 0xffff_8880_0100_0000,
            next_port: PORT_LOW,
            ts: 1_000_000_000_000,
            step_ns,
            n: 0,
            failure_every,
            setup: Vec::new(),
        };
        for d in &DESTS {
            let s = &SERVERS[d.server];
            let mut ev = c.raw(kind::STATE, flags::OWNER_CURRENT, d.v6);
            ev.old_state = st::CLOSE;
            ev.new_state = st::LISTEN;
            ev.skaddr = c.sk();
            ev.saddr = [0; 16];
            ev.daddr = [0; 16];
            ev.sport = d.port;
            ev.owner = owner(s, s.pid);
            let mut bind = c.raw(kind::BIND, flags::OWNER_CURRENT, d.v6);
            bind.protocol = 0;
            bind.saddr = [0; 16];
            bind.sport = d.port;
            bind.owner = owner(s, s.pid);
            c.setup.push(bind);
            c.setup.push(ev);
        }
        c.setup.reverse();
        for _ in 0..alive {
            let conn = c.connection();
            c.conns.push(conn);
        }
        c
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*: deterministic, no allocation.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn sk(&mut self) -> u64 {
        self.free.pop().unwrap_or_else(|| {
            self.next_sk += 0x800;
            self.next_sk
        })
    }

    fn connection(&mut self) -> Conn {
        let r = self.rand();
        let client = (r % CLIENTS.len() as u64) as usize;
        let dest = ((r >> 8) % DESTS.len() as u64) as usize;
        let cport = self.next_port;
        self.next_port = if cport >= PORT_HIGH {
            PORT_LOW
        } else {
            cport + 1
        };
        let c = &CLIENTS[client];
        let s = &SERVERS[DESTS[dest].server];
        Conn {
            step: 0,
            client_closes: !(r >> 16).is_multiple_of(4),
            csk: self.sk(),
            ssk: self.sk(),
            cport,
            dest,
            client,
            ctid: c.pid + 1 + ((r >> 24) % u64::from(c.threads)) as u32,
            stid: s.pid + 1 + ((r >> 32) % u64::from(s.threads)) as u32,
        }
    }

    fn raw(&mut self, k: u8, f: u8, v6: bool) -> RawEvent {
        self.ts += self.step_ns;
        RawEvent {
            kind: k,
            flags: f,
            family: if v6 { AF_INET6 } else { AF_INET },
            protocol: IPPROTO_TCP,
            netns: NETNS,
            ts_ns: self.ts,
            saddr: addr(v6),
            daddr: addr(v6),
            ..RawEvent::zeroed()
        }
    }

    /// The kernel clock (CLOCK_BOOTTIME) of the last record.
    pub fn last_ts(&self) -> u64 {
        self.ts
    }

    /// The next record of the stream.
    pub fn next_event(&mut self) -> RawEvent {
        if let Some(mut ev) = self.setup.pop() {
            self.ts += self.step_ns;
            ev.ts_ns = self.ts;
            return ev;
        }
        self.n += 1;
        if self.failure_every > 0 && self.n.is_multiple_of(self.failure_every) {
            return self.failure();
        }
        let i = (self.rand() % self.conns.len() as u64) as usize;
        let c = self.conns[i];
        let ev = self.step(&c);
        if c.step == 10 {
            self.free.push(c.csk);
            self.free.push(c.ssk);
            self.conns[i] = self.connection();
        } else {
            self.conns[i].step += 1;
        }
        ev
    }

    /// A bind() to a port a listener holds, or a connect() that found no
    /// free port, alternately.
    fn failure(&mut self) -> RawEvent {
        let k = self.n / self.failure_every;
        let d = &DESTS[(k % DESTS.len() as u64) as usize];
        let bind = k.is_multiple_of(2);
        let mut ev = self.raw(
            if bind { kind::BIND } else { kind::CONNECT },
            flags::OWNER_CURRENT,
            d.v6,
        );
        ev.owner = owner(&FAILING, FAILING.pid);
        ev.protocol = 0;
        if bind {
            ev.saddr = [0; 16];
            ev.sport = d.port;
            ev.ret = -98;
        } else {
            ev.dport = d.port;
            ev.ret = -99;
        }
        ev
    }

    fn step(&mut self, c: &Conn) -> RawEvent {
        let d = &DESTS[c.dest];
        let (cp, sp) = (&CLIENTS[c.client], &SERVERS[d.server]);
        // The side that closes first, and the other.
        let (active, passive) = if c.client_closes {
            (true, false)
        } else {
            (false, true)
        };
        let (client, server) = (true, false);
        let (is_client, k, old, new, current) = match c.step {
            0 => (client, kind::STATE, st::CLOSE, st::SYN_SENT, true),
            1 => (server, kind::STATE, st::LISTEN, st::SYN_RECV, false),
            2 => (client, kind::STATE, st::SYN_SENT, st::ESTABLISHED, false),
            3 => (server, kind::STATE, st::SYN_RECV, st::ESTABLISHED, false),
            4 => (client, kind::CONNECT, 0, 0, true),
            5 => (active, kind::STATE, st::ESTABLISHED, st::FIN_WAIT1, true),
            6 => (passive, kind::STATE, st::ESTABLISHED, st::CLOSE_WAIT, false),
            7 => (active, kind::STATE, st::FIN_WAIT1, st::FIN_WAIT2, false),
            8 => (passive, kind::STATE, st::CLOSE_WAIT, st::LAST_ACK, true),
            9 => (active, kind::STATE, st::FIN_WAIT2, st::CLOSE, false),
            _ => (passive, kind::STATE, st::LAST_ACK, st::CLOSE, false),
        };
        let f = if current {
            flags::OWNER_CURRENT
        } else {
            flags::OWNER_REMEMBERED
        };
        let mut ev = self.raw(k, f, d.v6);
        if is_client {
            ev.skaddr = c.csk;
            ev.sport = if c.step == 0 { 0 } else { c.cport };
            ev.dport = d.port;
            ev.side = u16::from(side::CLIENT);
            ev.owner = owner(cp, c.ctid);
        } else {
            ev.skaddr = c.ssk;
            ev.sport = d.port;
            ev.dport = c.cport;
            ev.side = u16::from(side::SERVER);
            // The child takes its listener's owner; the worker that
            // accepted it closes it.
            ev.owner = owner(sp, if current { c.stid } else { sp.pid });
        }
        ev.old_state = old;
        ev.new_state = new;
        if k == kind::CONNECT {
            ev.sport = 0;
            ev.side = 0;
            ev.protocol = 0;
        }
        ev
    }
}

/// The record's bytes, as the ring hands them over.
pub fn bytes(ev: &RawEvent) -> &[u8] {
    // SAFETY: RawEvent is repr(C) plain old data without implicit padding
    // (portwatch-common asserts its size).
    unsafe {
        std::slice::from_raw_parts(
            (ev as *const RawEvent).cast::<u8>(),
            std::mem::size_of::<RawEvent>(),
        )
    }
}
