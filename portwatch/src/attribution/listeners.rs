//! Listening sockets this run has seen, keyed as the kernel matches an
//! accepted connection to its listener: network namespace, family, port and
//! address (a wildcard listener serves every address of its namespace).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Known;
use crate::model::Family;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub netns: Option<u64>,
    pub family: Family,
    pub port: u16,
    pub addr: IpAddr,
}

impl ListenerKey {
    /// The same key with the family's wildcard address.
    fn wildcard(&self) -> ListenerKey {
        ListenerKey {
            addr: match self.family {
                Family::Ipv4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Family::Ipv6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            },
            ..self.clone()
        }
    }
}

#[derive(Clone, Debug)]
struct Listening {
    owner: Known,
    /// Sockets listening on the key (several with SO_REUSEPORT).
    count: u32,
    /// Two processes listened on it at once: a child's owner is unknowable.
    ambiguous: bool,
    /// From the start-up snapshot: the listen event of the same socket may
    /// still arrive (it raced the snapshot) and must not count twice.
    seeded: bool,
}

/// Who an accepted child belongs to.
#[derive(Clone, Debug, PartialEq)]
pub enum ChildOwner<'a> {
    Known(&'a Known),
    /// Several processes listen on its address.
    Ambiguous,
    /// No listener seen.
    Unknown,
}

/// Upper bound on listeners remembered, so a long trace stays small.
const MAX_LISTENERS: usize = 16384;

#[derive(Default)]
pub struct Listeners {
    map: HashMap<ListenerKey, Listening>,
}

impl Listeners {
    pub fn listen(&mut self, key: ListenerKey, owner: Known) {
        if self.map.len() >= MAX_LISTENERS && !self.map.contains_key(&key) {
            self.map.clear();
        }
        let entry = self.map.entry(key).or_insert_with(|| Listening {
            owner: owner.clone(),
            count: 0,
            ambiguous: false,
            seeded: false,
        });
        if entry.seeded && entry.owner.pid == owner.pid {
            // The seeded socket itself, or another of the same process.
            entry.seeded = false;
            entry.owner = owner;
            return;
        }
        if entry.count == 0 {
            entry.owner = owner;
            entry.ambiguous = false;
        } else if entry.owner.pid != owner.pid {
            entry.ambiguous = true;
        }
        entry.seeded = false;
        entry.count += 1;
    }

    /// A listener that existed before the trace (`owner` None: several
    /// processes may accept on it).
    pub fn seed(&mut self, key: ListenerKey, owner: Option<Known>) {
        if self.map.len() >= MAX_LISTENERS {
            return;
        }
        let ambiguous = owner.is_none();
        let owner = owner.unwrap_or_else(|| Known::seeded(0, String::new(), 0, None));
        self.map.insert(
            key,
            Listening {
                owner,
                count: 1,
                ambiguous,
                seeded: true,
            },
        );
    }

    pub fn close(&mut self, key: &ListenerKey) {
        if let Some(l) = self.map.get_mut(key) {
            if l.count <= 1 {
                self.map.remove(key);
            } else {
                l.count -= 1;
            }
        }
    }

    /// The listener a child with local address `key.addr` came from: an
    /// exact listener, else the wildcard one.
    pub fn of_child(&self, key: &ListenerKey) -> ChildOwner<'_> {
        let found = self.map.get(key).or_else(|| self.map.get(&key.wildcard()));
        match found {
            Some(l) if l.ambiguous => ChildOwner::Ambiguous,
            Some(l) => ChildOwner::Known(&l.owner),
            None => ChildOwner::Unknown,
        }
    }

    /// Listeners on `port` in namespace `netns`, with whether their owner is certain.
    pub fn on_port(
        &self,
        netns: Option<u64>,
        port: u16,
    ) -> impl Iterator<Item = (&ListenerKey, &Known, bool)> {
        self.map
            .iter()
            .filter(move |(k, _)| k.netns == netns && k.port == port)
            .map(|(k, l)| (k, &l.owner, !l.ambiguous))
    }
}
