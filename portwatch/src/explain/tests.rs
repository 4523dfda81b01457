//! One test per table entry, fed the runtime's own message as its
//! documentation, source code or a bug report shows it (the entry's comment
//! in table.rs says where), and the behaviour around the table.

use super::table::{CONDITIONS, ENTRIES};
use super::*;

/// Recognises `text` as entry `id`, with `side` first, and reads `port` and
/// `addr` from it.
fn check(id: &str, text: &str, side: Side, port: Option<u16>, addr: Option<&str>) {
    let r = match recognise(text) {
        Ok(r) => r,
        Err(u) => panic!("{id}: not recognised, understood {u:?}:\n{text}"),
    };
    assert_eq!(r.entry.id, id, "wrong entry for:\n{text}");
    assert_eq!(r.sides[0], side, "{id}: side");
    assert_eq!(r.understood.port, port, "{id}: port");
    assert_eq!(r.understood.address.as_deref(), addr, "{id}: address");
    let x = explain(&r);
    assert!(x.recognised && x.cause.is_some() && x.about_message.is_some());
    assert!(!x.fixes.is_empty(), "{id}: no fix");
    for s in x.fixes.iter().chain(x.cause.iter()) {
        assert!(!s.contains('{'), "{id}: unrendered template in {s}");
    }
}

macro_rules! entry_tests {
    ($( $name:ident: $id:literal, $text:expr, $side:expr, $port:expr, $addr:expr; )*) => {
        $(
            #[test]
            fn $name() {
                check($id, $text, $side, $port, $addr);
            }
        )*

        #[test]
        fn every_entry_has_a_test_with_its_documented_message() {
            let tested = [$($id),*];
            for e in ENTRIES {
                assert!(tested.contains(&e.id), "{} has no test", e.id);
            }
            for t in tested {
                assert!(ENTRIES.iter().any(|e| e.id == t), "{t} is not in the table");
            }
        }
    };
}

use Side::{Bind, Connect};

entry_tests! {
    sqlserver_26023_names_port_1433:
        "sqlserver-port-in-use",
        "2018-07-26 10:00:01.23 Server      Error: 26023, Severity: 16, State: 1.\n2018-07-26 10:00:01.23 Server      Server TCP provider failed to listen on [ 'any' <ipv4> 1433]. Tcp port is already in use.",
        Bind, Some(1433), None;
    sqlclient_tcp_provider_is_client_exhaustion:
        "sqlclient-tcp-provider",
        "System.Data.SqlClient.SqlException: An error has occurred while establishing a connection to the server. (provider: TCP Provider, error: 0 - Only one usage of each socket address (protocol/network address/port) is normally permitted.)",
        Connect, None, None;
    java_address_in_use_connect_is_exhaustion:
        "java-connect-address-in-use",
        "java.net.BindException: Address already in use: connect",
        Connect, None, None;
    java_no_buffer_space_is_exhaustion:
        "java-no-buffer-space",
        "Caused by: java.net.SocketException: No buffer space available (maximum connections reached?): connect",
        Connect, None, None;
    java_cannot_assign_from_connect0:
        "java-cannot-assign",
        "java.net.BindException: Cannot assign requested address\n\tat sun.nio.ch.Net.connect0(Native Method)\n\tat sun.nio.ch.Net.connect(Net.java:579)",
        Connect, None, None;
    java_bind_failed:
        "java-bind-address-in-use",
        "Exception in thread \"main\" java.net.BindException: Address already in use (Bind failed)",
        Bind, None, None;
    kestrel_failed_to_bind:
        "kestrel-address-in-use",
        "System.IO.IOException: Failed to bind to address http://127.0.0.1:5000: address already in use.",
        Bind, Some(5000), Some("127.0.0.1");
    dotnet_linux_98_from_dobind:
        "dotnet-linux-address-in-use",
        "System.Net.Sockets.SocketException (98): Address already in use\n   at System.Net.Sockets.Socket.DoBind(EndPoint endPointSnapshot, SocketAddress socketAddress)",
        Bind, None, None;
    dotnet_linux_99_from_connectasync:
        "dotnet-linux-cannot-assign",
        "System.Net.Sockets.SocketException (99): Cannot assign requested address\n   at System.Net.Sockets.Socket.AwaitableSocketAsyncEventArgs.ConnectAsync(Socket socket)",
        Connect, None, None;
    python_asyncio_names_address_and_port:
        "python-asyncio-bind",
        "OSError: [Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): address already in use",
        Bind, Some(8000), Some("0.0.0.0");
    python_errno_98_after_restart:
        "python-errno-98",
        "socket.error: [Errno 98] Address already in use",
        Bind, None, None;
    python_errno_99_from_requests:
        "python-errno-99",
        "requests.exceptions.ConnectionError: HTTPConnectionPool(host='10.0.0.5', port=8080): Max retries exceeded with url: / (Caused by NewConnectionError('<urllib3.connection.HTTPConnection object at 0x7f2c>: Failed to establish a new connection: [Errno 99] Cannot assign requested address'))",
        Connect, Some(8080), Some("10.0.0.5");
    python_winerror_10048:
        "python-winerror-10048",
        "OSError: [WinError 10048] Only one usage of each socket address (protocol/network address/port) is normally permitted",
        Bind, None, None;
    go_listen_address_in_use:
        "go-listen-address-in-use",
        "error listen tcp :9090: bind: address already in use",
        Bind, Some(9090), None;
    go_listen_only_one_usage_on_windows:
        "go-listen-only-one-usage",
        "error: listen tcp 127.0.0.1:8087: bind: Only one usage of each socket address (protocol/network address/port) is normally permitted.",
        Bind, Some(8087), Some("127.0.0.1");
    go_dial_connectex_on_windows:
        "go-dial-only-one-usage",
        "Get \"https://10.0.0.5/\": dial tcp 10.0.0.5:443: connectex: Only one usage of each socket address (protocol/network address/port) is normally permitted.",
        Connect, Some(443), Some("10.0.0.5");
    go_dial_cannot_assign:
        "go-dial-cannot-assign",
        "2014/09/04 16:20:20 Request error: Get http://10.1.2.3:8080/: dial tcp 10.1.2.3:8080: cannot assign requested address",
        Connect, Some(8080), Some("10.1.2.3");
    go_listen_cannot_assign:
        "go-listen-cannot-assign",
        "listen tcp 192.168.6.143:8080: bind: cannot assign requested address",
        Bind, Some(8080), Some("192.168.6.143");
    node_listen_eaddrinuse_ipv6_any:
        "node-listen-eaddrinuse",
        "Error: listen EADDRINUSE: address already in use :::5000\n    at Server.setupListenHandle [as _listen2] (net.js:1313:16)",
        Bind, Some(5000), Some("::");
    node_connect_eaddrnotavail:
        "node-connect-eaddrnotavail",
        "tunneling socket could not be established, cause=connect EADDRNOTAVAIL 35.224.36.62:8888 - Local (10.128.0.3:0)",
        Connect, Some(8888), Some("35.224.36.62");
    node_connect_enobufs_on_windows:
        "node-connect-enobufs",
        "Error: connect ENOBUFS 10.0.0.5:443 - Local (undefined:undefined)",
        Connect, Some(443), Some("10.0.0.5");
    node_listen_eaddrnotavail:
        "node-listen-eaddrnotavail",
        "Error: listen EADDRNOTAVAIL: address not available 82.65.165.5:53",
        Bind, Some(53), Some("82.65.165.5");
    nginx_bind_failed:
        "nginx-bind-failed",
        "nginx: [emerg] bind() to 0.0.0.0:80 failed (98: Address already in use)",
        Bind, Some(80), Some("0.0.0.0");
    nginx_upstream_cannot_assign:
        "nginx-upstream-connect",
        "2015/11/02 10:00:00 [crit] 12889#0: *32401195 connect() to 127.0.0.1:80 failed (99: Cannot assign requested address) while connecting to upstream",
        Connect, Some(80), Some("127.0.0.1");
    postgres_could_not_bind_with_hint:
        "postgres-could-not-bind",
        "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\nHINT:  Is another postmaster already running on port 5432? If not, wait a few seconds and retry.",
        Bind, Some(5432), Some("127.0.0.1");
    libpq_cannot_assign:
        "libpq-cannot-assign",
        "psql: error: connection to server at \"db.example.com\" (10.0.0.7), port 5432 failed: Cannot assign requested address",
        Connect, Some(5432), Some("10.0.0.7");
    dotnet_only_one_usage_from_doconnect:
        "windows-only-one-usage",
        "System.Net.Internals.SocketExceptionFactory+ExtendedSocketException (10048): Only one usage of each socket address (protocol/network address/port) is normally permitted\nat System.Net.Sockets.Socket.DoConnect(EndPoint endPointSnapshot, SocketAddress socketAddress)",
        Connect, None, None;
    dotnet_not_valid_in_its_context:
        "windows-not-valid-in-context",
        "System.Net.Sockets.SocketException (10049): The requested address is not valid in its context",
        Connect, None, None;
    winsock_10055_no_buffer_space:
        "windows-no-buffer-space",
        "An operation on a socket could not be performed because the system lacked sufficient buffer space or because a queue was full.",
        Connect, None, None;
    winsock_10013_forbidden:
        "windows-forbidden-access",
        "System.Net.Sockets.SocketException (10013): An attempt was made to access a socket in a way forbidden by its access permissions",
        Bind, None, None;
    socat_address_already_in_use:
        "errno-eaddrinuse",
        "2021/07/03 21:32:09 socat[320904] E bind(5, {AF=2 0.0.0.0:5555}, 16): Address already in use",
        Bind, Some(5555), Some("0.0.0.0");
    erlang_eaddrnotavail_on_connect:
        "errno-eaddrnotavail",
        "client(5296): connect error - eaddrnotavail",
        Connect, None, None;
}

#[test]
fn every_pattern_compiles_and_ids_are_unique() {
    assert_eq!(
        compiled().len(),
        ENTRIES.len(),
        "a pattern does not compile"
    );
    for e in ENTRIES {
        assert_eq!(
            ENTRIES.iter().filter(|o| o.id == e.id).count(),
            1,
            "{}",
            e.id
        );
        assert!(!e.sides.is_empty(), "{}", e.id);
    }
}

#[test]
fn every_condition_an_entry_can_reach_is_described() {
    for e in ENTRIES {
        for s in e.sides {
            let c = Condition::of(e.error, *s, e.platform);
            let info = c.info().unwrap_or_else(|| panic!("{}: no {c:?}", e.id));
            let fixes = match e.platform {
                Platform::Windows => info.fixes_windows,
                Platform::Any => info.fixes_linux,
            };
            assert!(
                !fixes.is_empty() || !e.fixes.is_empty(),
                "{}: {c:?} has no fix",
                e.id
            );
        }
    }
    assert_eq!(CONDITIONS.len(), 5);
}

#[test]
fn the_misleading_messages_of_the_issue_are_explained_as_such() {
    // Java's and .NET's "in use" on an outgoing connection: exhaustion.
    for text in [
        "java.net.BindException: Address already in use: connect",
        "System.Net.Sockets.SocketException (10048): Only one usage of each socket address (protocol/network address/port) is normally permitted.\n   at System.Net.Sockets.Socket.Connect(EndPoint remoteEP)",
    ] {
        let x = explain(&recognise(text).expect("recognised"));
        assert_eq!(x.condition, Some(Condition::EphemeralExhausted), "{text}");
        assert!(x.misleading.is_some(), "{text}");
        let cause = x.cause.unwrap_or_default();
        assert!(cause.contains("no free local port"), "{cause}");
        assert!(x.myths.iter().any(|m| m.contains("tcp_tw_recycle") && m.contains("4.12")));
        assert!(x.myths.iter().any(|m| m.contains("tcp_fin_timeout")));
    }
    // Python's [Errno 98] after a restart: TIME_WAIT and SO_REUSEADDR.
    let x = explain(&recognise("OSError: [Errno 98] Address already in use").expect("py"));
    assert_eq!(x.condition, Some(Condition::PortHeld));
    assert!(x.about_message.unwrap_or_default().contains("TIME_WAIT"));
    assert!(x.fixes[0].contains("SO_REUSEADDR") && x.fixes[0].contains("before bind()"));
    // SQL Server: a client that took the port, and the reservation fixes.
    let x = explain(&recognise("Server TCP provider failed to listen on [ 'any' <ipv4> 1433]. Tcp port is already in use.").expect("sql"));
    assert!(x.about_message.unwrap_or_default().contains("ephemeral"));
    assert!(x.fixes.iter().any(|f| f.contains("excludedportrange")
        && f.contains("startport=1433")
        && f.contains("store=persistent")));
    assert!(x
        .fixes
        .iter()
        .any(|f| f == "Linux: portwatch reserve 1433 --persist"));
}

#[test]
fn the_stack_trace_decides_between_bind_and_connect() {
    let bind = "java.net.BindException: Cannot assign requested address\n    at sun.nio.ch.Net.bind0(Native Method)\n    at sun.nio.ch.ServerSocketChannelImpl.bind(ServerSocketChannelImpl.java:214)";
    let r = recognise(bind).expect("java");
    assert_eq!(r.sides, vec![Side::Bind]);
    assert_eq!(explain(&r).condition, Some(Condition::NotLocalAddress));
    // .NET's 98 from a connect path: a client that bound first ran out of ports.
    let r = recognise("System.Net.Sockets.SocketException (98): Address already in use\n   at System.Net.Sockets.Socket.DoConnect(EndPoint endPointSnapshot, SocketAddress socketAddress)").expect("dotnet");
    assert_eq!(r.sides, vec![Side::Connect]);
    assert_eq!(explain(&r).condition, Some(Condition::EphemeralExhausted));
    // Without a stack trace both stay possible, the likelier first.
    let r = recognise("[Errno 99] Cannot assign requested address").expect("py");
    assert_eq!(r.sides, vec![Side::Connect, Side::Bind]);
    let x = explain(&r);
    assert_eq!(x.other_side, Some(Side::Bind));
    assert!(x
        .cause_if_other_side
        .unwrap_or_default()
        .contains("not assigned"));
    // On Windows 10049 from connect() is a bad destination, not exhaustion.
    let x = explain(&recognise("SocketException (10049): The requested address is not valid in its context.\n at System.Net.Sockets.Socket.Connect(").expect("w"));
    assert_eq!(x.condition, Some(Condition::BadDestination));
}

#[test]
fn specific_entries_win_over_the_generic_ones() {
    // Each of these also contains a generic errno text or Windows message.
    let cases = [
        ("TDSSNIClient initialization failed with error 0x2740, status code 0xa. Reason: Unable to initialize the TCP/IP listener. Only one usage of each socket address (protocol/network address/port) is normally permitted.", "sqlserver-port-in-use"),
        ("Unable to start Kestrel. System.IO.IOException: Failed to bind to address http://[::]:8096: address already in use.\n ---> System.Net.Sockets.SocketException (98): Address already in use", "kestrel-address-in-use"),
        ("nginx: [emerg] bind() to [::]:80 failed (98: Address already in use)", "nginx-bind-failed"),
        ("java.net.BindException: Address already in use: JVM_Bind", "java-bind-address-in-use"),
    ];
    for (text, id) in cases {
        assert_eq!(recognise(text).expect(id).entry.id, id, "{text}");
    }
    let r = recognise(cases[1].0).expect("kestrel");
    assert_eq!(
        (r.understood.address.as_deref(), r.understood.port),
        (Some("::"), Some(8096))
    );
}

#[test]
fn unrecognised_text_says_what_was_understood() {
    let u = recognise("curl: (7) Failed to connect to 10.0.0.5 port 8080: Connection refused")
        .unwrap_err();
    assert_eq!(u.port, Some(8080));
    assert_eq!(u.address.as_deref(), Some("10.0.0.5"));
    assert_eq!(
        u.errno.as_ref().map(|e| e.name.as_str()),
        Some("ECONNREFUSED")
    );
    let u = recognise("OSError: [Errno 111] Connection refused").unwrap_err();
    assert_eq!(u.errno.as_ref().and_then(|e| e.number), Some(111));
    let u = recognise("connect failed: WSAECONNREFUSED").unwrap_err();
    let e = u.errno.expect("wsa");
    assert_eq!(
        (e.name.as_str(), e.windows_code, e.system),
        ("ECONNREFUSED", Some(10061), "windows")
    );
    // A traceback's source line names the port when the code wrote it out.
    let r = recognise("  File \"server.py\", line 4, in <module>\n    s.bind((\"0.0.0.0\", 8000))\nOSError: [Errno 98] Address already in use").expect("py");
    assert_eq!(
        (r.understood.address.as_deref(), r.understood.port),
        (Some("0.0.0.0"), Some(8000))
    );
    let u = recognise("it broke at 10:03:44 somehow").unwrap_err();
    assert_eq!(u, Understood::default());
    let x = not_recognised("\n  first line\nsecond", Understood::default());
    assert!(!x.recognised && x.message == "first line" && x.fixes.is_empty());
}

#[test]
fn templates_render_known_and_unknown_values() {
    let v = Values {
        port: Some(1433),
        addr: Some("::1".into()),
    };
    assert_eq!(
        v.render("{endpoint} {endpoint_unbracketed} {port} {addr} {the_port}"),
        "[::1]:1433 ::1:1433 1433 ::1 port 1433"
    );
    assert_eq!(
        Values::default().render("reserve {port} at {endpoint}, {the_port}"),
        "reserve PORT at ADDRESS:PORT, the port"
    );
}

#[test]
fn trace_hints_name_each_runtime_once_in_one_line() {
    let addr = Some(IpAddr::from([127, 0, 0, 1]));
    let h = runtime_messages("EADDRNOTAVAIL", Side::Connect, addr, Some(8080)).expect("hint");
    assert!(h.starts_with("java: \"java.net.BindException: Cannot assign requested address\" · python: \"[Errno 99] Cannot assign requested address\""), "{h}");
    assert!(
        h.contains("go: \"dial tcp 127.0.0.1:8080: connect: cannot assign requested address\""),
        "{h}"
    );
    assert!(
        h.contains("node.js: \"connect EADDRNOTAVAIL 127.0.0.1:8080\""),
        "{h}"
    );
    assert!(
        !h.contains('\n') && h.matches(" · ").count() < HINT_RUNTIMES,
        "{h}"
    );
    let b = runtime_messages(
        "EADDRINUSE",
        Side::Bind,
        Some(IpAddr::from([0, 0, 0, 0])),
        Some(1433),
    )
    .expect("bind");
    assert!(
        b.contains("python: \"[Errno 98] Address already in use\""),
        "{b}"
    );
    assert!(
        b.contains("go: \"listen tcp 0.0.0.0:1433: bind: address already in use\""),
        "{b}"
    );
    // Windows-only wordings are not offered on Linux.
    assert!(
        !b.contains("Only one usage") && !b.contains("JVM_Bind"),
        "{b}"
    );
    let c = runtime_messages("EADDRINUSE", Side::Connect, addr, Some(80)).expect("connect");
    assert!(
        !c.contains("Address already in use: connect") && !c.contains("connectex"),
        "{c}"
    );
    assert!(
        c.contains(".net: \"SocketException (98): Address already in use\""),
        "{c}"
    );
    assert_eq!(
        runtime_messages("ECONNREFUSED", Side::Connect, addr, Some(1)),
        None
    );
}

#[test]
fn every_raised_message_is_recognised_as_its_runtime() {
    let v = Values {
        port: Some(1433),
        addr: Some("127.0.0.1".into()),
    };
    for e in ENTRIES {
        if let Some(raises) = e.raises {
            let text = v.render(raises);
            let r = recognise(&text).unwrap_or_else(|_| panic!("{}: {text}", e.id));
            assert_eq!(
                r.entry.runtime, e.runtime,
                "{}: {text} read as {}",
                e.id, r.entry.id
            );
            assert_eq!(r.entry.error, e.error, "{}: {text}", e.id);
        }
    }
}
