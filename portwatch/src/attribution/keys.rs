//! The key of attribution's tables by connection. The remote end of a
//! 4-tuple is chosen by whoever connects, so these tables keep std's keyed
//! SipHash; but a tuple's derived `Hash` makes a dozen small writes, each
//! of which costs SipHash more than its bytes do. [`NsKey`] hashes its
//! packed bytes in one write: the same hash quality for about a third of
//! the instructions, on a lookup most events make.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use super::{NsTuple, Tuple};

/// A 4-tuple in a network namespace, as a table key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsKey(pub NsTuple);

impl NsKey {
    pub fn new(netns: Option<u64>, t: Tuple) -> Self {
        NsKey((netns, t))
    }

    /// Every field in fixed places, so that distinct keys have distinct bytes.
    fn packed(&self) -> [u8; 48] {
        let (netns, (saddr, sport, daddr, dport)) = self.0;
        let mut b = [0u8; 48];
        if let Some(n) = netns {
            b[0] = 1;
            b[1..9].copy_from_slice(&n.to_le_bytes());
        }
        for (at, addr) in [(9, saddr), (28, daddr)] {
            match addr {
                IpAddr::V4(a) => {
                    b[at] = 4;
                    b[at + 1..at + 5].copy_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    b[at] = 6;
                    b[at + 1..at + 17].copy_from_slice(&a.octets());
                }
            }
        }
        b[26..28].copy_from_slice(&sport.to_le_bytes());
        b[45..47].copy_from_slice(&dport.to_le_bytes());
        b
    }
}

impl Hash for NsKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write(&self.packed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_differ_anywhere_pack_differently() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        let base = NsKey::new(Some(7), (ip("10.0.0.1"), 80, ip("10.0.0.2"), 40000));
        let others = [
            NsKey::new(None, base.0 .1),
            NsKey::new(Some(8), base.0 .1),
            NsKey::new(Some(7), (ip("::ffff:10.0.0.1"), 80, ip("10.0.0.2"), 40000)),
            NsKey::new(Some(7), (ip("10.0.0.1"), 81, ip("10.0.0.2"), 40000)),
            NsKey::new(Some(7), (ip("10.0.0.1"), 80, ip("10.0.0.3"), 40000)),
            NsKey::new(Some(7), (ip("10.0.0.1"), 80, ip("10.0.0.2"), 40001)),
            NsKey::new(Some(7), (ip("10.0.0.2"), 40000, ip("10.0.0.1"), 80)),
        ];
        for o in others {
            assert_ne!(o.packed(), base.packed(), "{o:?}");
        }
        assert_eq!(base.packed(), NsKey(base.0).packed());
    }
}
