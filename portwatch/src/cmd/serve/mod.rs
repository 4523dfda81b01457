//! `portwatch serve`: Prometheus metrics over HTTP (`/metrics`, `/healthz`),
//! on loopback unless told otherwise.
//!
//! The HTTP side is deliberately small: a GET of one of two paths, one
//! request per connection (`Connection: close`), the request head capped in
//! size and time, and at most [`MAX_CONNECTIONS`] at once. Scrapes are
//! answered by the main loop, which owns the state, so the exposition is
//! as of the scrape and never races an update.

mod metrics;

pub use metrics::{Metrics, OTHER, RETIRE_NS};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::live::{Live, Step};
use crate::cli::ServeArgs;
use crate::timefmt::now_ns;
use crate::view::ViewState;

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// The most a request head may be; a scraper's is a few hundred bytes.
const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A scrape waiting for the main loop to encode the metrics.
type Scrape = oneshot::Sender<Result<String, std::fmt::Error>>;

/// An HTTP answer.
struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn text(status: &'static str, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
        }
    }
}

/// The request line's method and path, from a head that ends in a blank
/// line; None while more is needed.
pub fn request_line(head: &[u8]) -> Option<Result<(String, String), ()>> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&head[..end]).ok();
    let parsed = text.and_then(|t| {
        let mut words = t.lines().next()?.split(' ');
        let (method, target, version) = (words.next()?, words.next()?, words.next()?);
        if !version.starts_with("HTTP/1.") || words.next().is_some() {
            return None;
        }
        let path = target.split('?').next().unwrap_or(target);
        Some((method.to_owned(), path.to_owned()))
    });
    Some(parsed.ok_or(()))
}

/// What a path is answered with, but for /metrics (the main loop's).
fn route(method: &str, path: &str) -> Option<Answer> {
    if method != "GET" && method != "HEAD" {
        return Some(Answer::text("405 Method Not Allowed", "GET only\n"));
    }
    match path {
        "/metrics" => None,
        "/healthz" => Some(Answer::text("200 OK", "ok\n")),
        "/" => Some(Answer::text(
            "200 OK",
            "portwatch: metrics at /metrics, health at /healthz\n",
        )),
        _ => Some(Answer::text("404 Not Found", "not found\n")),
    }
}

async fn respond(stream: &mut TcpStream, head_only: bool, a: Answer) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        a.status,
        a.content_type,
        a.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(a.body.as_bytes()).await?;
    }
    stream.shutdown().await
}

async fn serve_one(mut stream: TcpStream, scrapes: mpsc::Sender<Scrape>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let (method, path) = loop {
        if let Some(parsed) = request_line(&head) {
            match parsed {
                Ok(p) => break p,
                Err(()) => {
                    let a = Answer::text("400 Bad Request", "bad request\n");
                    return respond(&mut stream, false, a).await;
                }
            }
        }
        if head.len() >= MAX_HEAD {
            let a = Answer::text("431 Request Header Fields Too Large", "too large\n");
            return respond(&mut stream, false, a).await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    };
    let head_only = method == "HEAD";
    let answer = match route(&method, &path) {
        Some(a) => a,
        None => {
            let (tx, rx) = oneshot::channel();
            let encoded = match scrapes.send(tx).await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            match encoded {
                Some(Ok(body)) => Answer {
                    status: "200 OK",
                    content_type: metrics::CONTENT_TYPE,
                    body,
                },
                _ => Answer::text("503 Service Unavailable", "shutting down\n"),
            }
        }
    };
    respond(&mut stream, head_only, answer).await
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut view = ViewState::new(now_ns());
    let mut metrics = Metrics::new(usize::try_from(args.top_k).unwrap_or(usize::MAX));
    let mut live = Live::start(args.interval, args.netns.as_deref(), &mut view).await?;
    metrics.counted_in_kernel(true);
    view.begin(now_ns());
    eprintln!("portwatch: attached {}", live.describe());
    let local = listener.local_addr().unwrap_or(args.listen);
    eprintln!("portwatch: serving http://{local}/metrics");

    let (scrape_tx, mut scrape_rx) = mpsc::channel::<Scrape>(MAX_CONNECTIONS);
    let acceptor = tokio::spawn(accept(listener, scrape_tx));
    let result = loop {
        tokio::select! {
            step = live.next(&mut view) => match step {
                Step::Events(events) => events.iter().for_each(|e| {
                    view.add(e);
                    metrics.add(e);
                }),
                Step::Refreshed(counted) => {
                    metrics.add_counted(&counted, now_ns());
                    metrics.retire(now_ns());
                }
                Step::Stopped => break Ok(()),
            },
            Some(reply) = scrape_rx.recv() => {
                // Up to the scrape, not the last refresh.
                let counted = live.counted(&mut view);
                metrics.add_counted(&counted, now_ns());
                let _ = reply.send(metrics.encode(&view));
            }
        }
    };
    acceptor.abort();
    live.finish(&mut view).await;
    result
}

/// Accepts connections, at most [`MAX_CONNECTIONS`] served at once, each
/// on its own task.
async fn accept(listener: TcpListener, scrapes: mpsc::Sender<Scrape>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                log::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(CLIENT_TIMEOUT, serve_one(stream, scrapes)).await;
            if let Ok(Err(e)) = r {
                log::debug!("serving a request: {e}");
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines_and_refuses_the_rest() {
        assert_eq!(request_line(b"GET /metrics HTTP/1.1\r\nHost: x"), None);
        assert_eq!(
            request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Ok(("GET".into(), "/metrics".into())))
        );
        assert_eq!(request_line(b"GET / SPDY/3\r\n\r\n"), Some(Err(())));
        assert_eq!(request_line(b"\xff\xfe\r\n\r\n"), Some(Err(())));
        assert!(route("GET", "/metrics").is_none());
        assert_eq!(route("GET", "/healthz").map(|a| a.status), Some("200 OK"));
        assert_eq!(
            route("POST", "/metrics").map(|a| a.status),
            Some("405 Method Not Allowed")
        );
        assert_eq!(route("GET", "/x").map(|a| a.status), Some("404 Not Found"));
    }
}
