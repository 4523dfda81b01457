//! The live ETW session and the .etl reader (Windows only).
//!
//! Why `windows-sys` and not `ferrisetw` or the `windows` crate:
//! portwatch decodes payloads itself with pure, fuzzed functions
//! ([`super::decode`]), so it needs only the raw EVENT_RECORD bytes, not
//! ferrisetw's TDH schema lookups (a per-event cost, and they need the
//! manifest registered on the machine, which an offline .etl does not
//! guarantee). ferrisetw also hides the session's properties, and portwatch
//! needs them: a named session, a stale one stopped first, buffer sizes for
//! bursts, and EventsLost/RealTimeBuffersLost through ControlTraceW
//! (EVENT_TRACE_CONTROL_QUERY). The `windows` crate would do, but its
//! COM-style wrappers add nothing for these five plain Win32 calls and cost
//! build time; `windows-sys` is Microsoft's raw bindings, already in the
//! dependency tree through tokio.

use std::sync::mpsc::SyncSender;

use windows_sys::core::GUID;
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_ALREADY_EXISTS, ERROR_CANCELLED, ERROR_SUCCESS,
    ERROR_WMI_INSTANCE_NOT_FOUND,
};
use windows_sys::Win32::System::Diagnostics::Etw::{
    CloseTrace, ControlTraceW, EnableTraceEx2, OpenTraceW, ProcessTrace, StartTraceW,
    CONTROLTRACE_HANDLE, ENABLE_TRACE_PARAMETERS, ENABLE_TRACE_PARAMETERS_VERSION_2,
    EVENT_CONTROL_CODE_CAPTURE_STATE, EVENT_CONTROL_CODE_ENABLE_PROVIDER, EVENT_FILTER_DESCRIPTOR,
    EVENT_FILTER_TYPE_EVENT_ID, EVENT_HEADER_FLAG_32_BIT_HEADER, EVENT_RECORD,
    EVENT_TRACE_CONTROL_QUERY, EVENT_TRACE_CONTROL_STOP, EVENT_TRACE_LOGFILEW,
    EVENT_TRACE_PROPERTIES, EVENT_TRACE_REAL_TIME_MODE, PROCESSTRACE_HANDLE,
    PROCESS_TRACE_MODE_EVENT_RECORD, PROCESS_TRACE_MODE_REAL_TIME, WNODE_FLAG_TRACED_GUID,
};

use super::payload::filetime_to_unix_ns;
use super::{PointerSize, Provider};

/// The session's name; a session left behind by a killed portwatch has it too.
pub const SESSION_NAME: &str = "portwatch";

/// Buffers sized for bursts: ETW's defaults (a few 4-64 KiB buffers) lose
/// most events of a connection storm. 256 KiB x 64..512 buffers.
const BUFFER_KB: u32 = 256;
const MIN_BUFFERS: u32 = 64;
const MAX_BUFFERS: u32 = 512;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("starting an ETW session needs an administrator: run portwatch from an elevated prompt (Run as administrator)")]
    AccessDenied,
    #[error("ETW is unavailable here: {call} failed with Windows error {code}; `portwatch trace` needs Event Tracing for Windows, which this system (or wine) does not provide; `portwatch who` and `portwatch doctor` still work")]
    Unavailable { call: &'static str, code: u32 },
    #[error("an ETW session named `{0}` is running and could not be stopped; stop it with `logman stop {0} -ets` and try again")]
    Stuck(String),
    #[error("cannot enable {provider}: Windows error {code}")]
    Enable { provider: &'static str, code: u32 },
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

fn guid(p: Provider) -> GUID {
    let (data1, data2, data3, data4) = p.guid_parts();
    GUID {
        data1,
        data2,
        data3,
        data4,
    }
}

/// EVENT_TRACE_PROPERTIES followed by room for the logger name, 8-aligned.
struct Props {
    buf: Vec<u64>,
}

impl Props {
    fn new(name: &str) -> Self {
        let base = std::mem::size_of::<EVENT_TRACE_PROPERTIES>();
        let total = base + (name.len() + 1) * 2 + 1024;
        let mut p = Props {
            buf: vec![0u64; total.div_ceil(8)],
        };
        let bytes = (p.buf.len() * 8) as u32;
        let props = p.get();
        props.Wnode.BufferSize = bytes;
        props.LoggerNameOffset = base as u32;
        p
    }

    fn get(&mut self) -> &mut EVENT_TRACE_PROPERTIES {
        // SAFETY: the buffer is 8-aligned, zeroed and at least as large as
        // the struct, which is plain data valid when zeroed.
        unsafe { &mut *self.buf.as_mut_ptr().cast::<EVENT_TRACE_PROPERTIES>() }
    }
}

fn control(name: &str, code: u32) -> (u32, Props) {
    let mut props = Props::new(name);
    let w = wide(name);
    // SAFETY: name is NUL-terminated, props sized as ControlTraceW wants.
    let rc = unsafe {
        ControlTraceW(
            CONTROLTRACE_HANDLE { Value: 0 },
            w.as_ptr(),
            props.get(),
            code,
        )
    };
    (rc, props)
}

/// A running session; stopped when dropped (every exit path, panics
/// included). A process killed outright leaves it running: the next
/// [`Session::start`] stops it first.
pub struct Session {
    name: String,
    handle: CONTROLTRACE_HANDLE,
    stopped: bool,
}

impl Session {
    pub fn start(name: &str) -> Result<Session, SessionError> {
        // A stale session of ours (a killed portwatch) first.
        let (rc, _) = control(name, EVENT_TRACE_CONTROL_STOP);
        if rc == ERROR_ACCESS_DENIED {
            return Err(SessionError::AccessDenied);
        }
        let mut props = Props::new(name);
        {
            let p = props.get();
            p.Wnode.Flags = WNODE_FLAG_TRACED_GUID;
            // 1 = QueryPerformanceCounter: fine-grained; the consumer still
            // gets FILETIME stamps.
            p.Wnode.ClientContext = 1;
            p.BufferSize = BUFFER_KB;
            p.MinimumBuffers = MIN_BUFFERS;
            p.MaximumBuffers = MAX_BUFFERS;
            p.LogFileMode = EVENT_TRACE_REAL_TIME_MODE;
            p.FlushTimer = 1;
        }
        let w = wide(name);
        let mut handle = CONTROLTRACE_HANDLE { Value: 0 };
        // SAFETY: out-pointer, NUL-terminated name, sized properties.
        let rc = unsafe { StartTraceW(&mut handle, w.as_ptr(), props.get()) };
        match rc {
            ERROR_SUCCESS => {}
            ERROR_ACCESS_DENIED => return Err(SessionError::AccessDenied),
            ERROR_ALREADY_EXISTS => return Err(SessionError::Stuck(name.to_owned())),
            code => {
                return Err(SessionError::Unavailable {
                    call: "StartTraceW",
                    code,
                })
            }
        }
        let session = Session {
            name: name.to_owned(),
            handle,
            stopped: false,
        };
        for p in Provider::ALL {
            session.enable(p, EVENT_CONTROL_CODE_ENABLE_PROVIDER)?;
        }
        // TcpConnectionRundown for the connections that already exist, so
        // their later state changes are attributed too. Best effort.
        let _ = session.enable(Provider::Tcpip, EVENT_CONTROL_CODE_CAPTURE_STATE);
        Ok(session)
    }

    /// Enables `p` for its events only (an event-id filter, Windows 8.1
    /// and later); where the filter is refused, without it.
    fn enable(&self, p: Provider, code: u32) -> Result<(), SessionError> {
        let rc = match self.enable_with(p, code, true) {
            ERROR_SUCCESS => ERROR_SUCCESS,
            _ => self.enable_with(p, code, false),
        };
        if rc == ERROR_SUCCESS {
            Ok(())
        } else {
            Err(SessionError::Enable {
                provider: p.name(),
                code: rc,
            })
        }
    }

    fn enable_with(&self, p: Provider, code: u32, filtered: bool) -> u32 {
        let g = guid(p);
        // EVENT_FILTER_EVENT_ID: FilterIn (1), Reserved, Count, Events[Count].
        let ids = p.event_ids();
        let mut filter: Vec<u16> = Vec::with_capacity(2 + ids.len());
        filter.push(1); // FilterIn = TRUE, Reserved = 0 (little-endian u16)
        filter.push(ids.len() as u16);
        filter.extend_from_slice(ids);
        let mut desc = EVENT_FILTER_DESCRIPTOR {
            Ptr: filter.as_ptr() as u64,
            Size: (filter.len() * 2) as u32,
            Type: EVENT_FILTER_TYPE_EVENT_ID,
        };
        let params = ENABLE_TRACE_PARAMETERS {
            Version: ENABLE_TRACE_PARAMETERS_VERSION_2,
            EnableFilterDesc: &mut desc,
            FilterDescCount: 1,
            ..Default::default()
        };
        // SAFETY: valid session handle and GUID; the filter and its
        // descriptor live until the call returns.
        unsafe {
            EnableTraceEx2(
                self.handle,
                &g,
                code,
                4, // TRACE_LEVEL_INFORMATION
                p.keywords(),
                0,
                0,
                if filtered && code == EVENT_CONTROL_CODE_ENABLE_PROVIDER {
                    &params
                } else {
                    std::ptr::null()
                },
            )
        }
    }

    /// (EventsLost, RealTimeBuffersLost) so far.
    pub fn lost(&self) -> Option<(u64, u64)> {
        let (rc, mut props) = control(&self.name, EVENT_TRACE_CONTROL_QUERY);
        let p = props.get();
        (rc == ERROR_SUCCESS).then(|| (u64::from(p.EventsLost), u64::from(p.RealTimeBuffersLost)))
    }

    pub fn stop(&mut self) {
        if !self.stopped {
            let _ = control(&self.name, EVENT_TRACE_CONTROL_STOP);
            self.stopped = true;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One event, copied out of ETW's buffer.
#[derive(Debug)]
pub struct OwnedEvent {
    pub provider: Provider,
    pub id: u16,
    pub version: u8,
    pub pointer: PointerSize,
    pub time: i128,
    pub header_pid: u32,
    pub data: Vec<u8>,
}

impl OwnedEvent {
    pub fn raw(&self) -> super::RawEvent<'_> {
        super::RawEvent {
            provider: self.provider,
            id: self.id,
            version: self.version,
            pointer: self.pointer,
            time: self.time,
            header_pid: self.header_pid,
            data: &self.data,
        }
    }
}

unsafe extern "system" fn on_event(rec: *mut EVENT_RECORD) {
    // SAFETY: ETW passes a valid record for the duration of the call; its
    // UserContext is the sender `consume` leaked for this trace.
    let rec = unsafe { &*rec };
    let h = &rec.EventHeader;
    let g = h.ProviderId;
    let Some(provider) = Provider::from_guid_parts((g.data1, g.data2, g.data3, g.data4)) else {
        return;
    };
    let data = if rec.UserData.is_null() {
        Vec::new()
    } else {
        // SAFETY: UserData points at UserDataLength bytes.
        unsafe {
            std::slice::from_raw_parts(rec.UserData.cast::<u8>(), usize::from(rec.UserDataLength))
        }
        .to_vec()
    };
    let ev = OwnedEvent {
        provider,
        id: h.EventDescriptor.Id,
        version: h.EventDescriptor.Version,
        pointer: if u32::from(h.Flags) & EVENT_HEADER_FLAG_32_BIT_HEADER != 0 {
            PointerSize::Four
        } else {
            PointerSize::Eight
        },
        time: filetime_to_unix_ns(h.TimeStamp),
        header_pid: h.ProcessId,
        data,
    };
    // SAFETY: see above; the sender outlives ProcessTrace.
    let tx = unsafe { &*rec.UserContext.cast::<SyncSender<OwnedEvent>>() };
    // Blocks when the pipeline is behind: ETW then counts lost buffers,
    // which the session reports; nothing is dropped here.
    let _ = tx.send(ev);
}

/// Where events come from: the live session, or an .etl file.
pub enum Source<'a> {
    RealTime(&'a str),
    File(&'a std::path::Path),
}

/// An opened trace: [`Opened::process`] delivers its events.
pub struct Opened {
    handle: PROCESSTRACE_HANDLE,
    ctx: *mut SyncSender<OwnedEvent>,
    boot_time: i64,
    // OpenTraceW keeps pointers to the name.
    _name: Vec<u16>,
}

// SAFETY: the handle is a plain value and the context a sender (Send),
// used only by the thread that calls `process`.
unsafe impl Send for Opened {}

/// Opens the trace (the live session or an .etl file) so that a failure
/// is known before anything is announced.
pub fn open(source: Source<'_>, tx: SyncSender<OwnedEvent>) -> Result<Opened, SessionError> {
    let mut name = match &source {
        Source::RealTime(n) => wide(n),
        Source::File(p) => wide(&p.to_string_lossy()),
    };
    let ctx = Box::into_raw(Box::new(tx));
    let mut log = EVENT_TRACE_LOGFILEW::default();
    match source {
        Source::RealTime(_) => {
            log.LoggerName = name.as_mut_ptr();
            log.Anonymous1.ProcessTraceMode =
                PROCESS_TRACE_MODE_REAL_TIME | PROCESS_TRACE_MODE_EVENT_RECORD;
        }
        Source::File(_) => {
            log.LogFileName = name.as_mut_ptr();
            log.Anonymous1.ProcessTraceMode = PROCESS_TRACE_MODE_EVENT_RECORD;
        }
    }
    log.Anonymous2.EventRecordCallback = Some(on_event);
    log.Context = ctx.cast();
    // SAFETY: log is fully set up; name and ctx outlive the trace.
    let handle: PROCESSTRACE_HANDLE = unsafe { OpenTraceW(&mut log) };
    if handle.Value == u64::MAX {
        let code = std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as u32;
        // SAFETY: no trace was opened; nothing else holds ctx.
        drop(unsafe { Box::from_raw(ctx) });
        return Err(SessionError::Unavailable {
            call: "OpenTraceW",
            code,
        });
    }
    Ok(Opened {
        handle,
        ctx,
        boot_time: log.LogfileHeader.BootTime,
        _name: name,
    })
}

impl Opened {
    /// Delivers events until the session stops or the file ends (blocking:
    /// run it on its own thread). Returns the trace's boot time (FILETIME).
    pub fn process(self) -> Result<i64, SessionError> {
        // SAFETY: one valid handle, no time bounds.
        let rc = unsafe { ProcessTrace(&self.handle, 1, std::ptr::null(), std::ptr::null()) };
        // SAFETY: the handle OpenTraceW gave.
        unsafe { CloseTrace(self.handle) };
        // SAFETY: ProcessTrace has returned; no callback can run any more.
        drop(unsafe { Box::from_raw(self.ctx) });
        match rc {
            ERROR_SUCCESS | ERROR_CANCELLED | ERROR_WMI_INSTANCE_NOT_FOUND => Ok(self.boot_time),
            code => Err(SessionError::Unavailable {
                call: "ProcessTrace",
                code,
            }),
        }
    }
}
