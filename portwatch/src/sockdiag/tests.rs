use super::*;
use crate::testutil::inode_of;
use std::io::{Read, Write};
use std::net::{
    Ipv4Addr, Shutdown, SocketAddr as StdSocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const ESTABLISHED: u8 = 1;
const TIME_WAIT: u8 = 6;
const CLOSE: u8 = 7;
const LISTEN: u8 = 10;

fn find(entries: &[SocketEntry], proto: Proto, local: StdSocketAddr) -> Vec<&SocketEntry> {
    entries
        .iter()
        .filter(|e| e.proto == proto && e.saddr == local.ip() && e.sport == local.port())
        .collect()
}

/// A request whose answer never comes (here: none was sent) ends in a
/// timeout, not a hang of the thread that asked.
#[test]
fn a_missing_answer_times_out() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut d = SockDiag::new().expect("sock_diag socket");
        let _ = tx.send(d.recv_datagram().map(|_| ()));
    });
    let got = rx
        .recv_timeout(RECV_TIMEOUT * 5)
        .expect("the receive must give up within its timeout");
    assert!(matches!(got, Err(SockDiagError::Timeout(_))), "{got:?}");
}

#[test]
fn listeners_v4_and_v6_found_by_port_with_inode() {
    let mut sd = SockDiag::new().unwrap();
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let l = TcpListener::bind(bind).unwrap();
        let local = l.local_addr().unwrap();
        let entries = sd.sockets_on_port(local.port()).unwrap();
        assert!(entries.iter().all(|e| e.sport == local.port()));
        let hits = find(&entries, Proto::Tcp, local);
        assert_eq!(hits.len(), 1, "{bind}: {entries:?}");
        let e = hits[0];
        assert_eq!(e.state, LISTEN);
        assert_eq!(e.inode, inode_of(&l));
        assert_ne!(e.inode, 0);
        assert_eq!(e.uid, unsafe { libc::geteuid() });
        assert!(e.daddr.is_unspecified());
        assert_eq!(e.dport, 0);
        // The kernel sets v6only when binding a specific IPv6 address.
        assert_eq!(e.ipv6_only, e.saddr.is_ipv6());
        assert_eq!(e.saddr.is_ipv4(), bind.starts_with("127"));
    }
}

#[test]
fn established_pair_found_by_lookup_and_dump() {
    let mut sd = SockDiag::new().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    let c_local = client.local_addr().unwrap();
    let c_peer = client.peer_addr().unwrap();

    let e = sd
        .tcp_lookup(c_local.ip(), c_local.port(), c_peer.ip(), c_peer.port())
        .unwrap()
        .expect("client socket found");
    assert_eq!(e.state, ESTABLISHED);
    assert_eq!(e.inode, inode_of(&client));
    assert_eq!((e.daddr, e.dport), (c_peer.ip(), c_peer.port()));

    // The server side is a different socket with its own inode.
    let s_local = server.local_addr().unwrap();
    let s_peer = server.peer_addr().unwrap();
    let s = sd
        .tcp_lookup(s_local.ip(), s_local.port(), s_peer.ip(), s_peer.port())
        .unwrap()
        .expect("server socket found");
    assert_eq!(s.inode, inode_of(&server));
    assert_ne!(s.inode, e.inode);

    // The state mask is honoured: ESTABLISHED-only sees the client but
    // not the listener; LISTEN-only the reverse.
    let est = sd.tcp_sockets(1 << ESTABLISHED).unwrap();
    assert!(est.iter().all(|x| x.state == ESTABLISHED));
    assert!(est.iter().any(|x| x.inode == inode_of(&client)));
    assert!(!est.iter().any(|x| x.inode == inode_of(&l)));
    let lis = sd.tcp_sockets(1 << LISTEN).unwrap();
    assert!(lis.iter().all(|x| x.state == LISTEN));
    assert!(lis.iter().any(|x| x.inode == inode_of(&l)));
    assert!(!lis.iter().any(|x| x.inode == inode_of(&client)));
    let all = sd.tcp_sockets(TCP_ALL_STATES).unwrap();
    for fd in [inode_of(&l), inode_of(&client), inode_of(&server)] {
        assert!(all.iter().any(|x| x.inode == fd));
    }

    // The listener's port now has the listener and the accepted socket.
    let on_port = sd.sockets_on_port(s_local.port()).unwrap();
    let mut states: Vec<u8> = on_port
        .iter()
        .filter(|x| x.proto == Proto::Tcp)
        .map(|x| x.state)
        .collect();
    states.sort();
    assert_eq!(states, vec![ESTABLISHED, LISTEN]);
}

#[test]
fn ipv6_lookup_and_v6only_flag() {
    let mut sd = SockDiag::new().unwrap();
    let l = TcpListener::bind("[::1]:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (_server, _) = l.accept().unwrap();
    let lo = client.local_addr().unwrap();
    let pe = client.peer_addr().unwrap();
    let e = sd
        .tcp_lookup(lo.ip(), lo.port(), pe.ip(), pe.port())
        .unwrap()
        .expect("v6 client found");
    assert_eq!(e.state, ESTABLISHED);
    assert_eq!(e.inode, inode_of(&client));
    assert!(e.saddr.is_ipv6());

    // Binding a specific IPv6 address makes the kernel set v6only; a
    // wildcard bind keeps the sysctl default (0 unless bindv6only=1).
    // Compare with what getsockopt says, for both kinds.
    for bind in ["[::1]:0", "[::]:0"] {
        let u = UdpSocket::bind(bind).unwrap();
        let local = u.local_addr().unwrap();
        let entries = sd.sockets_on_port(local.port()).unwrap();
        let hit = find(&entries, Proto::Udp, local);
        assert_eq!(hit.len(), 1, "{bind}: {entries:?}");
        assert_eq!(hit[0].ipv6_only, v6only(&u), "{bind}");
    }
    assert!(v6only(&l));
    let lis = sd
        .tcp_lookup(
            l.local_addr().unwrap().ip(),
            l.local_addr().unwrap().port(),
            Ipv6Addr::UNSPECIFIED.into(),
            0,
        )
        .unwrap()
        .expect("listener found");
    assert_eq!(lis.state, LISTEN);
    assert!(lis.ipv6_only);
}

fn v6only(fd: &impl AsRawFd) -> bool {
    let mut val: libc::c_int = -1;
    let mut len = std::mem::size_of_val(&val) as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &mut val as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    val != 0
}

#[test]
fn udp_sockets_found_with_state() {
    let mut sd = SockDiag::new().unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("[::1]:0").unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.connect(a.local_addr().unwrap()).unwrap();

    let entries = sd.sockets_on_port(a.local_addr().unwrap().port()).unwrap();
    let hit = find(&entries, Proto::Udp, a.local_addr().unwrap());
    assert_eq!(hit.len(), 1, "{entries:?}");
    assert_eq!(hit[0].state, CLOSE);
    assert_eq!(hit[0].inode, inode_of(&a));

    let entries = sd.sockets_on_port(b.local_addr().unwrap().port()).unwrap();
    let hit = find(&entries, Proto::Udp, b.local_addr().unwrap());
    assert_eq!(hit.len(), 1, "{entries:?}");
    assert_eq!(hit[0].inode, inode_of(&b));

    let entries = sd.sockets_on_port(c.local_addr().unwrap().port()).unwrap();
    let hit = find(&entries, Proto::Udp, c.local_addr().unwrap());
    assert_eq!(hit.len(), 1, "{entries:?}");
    assert_eq!(hit[0].state, ESTABLISHED);
    assert_eq!(hit[0].dport, a.local_addr().unwrap().port());
}

#[test]
fn time_wait_found_by_lookup_and_missing_tuple_is_none() {
    let mut sd = SockDiag::new().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut server, _) = l.accept().unwrap();
    let lo = client.local_addr().unwrap();
    let pe = client.peer_addr().unwrap();
    client.write_all(b"x").unwrap();

    // Active close by the CLIENT: it is the side that ends in TIME_WAIT.
    client.shutdown(Shutdown::Both).unwrap();
    drop(client);
    let mut sink = Vec::new();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    server.read_to_end(&mut sink).unwrap();
    assert_eq!(sink, b"x");
    drop(server);

    let deadline = Instant::now() + Duration::from_secs(5);
    let e = loop {
        let e = sd
            .tcp_lookup(lo.ip(), lo.port(), pe.ip(), pe.port())
            .unwrap()
            .expect("client tuple still known to the kernel");
        if e.state == TIME_WAIT || Instant::now() > deadline {
            break e;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(e.state, TIME_WAIT, "{e:?}");
    assert_eq!(e.inode, 0);
    assert_eq!((e.saddr, e.sport), (lo.ip(), lo.port()));
    assert_eq!((e.daddr, e.dport), (pe.ip(), pe.port()));

    // The dump sees it too, under the client's local port.
    let on_port = sd.sockets_on_port(lo.port()).unwrap();
    assert!(on_port
        .iter()
        .any(|x| x.state == TIME_WAIT && x.dport == pe.port() && x.inode == 0));

    // Same local endpoint, different remote: nothing listens on the
    // client's ephemeral port, so the kernel must answer ENOENT.
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(
        sd.tcp_lookup(lo.ip(), lo.port(), other, pe.port()).unwrap(),
        None
    );
    // The listener's port with an unknown remote: the kernel answers with
    // the listener, which is not the requested connection.
    let la = l.local_addr().unwrap();
    assert_eq!(
        sd.tcp_lookup(la.ip(), la.port(), other, 4444).unwrap(),
        None
    );
    let unspec = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let lis = sd.tcp_lookup(la.ip(), la.port(), unspec, 0).unwrap();
    assert_eq!(
        lis.map(|e| (e.state, e.inode)),
        Some((LISTEN, inode_of(&l)))
    );
    // And the socket is still usable after an error reply.
    assert!(sd
        .tcp_lookup(lo.ip(), lo.port(), pe.ip(), pe.port())
        .unwrap()
        .is_some());
}

#[test]
fn raw_state_mask_bits_are_sent_unchanged() {
    let req = Request {
        family: AF_INET,
        proto: Proto::Tcp,
        states: TCP_ALL_STATES,
        socket_id: SocketId::new_v4(),
        dump: true,
        what: "test",
    };
    let buf = encode_request(&req, 7);
    let nl = NetlinkBuffer::new_checked(&buf[..]).unwrap();
    assert_eq!(nl.sequence_number(), 7);
    assert_eq!(nl.flags(), NLM_F_REQUEST | NLM_F_DUMP);
    let inner = InetRequestBuffer::new(nl.payload());
    assert_eq!(inner.states(), TCP_ALL_STATES);
    assert_eq!(inner.protocol(), IPPROTO_TCP);
}
