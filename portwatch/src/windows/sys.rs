//! The Windows system calls behind `who`, `doctor`, `reserve`, attribution
//! and `install-service`: IP Helper tables, process image names, services,
//! registry values, `netsh`/`reg` and elevation. Everything they return is
//! interpreted by the pure modules beside this one.

use std::collections::HashMap;
use std::ffi::c_void;
use std::process::Command;

use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_FILE_NOT_FOUND, ERROR_INSUFFICIENT_BUFFER, ERROR_MORE_DATA, ERROR_SUCCESS,
    HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    GetExtendedTcpTable, GetExtendedUdpTable, TCP_TABLE_OWNER_PID_ALL, UDP_TABLE_OWNER_PID,
};
use windows_sys::Win32::Networking::WinSock::{AF_INET, AF_INET6};
use windows_sys::Win32::Security::{
    GetTokenInformation, TokenElevation, TOKEN_ELEVATION, TOKEN_QUERY,
};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::Registry::{
    RegGetValueW, HKEY_LOCAL_MACHINE, RRF_RT_REG_DWORD, RRF_RT_REG_SZ,
};
use windows_sys::Win32::System::Services::{
    CloseServiceHandle, EnumServicesStatusExW, OpenSCManagerW, ENUM_SERVICE_STATUS_PROCESSW,
    SC_ENUM_PROCESS_INFO, SC_MANAGER_ENUMERATE_SERVICE, SERVICE_ACTIVE, SERVICE_WIN32,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

use super::doctor::RegValue;
use super::tables::{self, Row, Table};
use crate::attribution::{PortSocket, ProcessInfo, ProcessLookup, SocketProbe, Tuple};
use crate::model::TcpState;

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

fn from_wide(w: &[u16]) -> String {
    let end = w.iter().position(|c| *c == 0).unwrap_or(w.len());
    String::from_utf16_lossy(&w[..end])
}

/// One table, sized by asking first (the table can grow between calls:
/// retry a few times).
fn table_bytes(t: Table) -> Result<Vec<u8>, String> {
    let af = u32::from(match t {
        Table::Tcp4 | Table::Udp4 => AF_INET,
        Table::Tcp6 | Table::Udp6 => AF_INET6,
    });
    let mut size: u32 = 0;
    for _ in 0..5 {
        let mut buf = vec![0u8; size as usize];
        let ptr = if buf.is_empty() {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast::<c_void>()
        };
        // SAFETY: buf has `size` bytes (or is null with size 0 to ask).
        let rc = unsafe {
            match t {
                Table::Tcp4 | Table::Tcp6 => {
                    GetExtendedTcpTable(ptr, &mut size, 0, af, TCP_TABLE_OWNER_PID_ALL, 0)
                }
                Table::Udp4 | Table::Udp6 => {
                    GetExtendedUdpTable(ptr, &mut size, 0, af, UDP_TABLE_OWNER_PID, 0)
                }
            }
        };
        match rc {
            ERROR_SUCCESS => {
                buf.truncate(size as usize);
                return Ok(buf);
            }
            ERROR_INSUFFICIENT_BUFFER => size = size.saturating_add(4096),
            code => return Err(format!("{} failed with Windows error {code}", t.name())),
        }
    }
    Err(format!("{} kept growing while it was read", t.name()))
}

/// Every TCP and UDP row, IPv4 and IPv6. Tables that cannot be read are
/// reported, the others still returned.
pub fn socket_rows() -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for t in Table::ALL {
        match table_bytes(t).and_then(|b| tables::parse(t, &b).map_err(|e| e.to_string())) {
            Ok(r) => rows.extend(r),
            Err(e) => errors.push(e),
        }
    }
    (rows, errors)
}

/// pid -> image name (`sqlservr.exe`) for every process.
pub fn process_names() -> Result<HashMap<u32, String>, String> {
    // SAFETY: plain snapshot of the process list, closed below.
    let snap: HANDLE = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if snap == INVALID_HANDLE_VALUE || snap.is_null() {
        return Err(format!(
            "CreateToolhelp32Snapshot failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut out = HashMap::new();
    let mut e = PROCESSENTRY32W {
        dwSize: std::mem::size_of::<PROCESSENTRY32W>() as u32,
        ..Default::default()
    };
    // SAFETY: e is sized as the API requires.
    let mut ok = unsafe { Process32FirstW(snap, &mut e) } != 0;
    while ok {
        out.insert(e.th32ProcessID, from_wide(&e.szExeFile));
        // SAFETY: as above.
        ok = unsafe { Process32NextW(snap, &mut e) } != 0;
    }
    // SAFETY: the snapshot handle we opened.
    unsafe { CloseHandle(snap) };
    Ok(out)
}

/// pid -> names of the running services it hosts.
pub fn service_pids() -> Result<HashMap<u32, Vec<String>>, String> {
    // SAFETY: local SCM, enumerate right only; closed below.
    let scm = unsafe {
        OpenSCManagerW(
            std::ptr::null(),
            std::ptr::null(),
            SC_MANAGER_ENUMERATE_SERVICE,
        )
    };
    if scm.is_null() {
        return Err(format!(
            "OpenSCManager failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut out: HashMap<u32, Vec<String>> = HashMap::new();
    let mut buf: Vec<u64> = vec![0; 8192];
    let mut resume: u32 = 0;
    let result = loop {
        let (mut needed, mut count) = (0u32, 0u32);
        // SAFETY: buf is 8-aligned and its byte size is passed.
        let ok = unsafe {
            EnumServicesStatusExW(
                scm,
                SC_ENUM_PROCESS_INFO,
                SERVICE_WIN32,
                SERVICE_ACTIVE,
                buf.as_mut_ptr().cast(),
                (buf.len() * 8) as u32,
                &mut needed,
                &mut count,
                &mut resume,
                std::ptr::null(),
            )
        } != 0;
        let err = std::io::Error::last_os_error();
        // SAFETY: the API wrote `count` entries at the start of buf.
        let entries = unsafe {
            std::slice::from_raw_parts(
                buf.as_ptr().cast::<ENUM_SERVICE_STATUS_PROCESSW>(),
                count as usize,
            )
        };
        for s in entries {
            let pid = s.ServiceStatusProcess.dwProcessId;
            if pid != 0 && !s.lpServiceName.is_null() {
                // SAFETY: NUL-terminated string inside buf.
                let name = unsafe { widestr(s.lpServiceName) };
                out.entry(pid).or_default().push(name);
            }
        }
        if ok {
            break Ok(());
        }
        if err.raw_os_error() == Some(ERROR_MORE_DATA as i32) {
            if needed as usize > buf.len() * 8 {
                buf = vec![0; (needed as usize).div_ceil(8)];
            }
            continue;
        }
        break Err(format!("EnumServicesStatusEx failed: {err}"));
    };
    // SAFETY: the handle we opened.
    unsafe { CloseServiceHandle(scm) };
    result.map(|()| out)
}

/// # Safety
/// `p` must point at a NUL-terminated UTF-16 string.
unsafe fn widestr(p: *const u16) -> String {
    let mut n = 0;
    // SAFETY: per the contract, reads up to the terminator.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: n units were just read.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, n) })
}

/// A DWORD under HKLM.
pub fn reg_dword(key: &str, value: &str) -> RegValue {
    let (k, v) = (wide(key), wide(value));
    let mut data: u32 = 0;
    let mut size = 4u32;
    // SAFETY: out-buffer of 4 bytes for a REG_DWORD.
    let rc = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            k.as_ptr(),
            v.as_ptr(),
            RRF_RT_REG_DWORD,
            std::ptr::null_mut(),
            (&mut data as *mut u32).cast(),
            &mut size,
        )
    };
    match rc {
        ERROR_SUCCESS => RegValue::Set(data),
        ERROR_FILE_NOT_FOUND => RegValue::Absent,
        code => RegValue::Unreadable(format!("RegGetValue {key}\\{value}: Windows error {code}")),
    }
}

/// A string under HKLM, if present.
pub fn reg_string(key: &str, value: &str) -> Option<String> {
    let (k, v) = (wide(key), wide(value));
    let mut buf = vec![0u16; 512];
    let mut size = (buf.len() * 2) as u32;
    // SAFETY: out-buffer of `size` bytes.
    let rc = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            k.as_ptr(),
            v.as_ptr(),
            RRF_RT_REG_SZ,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            &mut size,
        )
    };
    (rc == ERROR_SUCCESS).then(|| from_wide(&buf))
}

pub fn os_name() -> String {
    let key = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion";
    match (
        reg_string(key, "ProductName"),
        reg_string(key, "CurrentBuild"),
    ) {
        (Some(p), Some(b)) => format!("{p}, build {b}"),
        (Some(p), None) => p,
        _ => "Windows".into(),
    }
}

pub fn is_elevated() -> bool {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: our own process token, query only; closed below.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return false;
    }
    let mut elev = TOKEN_ELEVATION { TokenIsElevated: 0 };
    let mut len = 0u32;
    // SAFETY: out-struct of the size passed.
    let ok = unsafe {
        GetTokenInformation(
            token,
            TokenElevation,
            (&mut elev as *mut TOKEN_ELEVATION).cast(),
            std::mem::size_of::<TOKEN_ELEVATION>() as u32,
            &mut len,
        )
    } != 0;
    // SAFETY: the token we opened.
    unsafe { CloseHandle(token) };
    ok && elev.TokenIsElevated != 0
}

/// Runs a system tool, returning stdout, or what went wrong (its stderr or
/// stdout when it failed).
pub fn run_tool(program: &str, args: &[String]) -> Result<String, String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => {
            let text = if out.stderr.is_empty() {
                out.stdout
            } else {
                out.stderr
            };
            Err(format!(
                "`{program} {}` failed ({}): {}",
                args.join(" "),
                out.status,
                super::printable(String::from_utf8_lossy(&text).trim())
            ))
        }
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

pub fn netsh(args: &str) -> Result<String, String> {
    let args: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
    run_tool("netsh", &args)
}

/// The live socket tables, for attribution (holders of a port a bind()
/// could not get).
pub struct WinSockets;

fn tcp_state(name: &str) -> Option<TcpState> {
    use TcpState::*;
    Some(match name {
        "LISTEN" => Listen,
        "SYN_SENT" => SynSent,
        "SYN_RECV" => SynRecv,
        "ESTABLISHED" => Established,
        "FIN_WAIT1" => FinWait1,
        "FIN_WAIT2" => FinWait2,
        "CLOSE_WAIT" => CloseWait,
        "CLOSING" => Closing,
        "LAST_ACK" => LastAck,
        "TIME_WAIT" => TimeWait,
        "CLOSE" => Close,
        _ => return None,
    })
}

impl SocketProbe for WinSockets {
    fn tcp_state(&mut self, _: Option<u64>, t: Tuple) -> Option<TcpState> {
        socket_rows().0.into_iter().find_map(|r| {
            (r.protocol == crate::model::Protocol::Tcp
                && (r.local, r.lport, r.remote, r.rport) == t)
                .then(|| tcp_state(&r.state))
                .flatten()
        })
    }

    fn on_port(&mut self, _: Option<u64>, port: u16) -> Result<Vec<PortSocket>, String> {
        let names = process_names().unwrap_or_default();
        Ok(socket_rows()
            .0
            .into_iter()
            .filter(|r| r.lport == port)
            .map(|r| PortSocket {
                protocol: r.protocol,
                state: tcp_state(&r.state),
                saddr: r.local,
                sport: r.lport,
                daddr: r.remote,
                dport: r.rport,
                pid: (r.pid != 0).then_some(r.pid),
                comm: names.get(&r.pid).cloned(),
                v6only: false,
            })
            .collect())
    }
}

/// Process names for events (ETW gives pids only).
#[derive(Default)]
pub struct WinProcesses {
    names: HashMap<u32, String>,
    refreshed: Option<std::time::Instant>,
}

impl WinProcesses {
    /// The image name of `pid`, re-reading the process list at most every
    /// 200 ms when a pid is new.
    pub fn name(&mut self, pid: u32) -> Option<String> {
        if !self.names.contains_key(&pid)
            && self
                .refreshed
                .is_none_or(|t| t.elapsed() > std::time::Duration::from_millis(200))
        {
            if let Ok(n) = process_names() {
                self.names = n;
            }
            self.refreshed = Some(std::time::Instant::now());
        }
        self.names.get(&pid).cloned()
    }
}

impl ProcessLookup for WinProcesses {
    fn lookup(&mut self, _pid: u32) -> Option<ProcessInfo> {
        None
    }
}
