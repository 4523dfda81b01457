//! `pwload`: the workloads `cargo xtask bench` measures portwatch against.
//!
//! - `pwload churn --threads N --seconds S --closer client|server [--rate R]`:
//!   N client threads connect to and close on a local server (as many server
//!   threads accept), for S seconds. `--closer client` leaves TIME_WAIT on
//!   the client side, `server` on the server side. `--rate` paces the whole
//!   run to R connections per second (0 = as fast as possible). Prints
//!   `connections=C seconds=S cps=R errors=E`.
//! - `pwload syscall --seconds S`: a tight getppid() loop; prints
//!   `calls=C ns_per_call=X`.
//!
//! Run it inside a network namespace with a wide ip_local_port_range and
//! tcp_tw_reuse=1 (xtask bench sets one up) so the churn never exhausts ports.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!(
        "usage: pwload churn [--threads N] [--seconds S] [--closer client|server] [--rate R] [--port P]\n       pwload syscall [--seconds S]"
    );
    std::process::exit(2)
}

struct Opts {
    threads: usize,
    seconds: f64,
    client_closes: bool,
    rate: f64,
    port: u16,
}

fn parse(args: &[String]) -> Opts {
    let mut o = Opts {
        threads: 4,
        seconds: 5.0,
        client_closes: true,
        rate: 0.0,
        port: 18080,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_else(|| usage());
        match a.as_str() {
            "--threads" => o.threads = val().parse().unwrap_or_else(|_| usage()),
            "--seconds" => o.seconds = val().parse().unwrap_or_else(|_| usage()),
            "--rate" => o.rate = val().parse().unwrap_or_else(|_| usage()),
            "--port" => o.port = val().parse().unwrap_or_else(|_| usage()),
            "--closer" => {
                o.client_closes = match val().as_str() {
                    "client" => true,
                    "server" => false,
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    o
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("churn") => churn(&parse(&args[1..])),
        Some("syscall") => syscall(&parse(&args[1..])),
        _ => usage(),
    }
}

fn syscall(o: &Opts) {
    let deadline = Instant::now() + Duration::from_secs_f64(o.seconds);
    let start = Instant::now();
    let mut calls = 0u64;
    while Instant::now() < deadline {
        for _ in 0..10_000 {
            // SAFETY: getppid has no arguments and cannot fail.
            std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
        }
        calls += 10_000;
    }
    let ns = start.elapsed().as_nanos() as f64 / calls as f64;
    println!("calls={calls} ns_per_call={ns:.1}");
}

fn churn(o: &Opts) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, o.port));
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("pwload: cannot listen on {addr}: {e}");
        std::process::exit(1)
    });
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));

    for _ in 0..o.threads {
        let l = Arc::clone(&listener);
        let client_closes = o.client_closes;
        std::thread::spawn(move || serve(&l, client_closes));
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.seconds);
    // Each thread's share of the pace: one connection every `gap`.
    let gap = (o.rate > 0.0).then(|| Duration::from_secs_f64(o.threads as f64 / o.rate));
    let clients: Vec<_> = (0..o.threads)
        .map(|i| {
            let (stop, done, errors) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&errors));
            std::thread::spawn(move || {
                // Stagger paced threads so they do not fire in step.
                let mut next = start + gap.map_or(Duration::ZERO, |g| g * i as u32 / 8);
                let mut n = 0u64;
                let mut buf = [0u8; 1];
                while !stop.load(Ordering::Relaxed) {
                    if let Some(g) = gap {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += g;
                    }
                    match TcpStream::connect(addr) {
                        Ok(mut c) => {
                            // Wait for the server's greeting (or, when it
                            // closes first, its FIN), so that clients never
                            // outrun accept() and overflow the backlog.
                            let _ = c.read(&mut buf);
                            drop(c);
                            // Only what completes inside the window counts.
                            if Instant::now() <= deadline {
                                n += 1;
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let secs = o.seconds;
    let n = done.load(Ordering::Relaxed);
    println!(
        "connections={n} seconds={secs:.3} cps={:.1} errors={}",
        n as f64 / secs,
        errors.load(Ordering::Relaxed)
    );
    // Server threads block in accept(); exiting ends them.
}

fn serve(l: &TcpListener, client_closes: bool) {
    let mut buf = [0u8; 16];
    loop {
        let Ok((mut s, _)) = l.accept() else { continue };
        if client_closes {
            // Greet, wait for the client's FIN, then close: TIME_WAIT is the
            // client's.
            let _ = s.write_all(b"x");
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        } else {
            let _ = s.shutdown(Shutdown::Both);
        }
        drop(s);
    }
}
