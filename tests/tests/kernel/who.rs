//! `portwatch who` against real sockets, compared with `ss`.

use anyhow::{ensure, Context, Result};
use integration_tests::{netns_script, skip_unless_kernel};
use serde_json::Value;

const SOCKETS_PY: &str = r#"
import os, socket, sys, time
lst = socket.socket(); lst.bind(("0.0.0.0", 1433)); lst.listen(16)
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); udp.bind(("::", 1433))
# Two connections the server closes first: TIME_WAIT on local port 1433.
for _ in range(2):
    c = socket.create_connection(("127.0.0.1", 1433)); s, _ = lst.accept(); s.close(); c.recv(1); c.close()
# One that stays established.
keep = socket.create_connection(("127.0.0.1", 1433)); kept, _ = lst.accept()
print(os.getpid(), flush=True)
sys.stdout.close()
time.sleep(30)
"#;

#[test]
fn who_lists_every_socket_on_the_port_like_ss_with_owners() -> Result<()> {
    skip_unless_kernel!();
    let out = netns_script(
        r#"
python3 "$D/sockets.py" >"$D/pid" &
for _ in $(seq 1 100); do [ -s "$D/pid" ] && break; sleep 0.05; done
echo "PID=$(cat "$D/pid")"
echo "SS_BEGIN"; ss -tuanH sport = :1433; echo "SS_END"
"$PW" who 1433 --json
"$PW" who 1433 > "$D/text"; echo "TEXT_LINES=$(wc -l < "$D/text")"
kill %1
"#,
        &[("sockets.py", SOCKETS_PY)],
    )?;
    let pid: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("PID="))
        .and_then(|p| p.trim().parse().ok())
        .context("pid")?;
    let ss: Vec<&str> = out
        .split("SS_BEGIN")
        .nth(1)
        .and_then(|s| s.split("SS_END").next())
        .context("ss output")?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let json_line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .context("who json")?;
    let report: Value = serde_json::from_str(json_line)?;
    let sockets = report["sockets"].as_array().context("sockets")?;
    ensure!(
        sockets.len() == ss.len(),
        "who found {} sockets, ss {}:\n{}\n{report:#}",
        sockets.len(),
        ss.len(),
        ss.join("\n")
    );
    ensure!(
        sockets.len() == 5,
        "LISTEN + UDP + 2 TIME_WAIT + ESTABLISHED: {report:#}"
    );
    let count = |state: &str| sockets.iter().filter(|s| s["state"] == state).count();
    let ss_count = |state: &str| ss.iter().filter(|l| l.contains(state)).count();
    ensure!(
        count("TIME_WAIT") == 2 && ss_count("TIME-WAIT") == 2,
        "{report:#}"
    );
    ensure!(count("LISTEN") == 1 && ss_count("LISTEN") == 1);
    ensure!(count("ESTABLISHED") == 1 && ss_count("ESTAB") == 1);
    ensure!(count("UNCONN") == 1 && ss_count("UNCONN") == 1);
    for s in sockets {
        if s["state"] == "TIME_WAIT" {
            ensure!(
                s["pid"].is_null() && s["no_owner"].as_str().is_some(),
                "{s}"
            );
        } else {
            ensure!(
                s["pid"] == pid && s["comm"] == "python3" && s["user"] == "root",
                "{s}"
            );
            ensure!(
                s["cmdline"]
                    .as_str()
                    .is_some_and(|c| c.contains("sockets.py")),
                "{s}"
            );
        }
    }
    ensure!(
        sockets[0]["state"] == "LISTEN"
            && sockets[0]["protocol"] == "tcp"
            && sockets[0]["family"] == "ipv4",
        "{report:#}"
    );
    ensure!(out.contains("TEXT_LINES=6"), "header + 5 sockets:\n{out}");
    Ok(())
}

#[test]
fn who_on_a_free_port_says_nothing_is_bound() -> Result<()> {
    skip_unless_kernel!();
    let out = netns_script(r#""$PW" who 4242"#, &[])?;
    ensure!(out.contains("nothing is bound to port 4242"), "{out}");
    Ok(())
}

#[test]
fn who_names_the_creator_of_a_time_wait_socket_from_the_journal() -> Result<()> {
    skip_unless_kernel!();
    let out = netns_script(
        r#"
"$PW" record --journal "$D/j" 2>"$D/rec.err" &
rec=$!
for _ in $(seq 1 400); do grep -q '^portwatch: attached' "$D/rec.err" && break; sleep 0.025; done
python3 -c '
import os, socket
lst = socket.socket(); lst.bind(("127.0.0.1", 1433)); lst.listen()
c = socket.create_connection(("127.0.0.1", 1433)); s, _ = lst.accept()
s.close(); c.recv(1); c.close()
print("SERVER=%d" % os.getpid())
'
sleep 0.3
kill -TERM $rec; wait $rec
"$PW" who 1433 --journal "$D/j" --json
"#,
        &[],
    )?;
    let server: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("SERVER="))
        .and_then(|v| v.trim().parse().ok())
        .context("server pid")?;
    let report: Value =
        serde_json::from_str(out.lines().find(|l| l.starts_with('{')).context("json")?)?;
    let tw = report["sockets"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["state"] == "TIME_WAIT"))
        .context("a TIME_WAIT socket on 1433")?;
    ensure!(tw["pid"].is_null(), "{tw}");
    ensure!(tw["created_by"]["pid"] == server, "{tw}");
    ensure!(tw["created_by"]["comm"] == "python3", "{tw}");
    Ok(())
}

/// A forked server (master and worker share the listener) and a client that
/// used up a 6-port range towards it: `who` lists both processes, and
/// `--to`, `--count`, `--state` and `--remote` answer the incident's
/// questions.
#[test]
fn who_answers_for_shared_listeners_and_an_exhausted_destination() -> Result<()> {
    skip_unless_kernel!();
    let out = netns_script(
        r#"
# An even-sized range: connect() scans an even number of ports from a random
# offset (__inet_hash_connect), so with 5 it sometimes finds only 4. (No
# TIME_WAIT reuse and RFC 1337 on: every test namespace, STEADY_TIMEWAIT.)
echo "40000 40005" >/proc/sys/net/ipv4/ip_local_port_range
python3 "$D/server.py" >"$D/pids" &
for _ in $(seq 1 100); do [ "$(wc -l <"$D/pids")" -ge 2 ] && break; sleep 0.05; done
python3 -c '
import socket
for _ in range(6):
    c = socket.create_connection(("127.0.0.1", 8080)); c.close()
'
sleep 0.2
echo "PIDS=$(tr '\n' ' ' <"$D/pids")"
echo "WHO $("$PW" who 8080 --state listen --json)"
echo "TO $("$PW" who --to 127.0.0.1:8080 --json)"
echo "COUNT $("$PW" who --to 127.0.0.1:8080 --count --json)"
echo "REMOTE $("$PW" who --remote 127.0.0.1:8080 --state time-wait --json)"
"$PW" who --to 127.0.0.1:8080 >"$D/to.txt"
echo "TOTEXT $(head -1 "$D/to.txt")"
kill $(cat "$D/pids") 2>/dev/null || true
"#,
        &[(
            "server.py",
            r#"
import os, socket, sys, time
lst = socket.socket(); lst.bind(("127.0.0.1", 8080)); lst.listen(16)
if os.fork() == 0:
    print(os.getpid(), flush=True); time.sleep(20); sys.exit(0)
print(os.getpid(), flush=True)
lst.settimeout(20)
try:
    while True:
        s, _ = lst.accept(); s.recv(1); s.close()
except socket.timeout:
    pass
"#,
        )],
    )?;
    let json = |tag: &str| -> Result<Value> {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .with_context(|| format!("{tag} missing:\n{out}"))?;
        Ok(serde_json::from_str(line.trim())?)
    };
    let pids: Vec<u64> = out
        .lines()
        .find_map(|l| l.strip_prefix("PIDS="))
        .context("pids")?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    ensure!(pids.len() == 2, "{out}");
    let who = json("WHO ")?;
    let sockets = who["sockets"].as_array().context("sockets")?;
    ensure!(
        sockets.len() == 1 && sockets[0]["state"] == "LISTEN",
        "{who:#}"
    );
    let mut holders: Vec<u64> = sockets[0]["also"]
        .as_array()
        .context("also")?
        .iter()
        .filter_map(|a| a["pid"].as_u64())
        .chain(sockets[0]["pid"].as_u64())
        .collect();
    holders.sort();
    let mut want = pids.clone();
    want.sort();
    ensure!(holders == want, "master and worker both hold it: {who:#}");

    let to = json("TO ")?;
    ensure!(
        to["to"]["in_use"] == 6 && to["to"]["capacity"] == 6,
        "{to:#}"
    );
    ensure!(to["to"]["by_state"]["TIME_WAIT"] == 6, "{to:#}");
    ensure!(
        to["sockets"].as_array().is_some_and(|s| s.len() == 6),
        "{to:#}"
    );
    let count = json("COUNT ")?;
    ensure!(
        count["counts"][0]["count"] == 6 && count["counts"][0]["state"] == "TIME_WAIT",
        "{count:#}"
    );
    let remote = json("REMOTE ")?;
    ensure!(
        remote["sockets"].as_array().is_some_and(|s| s.len() == 6
            && s.iter()
                .all(|s| s["state"] == "TIME_WAIT" && s["uid"].is_null())),
        "{remote:#}"
    );
    let text = out
        .lines()
        .find_map(|l| l.strip_prefix("TOTEXT "))
        .context("text")?;
    ensure!(
        text.starts_with("towards 127.0.0.1:8080: 6 of the 6 usable ports of the ephemeral range 40000-40005 are held (6 TIME_WAIT); none is left"),
        "{text}"
    );
    Ok(())
}
