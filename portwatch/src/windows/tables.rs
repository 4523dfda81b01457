//! The IP Helper socket tables as `GetExtendedTcpTable` /
//! `GetExtendedUdpTable` fill them (iphlpapi.h, tcpmib.h, udpmib.h), parsed
//! from the raw buffer so that the layout is tested everywhere:
//!
//! - `MIB_TCPTABLE_OWNER_PID` (TCP_TABLE_OWNER_PID_ALL, AF_INET): `DWORD
//!   dwNumEntries`, then rows of 24 bytes `{dwState, dwLocalAddr,
//!   dwLocalPort, dwRemoteAddr, dwRemotePort, dwOwningPid}`;
//! - `MIB_TCP6TABLE_OWNER_PID` (AF_INET6): rows of 56 bytes `{ucLocalAddr[16],
//!   dwLocalScopeId, dwLocalPort, ucRemoteAddr[16], dwRemoteScopeId,
//!   dwRemotePort, dwState, dwOwningPid}`;
//! - `MIB_UDPTABLE_OWNER_PID`: rows of 12 bytes `{dwLocalAddr, dwLocalPort,
//!   dwOwningPid}`; `MIB_UDP6TABLE_OWNER_PID`: rows of 28 bytes
//!   `{ucLocalAddr[16], dwLocalScopeId, dwLocalPort, dwOwningPid}`.
//!
//! Addresses are in network order; a port is a DWORD whose first two bytes
//! in memory are the port in network order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{Family, Protocol};

/// One row of any of the four tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub protocol: Protocol,
    pub family: Family,
    /// `LISTEN`, `ESTABLISHED`, `TIME_WAIT`, `BOUND`, ... (the trace schema's
    /// names); `UNCONN` for UDP, as `ss` and portwatch on Linux print it.
    pub state: String,
    pub local: IpAddr,
    pub lport: u16,
    pub remote: IpAddr,
    pub rport: u16,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table}: {what}")]
pub struct TableError {
    pub table: &'static str,
    pub what: String,
}

/// MIB_TCP_STATE (tcpmib.h) by the names portwatch uses everywhere.
/// 100 is what Windows reports for a socket that is bound but neither
/// listening nor connected (`netstat -q`'s and Get-NetTCPConnection's
/// "Bound").
pub fn mib_tcp_state(n: u32) -> String {
    match n {
        1 => "CLOSE",
        2 => "LISTEN",
        3 => "SYN_SENT",
        4 => "SYN_RECV",
        5 => "ESTABLISHED",
        6 => "FIN_WAIT1",
        7 => "FIN_WAIT2",
        8 => "CLOSE_WAIT",
        9 => "CLOSING",
        10 => "LAST_ACK",
        11 => "TIME_WAIT",
        12 => "DELETE_TCB",
        100 => "BOUND",
        other => return format!("STATE{other}"),
    }
    .to_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Tcp4,
    Tcp6,
    Udp4,
    Udp6,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Tcp4, Table::Tcp6, Table::Udp4, Table::Udp6];

    fn row_len(self) -> usize {
        match self {
            Table::Tcp4 => 24,
            Table::Tcp6 => 56,
            Table::Udp4 => 12,
            Table::Udp6 => 28,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::Tcp4 => "MIB_TCPTABLE_OWNER_PID",
            Table::Tcp6 => "MIB_TCP6TABLE_OWNER_PID",
            Table::Udp4 => "MIB_UDPTABLE_OWNER_PID",
            Table::Udp6 => "MIB_UDP6TABLE_OWNER_PID",
        }
    }
}

fn dword(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn v4(b: &[u8], at: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]))
}

fn v6(b: &[u8], at: usize) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

fn port(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses a table buffer; a count that does not fit the buffer is an error.
pub fn parse(table: Table, buf: &[u8]) -> Result<Vec<Row>, TableError> {
    let err = |what: String| TableError {
        table: table.name(),
        what,
    };
    if buf.len() < 4 {
        return Err(err(format!("{} bytes, no entry count", buf.len())));
    }
    let n = dword(buf, 0) as usize;
    let need = n
        .checked_mul(table.row_len())
        .and_then(|r| r.checked_add(4))
        .ok_or_else(|| err(format!("{n} entries overflow")))?;
    if need > buf.len() {
        return Err(err(format!(
            "{n} entries need {need} bytes, the buffer has {}",
            buf.len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = &buf[4 + i * table.row_len()..4 + (i + 1) * table.row_len()];
        out.push(match table {
            Table::Tcp4 => Row {
                protocol: Protocol::Tcp,
                family: Family::Ipv4,
                state: mib_tcp_state(dword(r, 0)),
                local: v4(r, 4),
                lport: port(r, 8),
                remote: v4(r, 12),
                rport: port(r, 16),
                pid: dword(r, 20),
            },
            Table::Tcp6 => Row {
                protocol: Protocol::Tcp,
                family: Family::Ipv6,
                local: v6(r, 0),
                lport: port(r, 20),
                remote: v6(r, 24),
                rport: port(r, 44),
                state: mib_tcp_state(dword(r, 48)),
                pid: dword(r, 52),
            },
            Table::Udp4 => Row {
                protocol: Protocol::Udp,
                family: Family::Ipv4,
                state: "UNCONN".to_owned(),
                local: v4(r, 0),
                lport: port(r, 4),
                remote: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                rport: 0,
                pid: dword(r, 8),
            },
            Table::Udp6 => Row {
                protocol: Protocol::Udp,
                family: Family::Ipv6,
                state: "UNCONN".to_owned(),
                local: v6(r, 0),
                lport: port(r, 20),
                remote: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                rport: 0,
                pid: dword(r, 24),
            },
        });
    }
    Ok(out)
}

/// Test helpers: table buffers laid out as the headers define them.
#[cfg(test)]
pub mod build {
    use super::*;

    fn port_dword(p: u16) -> [u8; 4] {
        let b = p.to_be_bytes();
        [b[0], b[1], 0, 0]
    }

    /// (state, local address, local port, remote address, remote port, pid)
    pub type Tcp4Row = (u32, [u8; 4], u16, [u8; 4], u16, u32);
    pub type Tcp6Row = (u32, Ipv6Addr, u16, Ipv6Addr, u16, u32);

    pub fn tcp4(rows: &[Tcp4Row]) -> Vec<u8> {
        let mut b = (rows.len() as u32).to_le_bytes().to_vec();
        for (state, la, lp, ra, rp, pid) in rows {
            b.extend_from_slice(&state.to_le_bytes());
            b.extend_from_slice(la);
            b.extend_from_slice(&port_dword(*lp));
            b.extend_from_slice(ra);
            b.extend_from_slice(&port_dword(*rp));
            b.extend_from_slice(&pid.to_le_bytes());
        }
        b
    }

    pub fn tcp6(rows: &[Tcp6Row]) -> Vec<u8> {
        let mut b = (rows.len() as u32).to_le_bytes().to_vec();
        for (state, la, lp, ra, rp, pid) in rows {
            b.extend_from_slice(&la.octets());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&port_dword(*lp));
            b.extend_from_slice(&ra.octets());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&port_dword(*rp));
            b.extend_from_slice(&state.to_le_bytes());
            b.extend_from_slice(&pid.to_le_bytes());
        }
        b
    }

    pub fn udp4(rows: &[([u8; 4], u16, u32)]) -> Vec<u8> {
        let mut b = (rows.len() as u32).to_le_bytes().to_vec();
        for (la, lp, pid) in rows {
            b.extend_from_slice(la);
            b.extend_from_slice(&port_dword(*lp));
            b.extend_from_slice(&pid.to_le_bytes());
        }
        b
    }

    pub fn udp6(rows: &[(Ipv6Addr, u16, u32)]) -> Vec<u8> {
        let mut b = (rows.len() as u32).to_le_bytes().to_vec();
        for (la, lp, pid) in rows {
            b.extend_from_slice(&la.octets());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&port_dword(*lp));
            b.extend_from_slice(&pid.to_le_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_four_tables_parse_as_laid_out() {
        let t = parse(
            Table::Tcp4,
            &build::tcp4(&[
                (2, [0, 0, 0, 0], 1433, [0, 0, 0, 0], 0, 5025),
                (11, [127, 0, 0, 1], 1433, [127, 0, 0, 1], 52742, 0),
                (100, [10, 0, 0, 5], 50000, [0, 0, 0, 0], 0, 77),
            ]),
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            (t[0].state.as_str(), t[0].lport, t[0].pid),
            ("LISTEN", 1433, 5025)
        );
        assert_eq!((t[1].state.as_str(), t[1].rport), ("TIME_WAIT", 52742));
        assert_eq!(t[2].state, "BOUND");
        let t6 = parse(
            Table::Tcp6,
            &build::tcp6(&[(5, Ipv6Addr::LOCALHOST, 1433, Ipv6Addr::LOCALHOST, 50001, 9)]),
        )
        .unwrap();
        assert_eq!(t6[0].local, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(
            (t6[0].state.as_str(), t6[0].rport, t6[0].pid),
            ("ESTABLISHED", 50001, 9)
        );
        let u = parse(Table::Udp4, &build::udp4(&[([127, 0, 0, 1], 53, 4)])).unwrap();
        assert_eq!(
            (u[0].state.as_str(), u[0].lport, u[0].pid),
            ("UNCONN", 53, 4)
        );
        let u6 = parse(
            Table::Udp6,
            &build::udp6(&[(Ipv6Addr::UNSPECIFIED, 5353, 8)]),
        )
        .unwrap();
        assert_eq!((u6[0].family, u6[0].lport), (Family::Ipv6, 5353));
    }

    #[test]
    fn short_buffers_are_errors() {
        let full = build::tcp4(&[(2, [0; 4], 80, [0; 4], 0, 1)]);
        for n in 0..full.len() {
            assert!(parse(Table::Tcp4, &full[..n]).is_err(), "{n}");
        }
        let mut lying = full.clone();
        lying[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(Table::Tcp4, &lying).is_err());
        assert_eq!(mib_tcp_state(42), "STATE42");
    }
}
