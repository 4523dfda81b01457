//! Reading ETW payloads: little-endian fields in manifest order, pointers of
//! the event's own size, and the `win:Binary` socket addresses TCPIP logs.
//! Every read is bounds-checked: a short or inconsistent payload is an
//! error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::Family;

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{provider} event {id} v{version}: payload ends at byte {have} inside field {field} (needs {need} bytes from byte {at})")]
    Truncated {
        provider: &'static str,
        id: u16,
        version: u8,
        field: &'static str,
        at: usize,
        need: usize,
        have: usize,
    },
    #[error("{provider} event {id} v{version}: field {field}: {what}")]
    Malformed {
        provider: &'static str,
        id: u16,
        version: u8,
        field: &'static str,
        what: String,
    },
}

/// The width of `win:Pointer` fields: the event header says which
/// (EVENT_HEADER_FLAG_32_BIT_HEADER / _64_BIT_HEADER).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointerSize {
    Four,
    Eight,
}

impl PointerSize {
    pub fn bytes(self) -> usize {
        match self {
            PointerSize::Four => 4,
            PointerSize::Eight => 8,
        }
    }
}

/// A cursor over one event's payload, naming the event in its errors.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    provider: &'static str,
    id: u16,
    version: u8,
    pointer: PointerSize,
}

/// AF_INET and AF_INET6 as Windows numbers them (ws2def.h).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 23;

impl<'a> Reader<'a> {
    pub fn new(
        data: &'a [u8],
        provider: &'static str,
        id: u16,
        version: u8,
        pointer: PointerSize,
    ) -> Self {
        Reader {
            data,
            pos: 0,
            provider,
            id,
            version,
            pointer,
        }
    }

    pub fn malformed(&self, field: &'static str, what: impl Into<String>) -> DecodeError {
        DecodeError::Malformed {
            provider: self.provider,
            id: self.id,
            version: self.version,
            field,
            what: what.into(),
        }
    }

    pub fn bytes(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len());
        match end {
            Some(end) => {
                let out = &self.data[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(DecodeError::Truncated {
                provider: self.provider,
                id: self.id,
                version: self.version,
                field,
                at: self.pos,
                need: n,
                have: self.data.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.bytes(field, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_le_bytes)
    }

    /// A `win:UInt16` with outType `win:Port`: network byte order.
    pub fn port(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_be_bytes)
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_le_bytes)
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_le_bytes)
    }

    /// `win:Pointer`, widened to 64 bits.
    pub fn pointer(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        match self.pointer {
            PointerSize::Four => self.u32(field).map(u64::from),
            PointerSize::Eight => self.u64(field),
        }
    }

    /// A `win:UInt32` IPv4 address (outType win:IPv4): bytes in network order.
    pub fn ipv4(&mut self, field: &'static str) -> Result<IpAddr, DecodeError> {
        self.array::<4>(field)
            .map(|b| IpAddr::V4(Ipv4Addr::from(b)))
    }

    /// A 16-byte IN6_ADDR.
    pub fn ipv6(&mut self, field: &'static str) -> Result<IpAddr, DecodeError> {
        self.array::<16>(field)
            .map(|b| IpAddr::V6(Ipv6Addr::from(b)))
    }

    /// A `UInt32 XxxLength` followed by `Binary Xxx` of that length holding
    /// a SOCKADDR_IN or SOCKADDR_IN6 (outType win:SocketAddress).
    pub fn sockaddr_with_len(
        &mut self,
        len_field: &'static str,
        field: &'static str,
    ) -> Result<SockAddr, DecodeError> {
        let len = self.u32(len_field)? as usize;
        let bytes = self.bytes(field, len)?;
        parse_sockaddr(bytes).map_err(|what| self.malformed(field, what))
    }

    /// Whether fields remain (a newer template appends fields; callers
    /// read the ones they know and ignore the rest).
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
}

/// A socket address as TCPIP logs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockAddr {
    pub family: Family,
    pub addr: IpAddr,
    pub port: u16,
}

/// SOCKADDR_IN (16 bytes: family, port in network order, 4-byte address,
/// 8 zero bytes) or SOCKADDR_IN6 (28 bytes: family, port, flowinfo,
/// 16-byte address, scope id). A buffer too short for its family, or an
/// unknown family, is malformed.
pub fn parse_sockaddr(b: &[u8]) -> Result<SockAddr, String> {
    if b.len() < 2 {
        return Err(format!("{} bytes, too short for a socket address", b.len()));
    }
    let family = u16::from_le_bytes([b[0], b[1]]);
    match family {
        AF_INET if b.len() >= 8 => Ok(SockAddr {
            family: Family::Ipv4,
            port: u16::from_be_bytes([b[2], b[3]]),
            addr: IpAddr::V4(Ipv4Addr::new(b[4], b[5], b[6], b[7])),
        }),
        AF_INET6 if b.len() >= 24 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[8..24]);
            Ok(SockAddr {
                family: Family::Ipv6,
                port: u16::from_be_bytes([b[2], b[3]]),
                addr: IpAddr::V6(Ipv6Addr::from(a)),
            })
        }
        AF_INET | AF_INET6 => Err(format!(
            "{} bytes, too short for address family {family}",
            b.len()
        )),
        other => Err(format!("unknown address family {other}")),
    }
}

/// ETW timestamps (FILETIME: 100 ns ticks since 1601-01-01 UTC) as Unix ns.
pub fn filetime_to_unix_ns(ticks: i64) -> i128 {
    const EPOCH_DIFF_TICKS: i128 = 116_444_736_000_000_000;
    (i128::from(ticks) - EPOCH_DIFF_TICKS) * 100
}

/// Test and fuzz helpers: payloads laid out field by field as the manifests
/// define them.
#[cfg(test)]
pub mod build {
    use super::*;

    #[derive(Default, Clone)]
    pub struct Payload(pub Vec<u8>);

    impl Payload {
        pub fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        pub fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        pub fn port(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        pub fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        pub fn ptr(self, p: PointerSize, v: u64) -> Self {
            match p {
                PointerSize::Four => self.u32(v as u32),
                PointerSize::Eight => self.u64(v),
            }
        }
        pub fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        /// `UInt32 length` + `Binary` SOCKADDR_IN/IN6.
        pub fn sockaddr(self, a: &str) -> Self {
            let b = sockaddr_bytes(a);
            self.u32(b.len() as u32).raw(&b)
        }
    }

    /// SOCKADDR_IN / SOCKADDR_IN6 bytes for "1.2.3.4:80" or "[::1]:80".
    pub fn sockaddr_bytes(a: &str) -> Vec<u8> {
        let sa: std::net::SocketAddr = a.parse().expect("test address");
        let mut b = Vec::new();
        match sa.ip() {
            IpAddr::V4(v4) => {
                b.extend_from_slice(&AF_INET.to_le_bytes());
                b.extend_from_slice(&sa.port().to_be_bytes());
                b.extend_from_slice(&v4.octets());
                b.extend_from_slice(&[0; 8]);
            }
            IpAddr::V6(v6) => {
                b.extend_from_slice(&AF_INET6.to_le_bytes());
                b.extend_from_slice(&sa.port().to_be_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
                b.extend_from_slice(&v6.octets());
                b.extend_from_slice(&0u32.to_le_bytes());
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_of_both_families_and_bad_ones() {
        let v4 = parse_sockaddr(&build::sockaddr_bytes("10.1.2.3:1433")).unwrap();
        assert_eq!(v4.port, 1433);
        assert_eq!(v4.addr, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(v4.family, Family::Ipv4);
        let v6 = parse_sockaddr(&build::sockaddr_bytes("[fe80::1]:50000")).unwrap();
        assert_eq!(v6.port, 50000);
        assert_eq!(v6.family, Family::Ipv6);
        assert_eq!(v6.addr, "fe80::1".parse::<IpAddr>().unwrap());
        assert!(parse_sockaddr(&[2]).is_err());
        assert!(parse_sockaddr(&[2, 0, 0, 80]).is_err());
        assert!(parse_sockaddr(&[23, 0, 0, 80, 0, 0, 0, 0, 1]).is_err());
        let e = parse_sockaddr(&[99, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert!(e.contains("family 99"), "{e}");
    }

    #[test]
    fn reads_are_bounded_and_name_the_field() {
        let mut r = Reader::new(&[1, 0, 0], "TCPIP", 1051, 0, PointerSize::Eight);
        assert_eq!(r.u16("A").unwrap(), 1);
        let e = r.u32("OldState").unwrap_err();
        assert!(e.to_string().contains("OldState"), "{e}");
        // A length that runs past the end is an error, not a panic.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff], "T", 1, 0, PointerSize::Four);
        assert!(r.sockaddr_with_len("Len", "Addr").is_err());
        let mut r = Reader::new(&[1, 2, 3, 4], "T", 1, 0, PointerSize::Four);
        assert_eq!(r.pointer("P").unwrap(), 0x0403_0201);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn filetime_epoch() {
        assert_eq!(filetime_to_unix_ns(116_444_736_000_000_000), 0);
        assert_eq!(filetime_to_unix_ns(116_444_736_000_000_001), 100);
    }
}
