//! What portwatch knows about applications' port errors: one [`Entry`] per
//! runtime and error, and one [`ConditionInfo`] per kernel-level cause.
//!
//! Entries are tried in order and the first whose pattern matches wins, so
//! the specific ones (a runtime's own wording) come before the generic ones
//! (a Windows system message many runtimes share, the plain errno names).
//! Each entry says where its wording comes from; each has a unit test in
//! `explain/tests.rs` that feeds it that documented message.
//!
//! Templates in `cause`, `fixes` and `raises` may use `{port}`, `{addr}`
//! and `{endpoint}` (`addr:port`, IPv6 in brackets) and
//! `{endpoint_unbracketed}`; unknown values print as `PORT`, `ADDRESS`,
//! `ADDRESS:PORT`, for commands. Prose uses `{the_port}`: `port 1433`, or
//! `the port` when the message names none.

use super::{Condition, Error, Platform, Side};

#[derive(Debug)]
pub struct Entry {
    /// Stable name, used in JSON and tests.
    pub id: &'static str,
    pub runtime: &'static str,
    /// Where the wording comes from (Windows-only text, or either OS).
    pub platform: Platform,
    /// A regular expression (`regex` crate syntax); `(?P<addr>)` and
    /// `(?P<port>)` capture the address and port when the message has them.
    pub pattern: &'static str,
    pub error: Error,
    /// The calls that raise this message, most likely first.
    pub sides: &'static [Side],
    /// One sentence about this message: what the runtime did and what it means.
    pub cause: &'static str,
    /// Why the message points the wrong way, where it does.
    pub misleading: Option<&'static str>,
    /// Fixes in this runtime's own terms, most likely first.
    pub fixes: &'static [&'static str],
    /// The message this runtime raises for a failed bind()/connect() with
    /// `error` on one of `sides`: shown under failures by trace and history.
    pub raises: Option<&'static str>,
}

use Error::*;
use Platform::*;
use Side::*;

const CONNECT_FIRST: &[Side] = &[Connect, Bind];
const BIND_FIRST: &[Side] = &[Bind, Connect];

const POOL_JAVA: &str = "reuse connections: one pooled HTTP client (e.g. a single shared java.net.http.HttpClient or an Apache HttpClient PoolingHttpClientConnectionManager) and a pooled JDBC DataSource, instead of a new connection per request";
const POOL_DOTNET: &str = "reuse connections: one static HttpClient (or IHttpClientFactory) instead of `new HttpClient()` per request, and leave SqlConnection pooling on (Pooling=true, the default)";
const REUSEADDR_PYTHON: &str = "set SO_REUSEADDR before bind(): sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); socketserver/http.server: allow_reuse_address = True";

/// The knowledge table, most specific first.
pub const ENTRIES: &[Entry] = &[
    // --- SQL Server -------------------------------------------------------
    // Microsoft SQL Server support blog, "July 10, 2018 Windows updates cause
    // SQL startup issues due to 'TCP port is already in use' errors": errors
    // 26023 and 17182 (0x2740 = 10048 = WSAEADDRINUSE).
    Entry {
        id: "sqlserver-port-in-use",
        runtime: "SQL Server",
        platform: Any,
        pattern: r"(?i)Server TCP provider failed to listen on \[ *'?(?P<addr>[^'\s\]]*)'? *<ipv[46]> *(?P<port>\d{1,5}) *\]\. *Tcp port is already in use|TDSSNIClient initialization failed with error 0x2740|Error: 17182\b",
        error: AddrInUse,
        sides: &[Bind],
        cause: "SQL Server could not listen on {the_port}: another socket held it when the service started. At boot that is often not another server but a client that was handed {the_port} as the ephemeral (local) port of an outgoing connection, which is only possible when the dynamic port range includes {the_port}.",
        misleading: Some("\"Tcp port is already in use\" suggests a second SQL Server; the holder is just as often an ordinary outgoing connection that happened to get the port, and gone by the time anyone looks."),
        fixes: &[
            "Windows: netsh int ipv4 add excludedportrange protocol=tcp startport={port} numberofports=1 store=persistent  (run while {the_port} is free, e.g. with SQL Server stopped; Windows then never hands it out as a dynamic port)",
            "Linux: portwatch reserve {port} --persist",
        ],
        raises: None,
    },
    // Microsoft support blog (blogs.msdn.microsoft.com/spike, 2008-08-26):
    // "(provider: TCP Provider, error: 0 - Only one usage of each socket
    // address ...)" from System.Data.SqlClient, caused by not pooling.
    Entry {
        id: "sqlclient-tcp-provider",
        runtime: ".NET SqlClient",
        platform: Windows,
        pattern: r"provider: TCP Provider, error: 0 - Only one usage of each socket address",
        error: AddrInUse,
        sides: &[Connect],
        cause: "SqlClient's connect() to SQL Server failed with WSAEADDRINUSE: this client machine had no ephemeral port left, almost always because connections are opened and closed per query without pooling.",
        misleading: Some("It reads like SQL Server's port is taken or remote connections are off; the server is fine and other clients can connect. The client machine ran out of local ports."),
        fixes: &[
            "keep connection pooling on (Pooling=true is the default; remove Pooling=false from the connection string) and dispose connections so that they return to the pool",
        ],
        raises: None,
    },
    // --- Java -------------------------------------------------------------
    // Apache Geode docs, "Ephemeral TCP Port Limits": "java.net.BindException:
    // Address already in use: connect" from exhausted ephemeral ports on Windows.
    Entry {
        id: "java-connect-address-in-use",
        runtime: "Java",
        platform: Windows,
        pattern: r"java\.net\.BindException: Address already in use: connect",
        error: AddrInUse,
        sides: &[Connect],
        cause: "Java's connect() failed with WSAEADDRINUSE: Windows had no free ephemeral port for a new outgoing connection.",
        misleading: Some("A BindException saying \"Address already in use\" reads like a server's port conflict, but the \": connect\" suffix says it came from an outgoing connection: no server port is involved, the client ran out of local ports."),
        fixes: &[POOL_JAVA],
        raises: Some("java.net.BindException: Address already in use: connect"),
    },
    // JDK, Windows net_util_md.c winsock message table: WSAENOBUFS "No buffer
    // space available (maximum connections reached?)"; KB 196271 (WSAENOBUFS
    // from connect() when the ephemeral ports run out).
    Entry {
        id: "java-no-buffer-space",
        runtime: "Java",
        platform: Windows,
        pattern: r"java\.net\.SocketException: No buffer space available \(maximum connections reached\?\)(?:: (?:connect|JVM_Bind|bind))?",
        error: NoBufs,
        sides: &[Connect],
        cause: "Java's socket call failed with WSAENOBUFS: on Windows this is what connect() reports when no ephemeral port is left (the message blames memory, the cause is ports).",
        misleading: Some("\"No buffer space\" points at memory; on Windows it is the usual sign of ephemeral-port exhaustion by many short-lived outgoing connections."),
        fixes: &[POOL_JAVA],
        raises: Some("java.net.SocketException: No buffer space available (maximum connections reached?): connect"),
    },
    // OpenJDK sun/nio/ch/Net.c handleSocketError: EADDRNOTAVAIL ->
    // BindException with strerror ("Cannot assign requested address");
    // classic PlainSocketImpl.c: NoRouteToHostException "(Address not
    // available)"; the same text on bind() to a foreign address (ttorrent #2).
    Entry {
        id: "java-cannot-assign",
        runtime: "Java",
        platform: Any,
        pattern: r"java\.net\.(?:BindException|NoRouteToHostException|ConnectException|SocketException): Cannot assign requested address",
        error: AddrNotAvail,
        sides: CONNECT_FIRST,
        cause: "Java got EADDRNOTAVAIL: from connect() (sun.nio.ch.Net.connect0, Socket.connect in the stack) it means no ephemeral port was left towards that destination; from bind() (Net.bind0, ServerSocket) it means the address is not one of this machine's.",
        misleading: Some("Java throws BindException (or NoRouteToHostException on old JDKs) for both cases; the exception class says nothing about which call failed, the stack trace does."),
        fixes: &[POOL_JAVA],
        raises: Some("java.net.BindException: Cannot assign requested address"),
    },
    // OpenJDK: NioSocketImpl/PlainSocketImpl throw BindException with
    // strerror, JDK 8-12 append "(Bind failed)", Windows JDKs ": bind" or
    // ": JVM_Bind"; PlainSocketImpl.c enables SO_REUSEADDR on every server
    // socket on Unix.
    Entry {
        id: "java-bind-address-in-use",
        runtime: "Java",
        platform: Any,
        pattern: r"java\.net\.BindException: Address already in use(?: \(Bind failed\)|: (?:bind|JVM_Bind|NET_Bind))?",
        error: AddrInUse,
        sides: &[Bind],
        cause: "Java's bind() of {the_port} failed with EADDRINUSE. On Linux the JDK sets SO_REUSEADDR on every ServerSocket, so a TIME_WAIT remnant cannot be the cause: a live socket (another instance, another service, or a client's ephemeral port) holds {the_port}.",
        misleading: None,
        fixes: &[
            "stop the other holder or move one of the two to another port (server.port / the connector's port)",
        ],
        raises: Some("java.net.BindException: Address already in use"),
    },
    // --- .NET -------------------------------------------------------------
    // ASP.NET Core Kestrel AddressBinder: "Failed to bind to address {url}:
    // address already in use." (dotnet/core #4038, dotnet/aspnetcore #55782).
    Entry {
        id: "kestrel-address-in-use",
        runtime: ".NET Kestrel",
        platform: Any,
        pattern: r"Failed to bind to address (?:https?://)?(?P<url>\S+?)(?: on the IPv[46] loopback interface)?: (?:address|port) already in use",
        error: AddrInUse,
        sides: &[Bind],
        cause: "Kestrel's bind() of {endpoint} failed with EADDRINUSE: another process (often another instance of the app, or `dotnet watch` left running) holds the port.",
        misleading: None,
        fixes: &[
            "stop the other instance, or give this one another port: ASPNETCORE_URLS=http://127.0.0.1:PORT or \"Urls\" in appsettings.json",
        ],
        raises: None,
    },
    // .NET on Linux: SocketException (NativeErrorCode) with strerror text,
    // "System.Net.Sockets.SocketException (98): Address already in use"
    // (dotnet/core #4038); HttpClient connect paths too (dotnet/corefx #37044).
    Entry {
        id: "dotnet-linux-address-in-use",
        runtime: ".NET",
        platform: Any,
        pattern: r"SocketException \(98\): Address already in use",
        error: AddrInUse,
        sides: BIND_FIRST,
        cause: ".NET got EADDRINUSE (98) from the kernel: from Socket.Bind/TcpListener.Start another socket holds the port; from a connect path (HttpClient, Socket.Connect) the socket was bound to a local port first and no port was left.",
        misleading: None,
        fixes: &[POOL_DOTNET],
        raises: Some("SocketException (98): Address already in use"),
    },
    // .NET on Linux, "System.Net.Sockets.SocketException (99): Cannot assign
    // requested address" from Socket.ConnectAsync (dotnet/Docker.DotNet #646).
    Entry {
        id: "dotnet-linux-cannot-assign",
        runtime: ".NET",
        platform: Any,
        pattern: r"SocketException \(99\): Cannot assign requested address",
        error: AddrNotAvail,
        sides: CONNECT_FIRST,
        cause: ".NET got EADDRNOTAVAIL (99): from Connect/ConnectAsync/HttpClient no ephemeral port was left towards that destination; from Bind the address is not one of this machine's.",
        misleading: None,
        fixes: &[POOL_DOTNET],
        raises: Some("SocketException (99): Cannot assign requested address"),
    },
    // --- Python -----------------------------------------------------------
    // CPython asyncio base_events.create_server: "error while attempting to
    // bind on address %r: %s" (str(err).lower()); create_server sets
    // SO_REUSEADDR on Unix by default (reuse_address).
    Entry {
        id: "python-asyncio-bind",
        runtime: "Python asyncio",
        platform: Any,
        pattern: r"error while attempting to bind on address \('(?P<addr>[^']*)', (?P<port>\d{1,5})[^)]*\): address already in use",
        error: AddrInUse,
        sides: &[Bind],
        cause: "asyncio's bind() of {endpoint} failed with EADDRINUSE. asyncio sets SO_REUSEADDR on Unix, so a TIME_WAIT remnant is not the cause: a live socket holds the port (often a previous instance still running, e.g. a uvicorn worker).",
        misleading: None,
        fixes: &["stop the previous instance (portwatch who {port} names it) or choose another port"],
        raises: None,
    },
    // Python docs, socket module, "Running an example several times with too
    // small delay between executions, could lead to this error: [Errno 98]
    // Address already in use ... the previous execution has left the socket
    // in a TIME_WAIT state" (cpython #12781).
    Entry {
        id: "python-errno-98",
        runtime: "Python",
        platform: Any,
        pattern: r"\[Errno 98\] Address already in use",
        error: AddrInUse,
        sides: &[Bind],
        cause: "Python's bind() failed with EADDRINUSE. Python's socket module does not set SO_REUSEADDR, so right after a restart this is usually a TIME_WAIT remnant of the previous run's connections on {the_port}, which SO_REUSEADDR set before bind() would have allowed; otherwise a live socket holds {the_port}.",
        misleading: Some("It looks like another server holds the port, yet nothing may be listening: `ss -tan` shows only TIME_WAIT rows, which vanish within 60 s."),
        fixes: &[REUSEADDR_PYTHON],
        raises: Some("[Errno 98] Address already in use"),
    },
    // Python on Linux, strerror(EADDRNOTAVAIL): "[Errno 99] Cannot assign
    // requested address", from connect() or from bind() (proxy.py #59).
    Entry {
        id: "python-errno-99",
        runtime: "Python",
        platform: Any,
        pattern: r"\[Errno 99\] Cannot assign requested address",
        error: AddrNotAvail,
        sides: CONNECT_FIRST,
        cause: "Python got EADDRNOTAVAIL: from connect() (requests, urllib3, socket.create_connection in the traceback) no ephemeral port was left towards that destination; from bind() the address is not one of this machine's.",
        misleading: None,
        fixes: &["reuse connections: one requests.Session (or an httpx/aiohttp client) for many requests instead of requests.get() per call, which opens and closes a connection each time"],
        raises: Some("[Errno 99] Cannot assign requested address"),
    },
    // Python on Windows formats WSA errors as "[WinError 10048] Only one usage
    // of each socket address ..." (StorjOld/pyp2p #44).
    Entry {
        id: "python-winerror-10048",
        runtime: "Python",
        platform: Windows,
        pattern: r"\[WinError 10048\]",
        error: AddrInUse,
        sides: BIND_FIRST,
        cause: "Python got WSAEADDRINUSE (10048): from bind() another socket holds the port; from connect() Windows had no free ephemeral port.",
        misleading: None,
        fixes: &["on Windows do not set SO_REUSEADDR to get past this (it lets another program take over a live port); find the holder with netstat -ano instead"],
        raises: Some("[WinError 10048] Only one usage of each socket address (protocol/network address/port) is normally permitted"),
    },
    // --- Go ---------------------------------------------------------------
    // Go net.OpError formatting "listen tcp :8080: bind: address already in
    // use" (dapr/dapr #8068); net.Listen sets SO_REUSEADDR on Linux
    // (sockopt_linux.go setDefaultListenerSockopts).
    Entry {
        id: "go-listen-address-in-use",
        runtime: "Go",
        platform: Any,
        pattern: r"listen (?:tcp|tcp4|tcp6) \[?(?P<addr>[0-9A-Fa-f:.]*?)\]?:(?P<port>\d{1,5}): bind: address already in use",
        error: AddrInUse,
        sides: &[Bind],
        cause: "Go's net.Listen could not bind {the_port} (EADDRINUSE). Go sets SO_REUSEADDR on listeners, so TIME_WAIT is not the cause: a live socket holds the port.",
        misleading: None,
        fixes: &["stop the other holder or listen on another port"],
        raises: Some("listen tcp {endpoint}: bind: address already in use"),
    },
    // Go on Windows: "listen tcp 127.0.0.1:8087: bind: Only one usage of each
    // socket address (protocol/network address/port) is normally permitted."
    // (phuslu/goproxy #900).
    Entry {
        id: "go-listen-only-one-usage",
        runtime: "Go",
        platform: Windows,
        pattern: r"listen (?:tcp|tcp4|tcp6) \[?(?P<addr>[0-9A-Fa-f:.]*?)\]?:(?P<port>\d{1,5}): bind: Only one usage of each socket address",
        error: AddrInUse,
        sides: &[Bind],
        cause: "Go's net.Listen could not bind {the_port} on Windows (WSAEADDRINUSE): another socket holds it.",
        misleading: None,
        fixes: &["stop the other holder or listen on another port"],
        raises: Some("listen tcp {endpoint}: bind: Only one usage of each socket address (protocol/network address/port) is normally permitted."),
    },
    // Go on Windows dials with ConnectEx: "dial tcp ...: connectex: Only one
    // usage of each socket address ..." (Go net/fd_windows.go op name).
    Entry {
        id: "go-dial-only-one-usage",
        runtime: "Go",
        platform: Windows,
        pattern: r"dial (?:tcp|tcp4|tcp6) \[?(?P<addr>[0-9A-Fa-f:.]*?)\]?:(?P<port>\d{1,5}): connectex: Only one usage of each socket address",
        error: AddrInUse,
        sides: &[Connect],
        cause: "Go's dial to {endpoint} failed on Windows with WSAEADDRINUSE: no ephemeral port was free for a new outgoing connection.",
        misleading: Some("\"Only one usage of each socket address\" sounds like a port conflict; on a dial it means the client ran out of local ports."),
        fixes: &["reuse connections: one shared http.Client (its Transport pools connections); read resp.Body to the end and Close() it, or the connection is not reused"],
        raises: Some("dial tcp {endpoint}: connectex: Only one usage of each socket address (protocol/network address/port) is normally permitted."),
    },
    // Go: "dial tcp x.x.x.x:8080: cannot assign requested address" (older Go,
    // probelabs/goreplay #110); newer Go adds "connect: ".
    Entry {
        id: "go-dial-cannot-assign",
        runtime: "Go",
        platform: Any,
        pattern: r"dial (?:tcp|tcp4|tcp6) \[?(?P<addr>[0-9A-Fa-f:.]*?)\]?:(?P<port>\d{1,5}): (?:connect: )?cannot assign requested address",
        error: AddrNotAvail,
        sides: &[Connect],
        cause: "Go's dial to {endpoint} failed with EADDRNOTAVAIL: no ephemeral port was left towards that destination.",
        misleading: None,
        fixes: &["reuse connections: one shared http.Client (its Transport pools connections), raise Transport.MaxIdleConnsPerHost (default 2) to the concurrency you use, and read resp.Body to the end and Close() it"],
        raises: Some("dial tcp {endpoint}: connect: cannot assign requested address"),
    },
    // Go: "listen tcp 192.168.6.143:8080: bind: cannot assign requested
    // address" (redpanda-data/kminion #65, fiorix/freegeoip #108).
    Entry {
        id: "go-listen-cannot-assign",
        runtime: "Go",
        platform: Any,
        pattern: r"listen (?:tcp|tcp4|tcp6) \[?(?P<addr>[0-9A-Fa-f:.]*?)\]?:(?P<port>\d{1,5}): bind: cannot assign requested address",
        error: AddrNotAvail,
        sides: &[Bind],
        cause: "Go's net.Listen could not bind {addr}: that address is not assigned to this machine (EADDRNOTAVAIL).",
        misleading: Some("The port is irrelevant here; it is the address that is not local."),
        fixes: &["listen on \":{port}\" (all addresses) or on an address that `ip -br addr` lists"],
        raises: Some("listen tcp {endpoint}: bind: cannot assign requested address"),
    },
    // --- Node.js ----------------------------------------------------------
    // Node.js uvException: "Error: listen EADDRINUSE: address already in use
    // :::3000" (Node 10+), "Error: listen EADDRINUSE :::5000" (older)
    // (nodejs/help #1050); libuv uv__tcp_bind sets SO_REUSEADDR on Unix.
    Entry {
        id: "node-listen-eaddrinuse",
        runtime: "Node.js",
        platform: Any,
        pattern: r"listen EADDRINUSE(?:: address already in use)? (?P<addr>\S*?):(?P<port>\d{1,5})\b",
        error: AddrInUse,
        sides: &[Bind],
        cause: "Node's server.listen() could not bind {the_port} (EADDRINUSE). libuv sets SO_REUSEADDR, so TIME_WAIT is not the cause: a live socket holds the port (often a previous `node`/nodemon process still running).",
        misleading: None,
        fixes: &["stop the previous process (portwatch who {port} names it) or listen on another port (process.env.PORT)"],
        raises: Some("listen EADDRINUSE: address already in use {endpoint_unbracketed}"),
    },
    // Node.js: "connect EADDRNOTAVAIL 35.224.36.62:8888 - Local
    // (10.128.0.3:0)" (nodejs/help #1242).
    Entry {
        id: "node-connect-eaddrnotavail",
        runtime: "Node.js",
        platform: Any,
        pattern: r"connect EADDRNOTAVAIL (?P<addr>\S+?):(?P<port>\d{1,5})\b",
        error: AddrNotAvail,
        sides: &[Connect],
        cause: "Node's connect to {endpoint} failed with EADDRNOTAVAIL: no ephemeral port was left towards that destination.",
        misleading: None,
        fixes: &["reuse connections: an http.Agent with keepAlive: true (the default agent keeps alive only from Node 19 on), or undici's pooled fetch"],
        raises: Some("connect EADDRNOTAVAIL {endpoint_unbracketed}"),
    },
    // libuv on Windows reports ephemeral-port exhaustion as ENOBUFS
    // (joyent/libuv pull request #823, "Return EADDRNOTAVAIL when all the
    // ports have been exhausted", not merged).
    Entry {
        id: "node-connect-enobufs",
        runtime: "Node.js",
        platform: Windows,
        pattern: r"connect ENOBUFS (?P<addr>\S+?):(?P<port>\d{1,5})\b",
        error: NoBufs,
        sides: &[Connect],
        cause: "Node's connect to {endpoint} failed with ENOBUFS: on Windows that is how libuv reports that no ephemeral port was free.",
        misleading: Some("ENOBUFS suggests memory; on Windows it means the dynamic port range is used up."),
        fixes: &["reuse connections: an http.Agent with keepAlive: true"],
        raises: Some("connect ENOBUFS {endpoint_unbracketed}"),
    },
    // Node.js: "listen EADDRNOTAVAIL: address not available 82.65.165.5:53"
    // (pinheadmz/handout #16).
    Entry {
        id: "node-listen-eaddrnotavail",
        runtime: "Node.js",
        platform: Any,
        pattern: r"listen EADDRNOTAVAIL(?:: address not available)? (?P<addr>\S+?):(?P<port>\d{1,5})\b",
        error: AddrNotAvail,
        sides: &[Bind],
        cause: "Node's server.listen() could not bind {addr}: that address is not assigned to this machine.",
        misleading: None,
        fixes: &["listen on 0.0.0.0 / :: or on an address that `ip -br addr` lists (server.listen(port) without a host)"],
        raises: Some("listen EADDRNOTAVAIL: address not available {endpoint_unbracketed}"),
    },
    // --- nginx ------------------------------------------------------------
    // nginx ngx_connection.c: ngx_log_error(..., "bind() to %V failed");
    // nginx sets SO_REUSEADDR on its listening sockets (ngx_open_listening_sockets).
    Entry {
        id: "nginx-bind-failed",
        runtime: "nginx",
        platform: Any,
        pattern: r"bind\(\) to \[?(?P<addr>[0-9A-Fa-f:.]*?)\]?:(?P<port>\d{1,5}) failed \(98: Address already in use\)",
        error: AddrInUse,
        sides: &[Bind],
        cause: "nginx could not bind {endpoint} (EADDRINUSE). nginx sets SO_REUSEADDR, so TIME_WAIT is not the cause: a live socket holds the port, very often an nginx master that is still running (a second `nginx` instead of `nginx -s reload`), or Apache.",
        misleading: None,
        fixes: &[
            "if nginx itself holds it: reload instead of starting again (systemctl reload nginx, nginx -s reload)",
            "two listen lines for the same port ([::]:{port} without ipv6only=on next to 0.0.0.0:{port}) conflict with each other",
        ],
        raises: None,
    },
    // nginx upstream: "[crit] connect() to 127.0.0.1:80 failed (99: Cannot
    // assign requested address) while connecting to upstream"
    // (ma.ttias.be "Nginx: Cannot assign requested address for upstream").
    Entry {
        id: "nginx-upstream-connect",
        runtime: "nginx",
        platform: Any,
        pattern: r"connect\(\) to \[?(?P<addr>[0-9A-Fa-f:.]*?)\]?:(?P<port>\d{1,5}) failed \(99: Cannot assign requested address\)",
        error: AddrNotAvail,
        sides: &[Connect],
        cause: "nginx's connect() to the upstream {endpoint} failed with EADDRNOTAVAIL: every ephemeral port towards that upstream was taken, mostly by TIME_WAIT of earlier proxied requests.",
        misleading: Some("The upstream is not down; the proxy ran out of local ports towards it."),
        fixes: &[
            "keep upstream connections alive: `keepalive 32;` in the upstream block, plus `proxy_http_version 1.1;` and `proxy_set_header Connection \"\";` in the location",
        ],
        raises: None,
    },
    // --- PostgreSQL -------------------------------------------------------
    // PostgreSQL pqcomm.c StreamServerPort: errmsg("could not bind %s address
    // \"%s\": %m") with errhint("Is another postmaster already running on port
    // %d? ..."); it sets SO_REUSEADDR before bind().
    Entry {
        id: "postgres-could-not-bind",
        runtime: "PostgreSQL",
        platform: Any,
        pattern: r#"could not bind IPv[46] (?:address "(?P<addr>[^"]*)"|socket): Address already in use"#,
        error: AddrInUse,
        sides: &[Bind],
        cause: "the postmaster could not bind its port (EADDRINUSE). PostgreSQL sets SO_REUSEADDR, so a live socket holds the port: another postmaster (another cluster or version on the same port) or some other program.",
        misleading: None,
        fixes: &[
            "pg_lsclusters (Debian) lists clusters and their ports; give one of them another `port` in postgresql.conf",
        ],
        raises: None,
    },
    // libpq fe-connect.c: "connection to server at \"%s\" (%s), port %s
    // failed: " followed by strerror, here "Cannot assign requested address".
    Entry {
        id: "libpq-cannot-assign",
        runtime: "PostgreSQL client (libpq)",
        platform: Any,
        pattern: r#"connection to server at "[^"]*"(?: \((?P<addr>[^)]*)\))?, port (?P<port>\d{1,5}) failed: Cannot assign requested address"#,
        error: AddrNotAvail,
        sides: &[Connect],
        cause: "the client's connect() to PostgreSQL on {the_port} failed with EADDRNOTAVAIL: this client machine had no ephemeral port left towards the server.",
        misleading: Some("The server is reachable; the client opened and closed too many connections."),
        fixes: &["pool connections: pgbouncer, or your driver's pool (HikariCP, SQLAlchemy's pool, pgx pool) instead of a connection per query"],
        raises: None,
    },
    // --- Windows system messages and codes shared by many runtimes ---------
    // Windows Sockets error codes (learn.microsoft.com, winsock2 "Windows
    // Sockets Error Codes"): WSAEADDRINUSE 10048, FormatMessage text "Only one
    // usage of each socket address (protocol/network address/port) is
    // normally permitted."; .NET SocketException (10048) uses it (MailKit #743).
    Entry {
        id: "windows-only-one-usage",
        runtime: ".NET / Win32",
        platform: Windows,
        pattern: r"(?i)Only one usage of each socket address \(protocol/network address/port\) is normally permitted|\bWSAEADDRINUSE\b|(?:WinError|SocketException|socket error|error|code)\W{0,3}10048\b",
        error: AddrInUse,
        sides: CONNECT_FIRST,
        cause: "Windows returned WSAEADDRINUSE (10048). From connect() (Socket.Connect/DoConnect, HttpClient, a driver opening a connection) it means no ephemeral port was free for a new outgoing connection; from bind() (Socket.Bind/DoBind, TcpListener.Start, HttpListener) another socket holds the port.",
        misleading: Some(".NET's \"Only one usage of each socket address ... is normally permitted\" on an outgoing connection means port exhaustion, not a conflict with a server: look for Connect in the stack trace."),
        fixes: &[POOL_DOTNET],
        raises: Some("SocketException (10048): Only one usage of each socket address (protocol/network address/port) is normally permitted."),
    },
    // Windows Sockets error codes: WSAEADDRNOTAVAIL 10049 "The requested
    // address is not valid in its context" -- on connect, a remote address
    // or port that is not valid (such as 0).
    Entry {
        id: "windows-not-valid-in-context",
        runtime: ".NET / Win32",
        platform: Windows,
        pattern: r"(?i)The requested address is not valid in its context|\bWSAEADDRNOTAVAIL\b|(?:WinError|SocketException|socket error|error|code)\W{0,3}10049\b",
        error: AddrNotAvail,
        sides: CONNECT_FIRST,
        cause: "Windows returned WSAEADDRNOTAVAIL (10049): from connect() the destination is not a valid remote address (0.0.0.0, port 0); from bind() the address is not one of this machine's.",
        misleading: Some("Unlike Linux's EADDRNOTAVAIL, on Windows this is not port exhaustion (that comes as 10048 or 10055)."),
        fixes: &[],
        raises: Some("SocketException (10049): The requested address is not valid in its context."),
    },
    // Windows Sockets error codes: WSAENOBUFS 10055 "An operation on a socket
    // could not be performed because the system lacked sufficient buffer space
    // or because a queue was full."; KB 196271: connect() fails with it when
    // the ephemeral ports run out.
    Entry {
        id: "windows-no-buffer-space",
        runtime: ".NET / Win32",
        platform: Windows,
        pattern: r"(?i)system lacked sufficient buffer space or because a queue was full|\bWSAENOBUFS\b|(?:WinError|SocketException|socket error|error|code)\W{0,3}10055\b",
        error: NoBufs,
        sides: &[Connect],
        cause: "Windows returned WSAENOBUFS (10055): for connect() that is the usual report of an exhausted dynamic port range (KB 196271), not of memory.",
        misleading: Some("\"lacked sufficient buffer space\" points at memory; the missing resource is ephemeral ports."),
        fixes: &[POOL_DOTNET],
        raises: None,
    },
    // Windows Sockets error codes: WSAEACCES 10013 "An attempt was made to
    // access a socket in a way forbidden by its access permissions", returned
    // by bind() for ports inside an excluded port range or held with
    // SO_EXCLUSIVEADDRUSE (opl-/beatsaber-http-status #81).
    Entry {
        id: "windows-forbidden-access",
        runtime: "Win32",
        platform: Windows,
        pattern: r"(?i)An attempt was made to access a socket in a way forbidden by its access permissions|\bWSAEACCES\b|(?:WinError|SocketException|socket error|error|code)\W{0,3}10013\b",
        error: Access,
        sides: &[Bind],
        cause: "Windows refused bind() with WSAEACCES (10013): the port lies in an excluded port range (Hyper-V, WSL2, Docker and WinNAT reserve blocks of ports, often after a reboot), or another socket holds it with SO_EXCLUSIVEADDRUSE.",
        misleading: Some("Nothing shows in netstat: no process holds the port, Windows has set it aside."),
        fixes: &[],
        raises: None,
    },
    // --- plain errno names, numbers and strerror texts (Linux) -------------
    // Linux asm-generic/errno.h: EADDRINUSE 98 "Address already in use".
    Entry {
        id: "errno-eaddrinuse",
        runtime: "errno",
        platform: Any,
        pattern: r"(?i)\bEADDRINUSE\b|address already in use|errno\W{0,3}98\b",
        error: AddrInUse,
        sides: BIND_FIRST,
        cause: "EADDRINUSE: from bind() another socket holds the port (or, without SO_REUSEADDR, a TIME_WAIT remnant); Linux connect() reports exhaustion as EADDRNOTAVAIL instead, so EADDRINUSE on a client means it bound a local port before connecting.",
        misleading: None,
        fixes: &[],
        raises: None,
    },
    // Linux asm-generic/errno.h: EADDRNOTAVAIL 99 "Cannot assign requested
    // address" (glibc strerror; libuv says "address not available").
    Entry {
        id: "errno-eaddrnotavail",
        runtime: "errno",
        platform: Any,
        pattern: r"(?i)\bEADDRNOTAVAIL\b|cannot assign requested address|address not available|errno\W{0,3}99\b",
        error: AddrNotAvail,
        sides: CONNECT_FIRST,
        cause: "EADDRNOTAVAIL: from connect() no ephemeral port was left towards that destination; from bind() the address is not one of this machine's.",
        misleading: None,
        fixes: &[],
        raises: None,
    },
];

/// What a kernel-level cause means, how to fix it, and what not to believe.
#[derive(Debug)]
pub struct ConditionInfo {
    pub condition: Condition,
    /// The kernel cause in one sentence.
    pub summary: &'static str,
    pub fixes_linux: &'static [&'static str],
    pub fixes_windows: &'static [&'static str],
    /// What to look at on a Windows machine: (what it shows, command).
    pub look_windows: &'static [(&'static str, &'static str)],
    pub myths: &'static [&'static str],
}

const MYTH_FIN_TIMEOUT: &str = "net.ipv4.tcp_fin_timeout does not shorten TIME_WAIT on Linux: TIME_WAIT lasts a fixed 60 s (TCP_TIMEWAIT_LEN); tcp_fin_timeout only bounds FIN_WAIT2 of orphaned sockets";
const MYTH_TW_RECYCLE: &str = "net.ipv4.tcp_tw_recycle is gone: it broke clients behind NAT and was removed in Linux 4.12; guides that set it are out of date";
const MYTH_RESERVE: &str = "reserving a port (ip_local_reserved_ports, excludedportrange) does not stop a program from binding it explicitly; it only keeps the kernel from handing it out as an ephemeral port";

/// Fixes that what the machine shows can settle: `cmd::explain` drops the
/// first once it has looked at the holders, and replaces the second by the
/// exact command (or drops it when the port lies outside the range).
pub const FIX_FIND_HOLDER: &str = "find the holder: portwatch who {port} (LISTEN: another instance or service; a connected row: a client that was handed {port} as its ephemeral port; TIME_WAIT only: set SO_REUSEADDR before bind())";
/// What a listener needs when only TIME_WAIT remnants hold its port.
pub const FIX_REUSEADDR: &str = "set SO_REUSEADDR on the listening socket before bind() (C: setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one)): TIME_WAIT remnants of earlier connections then no longer block it";
pub const FIX_RESERVE: &str = "portwatch reserve {port} --persist  (if {the_port} lies in the ephemeral range: no client can be handed it again)";

pub const CONDITIONS: &[ConditionInfo] = &[
    ConditionInfo {
        condition: Condition::PortHeld,
        summary: "bind() failed with EADDRINUSE on the server side: another socket already holds {the_port} on that address: a listener, a socket bound to it, an outgoing connection that was handed {the_port} as its ephemeral port, or a TIME_WAIT remnant when the new socket did not set SO_REUSEADDR before bind()",
        fixes_linux: &[
            FIX_FIND_HOLDER,
            FIX_RESERVE,
            "catch the next one in the act: portwatch trace --port {port} --errors; for a failure at boot, install the recorder (portwatch install-service) and after the next one ask portwatch history --port {port} --boot 0 --first",
        ],
        fixes_windows: &[
            "find the holder: netstat -ano -p tcp | findstr :{port}  (the last column is the PID; tasklist /fi \"PID eq N\" names it)",
            "netsh int ipv4 add excludedportrange protocol=tcp startport={port} numberofports=1 store=persistent  (if {the_port} lies in the dynamic range; run while it is free)",
        ],
        look_windows: &[
            ("the sockets on {the_port} and their PIDs", "netstat -ano -p tcp | findstr :{port}"),
            ("whether {the_port} lies in the dynamic range", "netsh int ipv4 show dynamicport tcp"),
            ("whether {the_port} is excluded or reserved", "netsh int ipv4 show excludedportrange protocol=tcp"),
        ],
        myths: &[
            "SO_REUSEPORT is not the fix for a restart: it lets several live sockets of one user share a port; against a TIME_WAIT remnant SO_REUSEADDR is what the listener needs",
            "killing whatever holds the port now does not prevent the next time when the holder was a client's ephemeral port: reserve the port",
            MYTH_RESERVE,
        ],
    },
    ConditionInfo {
        condition: Condition::EphemeralExhausted,
        summary: "connect() on the client side found no free local port: each connection towards one destination address and port needs its own port from the ephemeral range, and a closed connection keeps its port for 60 s in TIME_WAIT on the side that closed first, so many short-lived connections use the range up",
        fixes_linux: &[
            "sysctl -w net.ipv4.tcp_tw_reuse=1  (new outgoing connections may reuse TIME_WAIT ports, safe with TCP timestamps, the default; persist it in /etc/sysctl.d/)",
            "sysctl -w net.ipv4.ip_local_port_range=\"10240 65535\"  (a wider range; then run portwatch doctor and portwatch reserve PORT --persist for each service port the range now covers)",
            "spread the connections over several destination addresses or ports, or source addresses: the limit is per destination",
        ],
        fixes_windows: &[
            "netsh int ipv4 set dynamicport tcp start=10000 num=55536  (a wider dynamic range than the default 49152-65535; netsh int ipv4 show dynamicport tcp shows it)",
            "netsh int ipv4 add excludedportrange protocol=tcp startport=PORT numberofports=1 store=persistent  for each service port the wider range now covers",
        ],
        look_windows: &[
            ("the dynamic port range (default 49152-65535, 16384 ports)", "netsh int ipv4 show dynamicport tcp"),
            ("connections towards the destination by state", "Get-NetTCPConnection -RemoteAddress {addr} -RemotePort {port} | Group-Object State"),
            ("TIME_WAIT in all", "netstat -ano -p tcp | find /c \"TIME_WAIT\""),
        ],
        myths: &[
            "the server is not at fault and restarting it does not help: the resource that ran out is this client's local ports",
            MYTH_FIN_TIMEOUT,
            MYTH_TW_RECYCLE,
        ],
    },
    ConditionInfo {
        condition: Condition::NotLocalAddress,
        summary: "bind() failed with EADDRNOTAVAIL: {addr} is not assigned to any interface of this machine (a typo, a host name that resolves elsewhere, an address that appears only later at boot, or a virtual IP currently on another node)",
        fixes_linux: &[
            "bind to 0.0.0.0 / [::] (all addresses) or to an address that `ip -br addr` lists",
            "a service that starts before its address exists: order it After=network-online.target with Wants=network-online.target",
            "a floating or virtual IP (keepalived, pacemaker): sysctl -w net.ipv4.ip_nonlocal_bind=1 (net.ipv6.ip_nonlocal_bind for IPv6)",
        ],
        fixes_windows: &["bind to 0.0.0.0 or to an address that ipconfig lists"],
        look_windows: &[("the addresses of this machine", "ipconfig")],
        myths: &[],
    },
    ConditionInfo {
        condition: Condition::BadDestination,
        summary: "connect() failed with WSAEADDRNOTAVAIL: on Windows that means the destination is not a valid remote address (0.0.0.0, port 0, or an address of the other family), not that local ports ran out",
        fixes_linux: &[],
        fixes_windows: &[
            "connect to the server's real address: 0.0.0.0 is an address to listen on, not to connect to (use 127.0.0.1 or the host's address)",
            "check the configured host and port for an empty or zero value",
        ],
        look_windows: &[],
        myths: &[],
    },
    ConditionInfo {
        condition: Condition::ExcludedRange,
        summary: "bind() was refused because Windows has excluded {the_port} from use (a reserved range, often taken by Hyper-V, WSL2, Docker or WinNAT at boot) or another socket holds it exclusively",
        fixes_linux: &[],
        fixes_windows: &[
            "netsh int ipv4 show excludedportrange protocol=tcp  (is {the_port} inside one of the ranges?)",
            "use a port outside the excluded ranges, or reserve yours before WinNAT takes it: net stop winnat, then netsh int ipv4 add excludedportrange protocol=tcp startport={port} numberofports=1 store=persistent, then net start winnat",
        ],
        look_windows: &[(
            "whether {the_port} lies in an excluded range",
            "netsh int ipv4 show excludedportrange protocol=tcp",
        )],
        myths: &[MYTH_RESERVE],
    },
];

/// Windows Sockets error codes portwatch names (for text that only carries
/// a number), with the Linux errno name closest in meaning.
pub const WSA_CODES: &[(u32, &str, Option<&str>)] = &[
    (10013, "WSAEACCES", Some("EACCES")),
    (10048, "WSAEADDRINUSE", Some("EADDRINUSE")),
    (10049, "WSAEADDRNOTAVAIL", Some("EADDRNOTAVAIL")),
    (10050, "WSAENETDOWN", Some("ENETDOWN")),
    (10051, "WSAENETUNREACH", Some("ENETUNREACH")),
    (10053, "WSAECONNABORTED", Some("ECONNABORTED")),
    (10054, "WSAECONNRESET", Some("ECONNRESET")),
    (10055, "WSAENOBUFS", Some("ENOBUFS")),
    (10060, "WSAETIMEDOUT", Some("ETIMEDOUT")),
    (10061, "WSAECONNREFUSED", Some("ECONNREFUSED")),
    (10065, "WSAEHOSTUNREACH", Some("EHOSTUNREACH")),
];

/// glibc's strerror texts for the errors a network call returns, to name
/// the errno of a message that gives only the text.
pub const STRERROR: &[(&str, &str)] = &[
    ("Address already in use", "EADDRINUSE"),
    ("Cannot assign requested address", "EADDRNOTAVAIL"),
    ("Connection refused", "ECONNREFUSED"),
    ("Connection timed out", "ETIMEDOUT"),
    ("Connection reset by peer", "ECONNRESET"),
    ("No route to host", "EHOSTUNREACH"),
    ("Network is unreachable", "ENETUNREACH"),
    ("Too many open files", "EMFILE"),
    ("Permission denied", "EACCES"),
];
