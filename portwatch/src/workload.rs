//! What a process runs as, read from its cgroup path: the systemd unit, or
//! the container runtime and container id, and the Kubernetes pod uid.
//! Platform-free: a recording's cgroup paths are read the same way.
//!
//! The runtimes name their cgroups (systemd and cgroupfs drivers alike):
//!
//! | runtime | systemd driver | cgroupfs driver |
//! |---|---|---|
//! | docker | `docker-ID.scope` | `/docker/ID` |
//! | containerd (CRI) | `cri-containerd-ID.scope` | `/kubepods/.../podUID/ID` |
//! | cri-o | `crio-ID.scope` (`crio-conmon-ID.scope` for its monitor) | `/kubepods/.../crio-ID` |
//! | podman | `libpod-ID.scope` (`libpod-conmon-ID.scope`) | `/libpod_parent/libpod-ID` |
//!
//! and the kubelet puts a pod's containers under `kubepods-...-podUID.slice`
//! (dashes of the uid turned into underscores) or `/kubepods/.../podUID`.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

/// Where a process runs. Every field is always written, null when the
/// cgroup path does not tell it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Workload {
    /// The systemd unit or container, as `who` names it
    /// (`nginx.service`, `container 0123456789ab`).
    #[serde(default)]
    pub unit: Option<SmolStr>,
    /// `docker`, `containerd`, `cri-o` or `podman`; null where the path
    /// holds a container id but not whose (a cgroupfs kubelet's).
    #[serde(default)]
    pub container_runtime: Option<SmolStr>,
    /// The full container id (64 hex digits, as `docker ps --no-trunc` and
    /// `crictl ps` show it).
    #[serde(default)]
    pub container_id: Option<SmolStr>,
    /// The Kubernetes pod's uid (`kubectl get pod -o jsonpath={.metadata.uid}`).
    #[serde(default)]
    pub pod_uid: Option<SmolStr>,
}

/// Scope name prefixes and their runtime, monitor (conmon) scopes first.
const SCOPES: &[(&str, &str)] = &[
    ("crio-conmon-", "cri-o"),
    ("libpod-conmon-", "podman"),
    ("docker-", "docker"),
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("libpod-", "podman"),
];

fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `pod<uid>`, `kubepods-besteffort-pod<uid>.slice`: the uid, with the
/// systemd driver's underscores turned back into dashes.
fn pod_uid(part: &str) -> Option<String> {
    let rest = part.strip_suffix(".slice").unwrap_or(part);
    let uid = rest.rsplit_once("-pod").map_or_else(
        || rest.strip_prefix("pod"),
        |(_, u)| Some(u).filter(|_| rest.starts_with("kubepods")),
    )?;
    let uid = uid.replace('_', "-");
    let ok = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

/// A container scope or cgroupfs directory: (runtime, id).
fn container(parts: &[&str], i: usize) -> Option<(Option<&'static str>, String)> {
    let p = parts[i];
    for (prefix, runtime) in SCOPES {
        if let Some(id) = p.strip_prefix(prefix) {
            let id = id.strip_suffix(".scope").unwrap_or(id);
            if is_container_id(id) {
                return Some((Some(runtime), id.to_owned()));
            }
        }
    }
    let parent = i.checked_sub(1).map(|j| parts[j]);
    if is_container_id(p) {
        // `/docker/ID`; a bare id in a pod's cgroup is the container's, of
        // a runtime the path does not name.
        match parent {
            Some("docker") => return Some((Some("docker"), p.to_owned())),
            Some(pp) if pod_uid(pp).is_some() => return Some((None, p.to_owned())),
            _ => {}
        }
    }
    None
}

impl Workload {
    /// Reads a cgroup path (`/system.slice/nginx.service`,
    /// `/kubepods.slice/.../cri-containerd-ID.scope`).
    pub fn from_cgroup(path: &str) -> Workload {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut w = Workload::default();
        // Innermost first: a container inside a pod inside a slice.
        for i in (0..parts.len()).rev() {
            if w.container_id.is_none() && w.pod_uid.is_none() {
                if let Some((runtime, id)) = container(&parts, i) {
                    w.container_runtime = runtime.map(SmolStr::new_static);
                    w.container_id = Some(id.into());
                    continue;
                }
            }
            if w.pod_uid.is_none() {
                w.pod_uid = pod_uid(parts[i]).map(Into::into);
            }
        }
        w.unit = unit_from_cgroup(path).map(Into::into);
        w
    }

    /// [`Workload::from_cgroup`] of an optional path, remembered per path:
    /// a busy process's events all carry the same one.
    pub fn of(cgroup: Option<&str>) -> Workload {
        const MAX_REMEMBERED: usize = 4096;
        thread_local! {
            static SEEN: RefCell<HashMap<String, Workload>> = RefCell::new(HashMap::new());
        }
        let Some(path) = cgroup else {
            return Workload::default();
        };
        SEEN.with(|seen| {
            let mut seen = seen.borrow_mut();
            if let Some(w) = seen.get(path) {
                return w.clone();
            }
            let w = Workload::from_cgroup(path);
            if seen.len() >= MAX_REMEMBERED {
                seen.clear();
            }
            seen.insert(path.to_owned(), w.clone());
            w
        })
    }

    /// The runtime and short id, the unit, or nothing: for a narrow column.
    pub fn label(&self) -> Option<String> {
        match (&self.container_id, &self.unit) {
            (Some(id), _) => {
                let short: String = id.chars().take(12).collect();
                Some(match &self.container_runtime {
                    Some(rt) => format!("{rt}:{short}"),
                    None => format!("container:{short}"),
                })
            }
            (None, Some(unit)) => Some(unit.to_string()),
            _ => None,
        }
    }
}

/// The systemd unit or container a cgroup path belongs to, as `who`'s UNIT
/// column shows it: the innermost `*.service`/`*.scope` component, or a
/// container id under docker, podman (libpod) or kubepods.
pub fn unit_from_cgroup(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, p) in parts.iter().enumerate().rev() {
        for prefix in ["docker-", "libpod-", "cri-containerd-", "crio-"] {
            if let Some(id) = p
                .strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(".scope"))
            {
                let short: String = id.chars().take(12).collect();
                return Some(format!("container {short}"));
            }
        }
        if i > 0 && parts[i - 1] == "docker" && p.chars().count() >= 12 {
            // By characters: a cgroup name is anyone's to choose, multi-byte ones included.
            let short: String = p.chars().take(12).collect();
            return Some(format!("container {short}"));
        }
        if p.ends_with(".service") || p.ends_with(".scope") {
            return Some((*p).to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "8a7b6c5d-1234-4abc-9def-0123456789ab";

    #[test]
    fn systemd_units_and_sessions() {
        let unit = |p: &str| Workload::from_cgroup(p).unit;
        assert_eq!(
            unit("/system.slice/mssql-server.service"),
            some("mssql-server.service")
        );
        assert_eq!(
            unit("/user.slice/user-1000.slice/session-3.scope"),
            some("session-3.scope")
        );
        assert_eq!(
            container_of("/system.slice/mssql-server.service"),
            (None, None, None)
        );
        assert_eq!(Workload::from_cgroup("/"), Workload::default());
        assert_eq!(Workload::from_cgroup(""), Workload::default());
    }

    /// (runtime, id, pod uid) of a path.
    fn container_of(path: &str) -> (Option<SmolStr>, Option<SmolStr>, Option<SmolStr>) {
        let w = Workload::from_cgroup(path);
        (w.container_runtime, w.container_id, w.pod_uid)
    }

    fn some(s: &str) -> Option<SmolStr> {
        Some(s.into())
    }

    #[test]
    fn each_runtime_under_both_drivers() {
        for (path, rt) in [
            (format!("/system.slice/docker-{ID}.scope"), "docker"),
            (format!("/docker/{ID}"), "docker"),
            (format!("/system.slice/crio-{ID}.scope"), "cri-o"),
            (format!("/system.slice/crio-conmon-{ID}.scope"), "cri-o"),
            (format!("/machine.slice/libpod-{ID}.scope"), "podman"),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), "podman"),
            (format!("/libpod_parent/libpod-{ID}"), "podman"),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"),
                "podman",
            ),
        ] {
            assert_eq!(container_of(&path), (some(rt), some(ID), None), "{path}");
        }
        // The unit as `who` names it.
        let docker = Workload::from_cgroup(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(
            docker.unit.as_deref(),
            Some(format!("container {}", &ID[..12]).as_str())
        );
    }

    #[test]
    fn kubernetes_pods_under_both_drivers() {
        let systemd_uid = UID.replace('-', "_");
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            container_of(&systemd),
            (some("containerd"), some(ID), some(UID))
        );
        let guaranteed = format!("/kubepods.slice/kubepods-pod{systemd_uid}.slice/crio-{ID}.scope");
        assert_eq!(
            container_of(&guaranteed),
            (some("cri-o"), some(ID), some(UID))
        );
        // cgroupfs: a bare id under the pod; whose runtime, the path does not say.
        let cgroupfs = format!("/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(container_of(&cgroupfs), (None, some(ID), some(UID)));
        // The pod's own cgroup (a process in no container): the pod only.
        assert_eq!(
            container_of(&format!("/kubepods/pod{UID}")),
            (None, None, some(UID))
        );
    }

    #[test]
    fn look_alikes_are_not_containers_or_pods() {
        // Not hex, too short, or a pod uid of the wrong shape.
        for path in [
            "/system.slice/docker-compose.service",
            "/docker/short",
            "/system.slice/docker-zzzzzzzzzzzzzzzz.scope",
            "/kubepods/podnotauid/abc",
            "/user.slice/pod1234.slice",
        ] {
            let got = Workload::from_cgroup(path);
            assert_eq!((got.container_id, got.pod_uid), (None, None), "{path}");
        }
        assert_eq!(
            Workload::from_cgroup("/system.slice/docker-compose.service").unit,
            Some("docker-compose.service".into())
        );
    }

    #[test]
    fn remembered_answers_match_fresh_ones() {
        let path = format!("/docker/{ID}");
        let first = Workload::of(Some(&path));
        assert_eq!(first, Workload::from_cgroup(&path));
        assert_eq!(Workload::of(Some(&path)), first);
        assert_eq!(Workload::of(None), Workload::default());
        assert_eq!(first.label(), Some(format!("docker:{}", &ID[..12])));
    }
}
