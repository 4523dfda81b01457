//! `portwatch who [PORT]`: every socket on a port (or towards a remote end,
//! or in a state) right now, and every process that holds each; with
//! `--count`, how many per state and owner; with `--to`, what occupies the
//! ephemeral range towards a destination that ran out of ports.

mod report;
#[cfg(test)]
mod tests;
mod text;

use std::io::{self, Write};

use anyhow::Context as _;

pub use report::{
    add_creators, counts, parse_state, report, selects, towards, Count, CreatedBy, Query, Remote,
    Sharer, SocketView, Towards, WhoReport,
};
pub use text::write_text;

use crate::cli::WhoArgs;
use crate::sockdiag::SockDiag;
use crate::system::LiveProcesses;

/// The sockets on `port` right now with their owners, and for ownerless
/// ones the creator the recorder's journal in `journal` names, if it exists.
pub fn snapshot(port: u16, journal: &std::path::Path) -> anyhow::Result<WhoReport> {
    snapshot_for(
        &Query {
            port: Some(port),
            ..Query::default()
        },
        journal,
    )
}

/// The sockets `q` asks about right now, as [`snapshot`] does for a port.
pub fn snapshot_for(q: &Query, journal: &std::path::Path) -> anyhow::Result<WhoReport> {
    snapshot_in(q, journal, None)
}

/// [`snapshot_for`] in another network namespace (`netns`: a handle on it),
/// with that namespace's ephemeral range and reserved ports.
pub fn snapshot_in(
    q: &Query,
    journal: &std::path::Path,
    netns: Option<&std::sync::Arc<std::os::fd::OwnedFd>>,
) -> anyhow::Result<WhoReport> {
    let mut diag = match netns {
        Some(fd) => SockDiag::in_netns(fd.clone()),
        None => SockDiag::new(),
    }
    .context("cannot open a sock_diag netlink socket")?;
    let mut entries = match q.port {
        Some(port) => diag
            .sockets_on_port(port)
            .with_context(|| format!("cannot list the sockets on port {port}"))?,
        None => {
            let mut all = diag
                .tcp_sockets(crate::sockdiag::TCP_ALL_STATES)
                .context("cannot list the TCP sockets")?;
            all.extend(diag.udp_sockets().context("cannot list the UDP sockets")?);
            all
        }
    };
    // /proc/sys/net shows the namespace of whoever opens it.
    let (range, reserved) = crate::system::run_in(netns.map(|f| &**f), || {
        Ok((
            crate::system::ephemeral_range(),
            crate::sysctl::read(crate::sysctl::RESERVED_PORTS)
                .ok()
                .flatten()
                .and_then(|v| crate::sysctl::PortSet::parse(&v).ok()),
        ))
    })
    .context("cannot read the namespace's port settings")?;
    entries.retain(|e| selects(q, e, range));
    let inodes: Vec<u64> = entries.iter().map(|e| e.inode).collect();
    // Every process of each socket, not just the first found.
    let owners = crate::procfd::every_owner_of(&inodes);
    let privileged = crate::source::linux::capabilities().is_root();
    let mut r = report(
        q.port,
        entries,
        &owners,
        &mut LiveProcesses::default(),
        privileged,
    );
    if r.sockets.iter().any(|s| s.pid.is_none()) && journal.is_dir() {
        match (crate::journal::read_dir(journal), crate::journal::boot_id()) {
            (Ok(outcome), Ok(boot)) => add_creators(&mut r, &outcome.records, &boot),
            (Err(e), _) => log::warn!("cannot read the journal in {}: {e}", journal.display()),
            (_, Err(e)) => log::warn!("cannot read the boot id: {e}"),
        }
    }
    if let Some(dest) = q.to {
        r.to = Some(towards(dest, &r.sockets, range, reserved.as_ref()));
    }
    Ok(r)
}

pub fn run(args: WhoArgs) -> anyhow::Result<()> {
    let q = Query {
        port: args.port,
        remote: args.remote,
        states: args.states.clone(),
        to: args
            .to
            .map(|t| match (t.addr, t.port) {
                (Some(a), Some(p)) => Ok((a, p)),
                _ => Err(anyhow::anyhow!(
                    "--to needs a destination address and port, e.g. --to 10.0.0.5:5432"
                )),
            })
            .transpose()?,
    };
    let netns = args
        .netns
        .as_deref()
        .map(crate::system::open_netns)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let mut r = snapshot_in(&q, &args.journal, netns.as_ref().map(|(_, fd)| fd))?;
    if args.count {
        r.counts = Some(counts(&r.sockets));
    }
    let width = crate::term::stdout_width();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if args.json {
        serde_json::to_writer(&mut out, &r)?;
        writeln!(out)?;
    } else {
        write_text(&r, &mut out, width)?;
    }
    out.flush()?;
    Ok(())
}
