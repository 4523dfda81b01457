//! The system as attribution sees it, in memory: no system call is made,
//! so the benchmark measures portwatch's own work.

use std::net::{IpAddr, Ipv4Addr};

use portwatch::attribution::{PortSocket, ProcessInfo, ProcessLookup, SocketProbe, Tuple};
use portwatch::model::{PoolUse, Protocol, SmolStr, TcpState};

use crate::churn::{CLIENTS, DESTS, FAILING, NETNS, SERVERS};

/// The socket table: a FIN_WAIT2/CLOSING -> CLOSE left a timewait socket,
/// except one close in 64 (a reset); listeners hold their ports.
pub struct Sockets;

impl SocketProbe for Sockets {
    fn tcp_state(&mut self, _: Option<u64>, (_, sport, _, dport): Tuple) -> Option<TcpState> {
        (!(sport ^ dport).is_multiple_of(64)).then_some(TcpState::TimeWait)
    }

    fn on_port(&mut self, _: Option<u64>, port: u16) -> Result<Vec<PortSocket>, String> {
        let Some(d) = DESTS.iter().find(|d| d.port == port) else {
            return Ok(Vec::new());
        };
        let s = &SERVERS[d.server];
        Ok(vec![PortSocket {
            protocol: Protocol::Tcp,
            state: Some(TcpState::Listen),
            saddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            sport: port,
            daddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dport: 0,
            pid: Some(s.pid),
            comm: Some(s.comm.into()),
            v6only: false,
        }])
    }

    fn pool(&mut self, _: Option<u64>, _: IpAddr, _: u16) -> Result<PoolUse, String> {
        Ok(PoolUse {
            in_use: 28232,
            by_state: [("TIME_WAIT".to_owned(), 28232)].into_iter().collect(),
            capacity: 28232,
            range_low: 32768,
            range_high: 60999,
        })
    }
}

/// /proc: command line and cgroup of every process of the workload.
pub struct Processes;

impl ProcessLookup for Processes {
    fn lookup(&mut self, pid: u32) -> Option<ProcessInfo> {
        let p = CLIENTS
            .iter()
            .chain(&SERVERS)
            .chain([&FAILING])
            .find(|p| p.pid == pid)?;
        Some(ProcessInfo {
            cmdline: Some(format!(
                "/usr/bin/{} --config /etc/{}/{}.conf --workers 4",
                p.comm, p.comm, p.comm
            )),
            cgroup: Some(format!("/system.slice/{}.service", p.comm)),
            netns: Some(u64::from(NETNS)),
            container_pid: None,
        })
    }

    fn cgroup_path(&mut self, id: u64) -> Option<SmolStr> {
        Some(SmolStr::from(format!("/system.slice/cgroup-{id}.scope")))
    }
}
