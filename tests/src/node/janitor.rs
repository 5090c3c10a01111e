//! Taking a node down to nothing: every process, mount, cgroup, network
//! device, iptables chain and kernel setting it left, whether the node
//! stopped cleanly or its supervisor was killed. Each step is idempotent and
//! only touches what carries the node's names ([`super::BRIDGE`],
//! [`super::CGROUP_ROOT`], [`super::RUN_DIR`], the node's state folder, and
//! the KUBE-/CNI-/ATTACH-NODE- chains that only a node writes).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::network::{SysctlSnapshot, run, sysctl_snapshot_path};
use super::{BRIDGE, CGROUP_ROOT, CNI_NETWORK, RUN_DIR};
use crate::supervisor::processes_mentioning;

/// iptables chains a node creates: its own, kube-proxy's and kubelet's
/// (KUBE-), the CNI plugins' (CNI-).
pub const CHAIN_PREFIXES: [&str; 3] = ["ATTACH-NODE-", "KUBE-", "CNI-"];
const TABLES: [&str; 4] = ["filter", "nat", "mangle", "raw"];
const CGROUP_FS: &str = "/sys/fs/cgroup";
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";
const CNI_RESULTS: &str = "/var/lib/cni/results";
/// The kubelet's device-plugin socket ignores `--root-dir`.
const KUBELET_DEVICE_PLUGINS: &str = "/var/lib/kubelet/device-plugins";

fn is_ours(chain: &str) -> bool {
    CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

/// The `iptables-restore --noflush` script that removes our chains from the
/// `iptables-save -t <table>` output `saved`: first the jumps to them from
/// other chains, then their rules, then the chains. `None` when there is
/// nothing of ours.
pub fn chain_removal_script(table: &str, saved: &str) -> Option<String> {
    let ours: Vec<&str> = saved
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| is_ours(c))
        .collect();
    if ours.is_empty() {
        return None;
    }
    let mut script = format!("*{table}\n");
    for line in saved.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rule.split_whitespace().next().unwrap_or_default();
        if is_ours(chain) {
            continue;
        }
        let words: Vec<&str> = rule.split_whitespace().collect();
        let jumps_to_ours = words
            .windows(2)
            .any(|w| matches!(w[0], "-j" | "-g") && is_ours(w[1]));
        if jumps_to_ours {
            script.push_str(&format!("-D {rule}\n"));
        }
    }
    for chain in &ours {
        script.push_str(&format!("-F {chain}\n"));
    }
    for chain in &ours {
        script.push_str(&format!("-X {chain}\n"));
    }
    script.push_str("COMMIT\n");
    Some(script)
}

/// Removes our iptables chains and the bridge; returns what failed.
pub fn remove_network(iptables: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let dir = iptables.parent().unwrap_or(Path::new("/usr/sbin"));
    let save = dir.join("iptables-save");
    let restore = dir.join("iptables-restore");
    for table in TABLES {
        let saved = match run(&save.to_string_lossy(), &["-t", table]) {
            Ok(saved) => saved,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let Some(script) = chain_removal_script(table, &saved) else {
            continue;
        };
        if let Err(e) = restore_script(&restore, &script) {
            problems.push(format!("{table}: {e}"));
        }
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists()
        && let Err(e) = run("ip", &["link", "del", BRIDGE])
    {
        problems.push(e.to_string());
    }
    problems
}

fn restore_script(restore: &Path, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new(restore)
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables-restore: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Every cgroup folder of the node, in every v1 hierarchy and the v2 tree
/// (hybrid or unified), deepest first.
pub fn node_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    // cgroup v2 mounted alone: one tree.
    let unified = Path::new(CGROUP_FS).join(CGROUP_ROOT);
    if Path::new(CGROUP_FS).join("cgroup.controllers").exists() && unified.is_dir() {
        collect_dirs(&unified, &mut found);
    }
    let Ok(hierarchies) = std::fs::read_dir(CGROUP_FS) else {
        return found;
    };
    for hierarchy in hierarchies.filter_map(Result::ok) {
        let root = hierarchy.path().join(CGROUP_ROOT);
        if root.is_dir() {
            collect_dirs(&root, &mut found);
        }
    }
    // Deepest first, so each can be removed once its children are.
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

/// Pids in the node's cgroups (the pods' processes).
pub fn cgroup_pids() -> Vec<i32> {
    let mut pids: Vec<i32> = node_cgroups()
        .iter()
        .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Mount points under any of `roots`, deepest first (from this process's
/// mount table, which is the host's: the node runs in it).
pub fn mounts_under(roots: &[PathBuf]) -> Vec<PathBuf> {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| roots.iter().any(|r| p.starts_with(r)))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// `/proc/*/mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(code) = u8::from_str_radix(&raw[i + 1..i + 4], 8)
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// SIGKILLs every process in the node's cgroups and every process naming
/// `needles` (containerd's shims name the node's socket) until none is left
/// or `timeout` passes; returns those still alive.
pub fn kill_node_processes(needles: &[String], timeout: Duration) -> Vec<String> {
    let started = Instant::now();
    loop {
        let mut alive: Vec<(i32, String)> = cgroup_pids()
            .into_iter()
            .map(|pid| (pid, format!("pid {pid} in the node's cgroups")))
            .collect();
        for needle in needles {
            for (pid, cmdline) in processes_mentioning(needle) {
                if let Ok(pid) = i32::try_from(pid) {
                    alive.push((pid, cmdline));
                }
            }
        }
        if alive.is_empty() {
            return Vec::new();
        }
        if started.elapsed() >= timeout {
            return alive.into_iter().map(|(_, what)| what).collect();
        }
        for (pid, _) in &alive {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything a node leaves on the machine besides its state folder:
/// `(kind, what)` for each leftover found. Empty after a clean teardown.
pub fn leftovers(node_dirs: &[PathBuf]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        found.push(("network device".into(), BRIDGE.into()));
    }
    for dir in node_cgroups() {
        found.push(("cgroup".into(), dir.display().to_string()));
    }
    let mut roots = node_dirs.to_vec();
    roots.push(PathBuf::from(RUN_DIR));
    for mount in mounts_under(&roots) {
        found.push(("mount".into(), mount.display().to_string()));
    }
    for pid in cgroup_pids() {
        found.push(("process".into(), format!("pid {pid}")));
    }
    let needles: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    for needle in &needles {
        for (pid, cmdline) in processes_mentioning(needle) {
            found.push(("process".into(), format!("{pid} {cmdline}")));
        }
    }
    for table in TABLES {
        let Ok(saved) = run("iptables-save", &["-t", table]) else {
            continue;
        };
        for chain in saved
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| is_ours(c))
        {
            found.push(("iptables chain".into(), format!("{table} {chain}")));
        }
    }
    if Path::new(RUN_DIR).exists() {
        found.push(("state folder".into(), RUN_DIR.into()));
    }
    for dir in node_dirs.iter().filter(|d| d.exists()) {
        found.push(("state folder".into(), dir.display().to_string()));
    }
    for file in cni_results() {
        found.push(("CNI cache".into(), file.display().to_string()));
    }
    for link in container_log_links(node_dirs) {
        found.push(("container log link".into(), link.display().to_string()));
    }
    for file in kubelet_leftovers() {
        found.push(("kubelet socket".into(), file.display().to_string()));
    }
    found
}

/// The CNI plugins' cached results for the node's network and its pods'
/// loopback interfaces.
fn cni_results() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(CNI_RESULTS) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.starts_with(&format!("{CNI_NETWORK}-")) || n.starts_with("cni-loopback-")
            })
        })
        .map(|e| e.path())
        .collect()
}

/// What the kubelet leaves outside its root folder.
fn kubelet_leftovers() -> Vec<PathBuf> {
    let socket = Path::new(KUBELET_DEVICE_PLUGINS).join("kubelet.sock");
    if socket.exists() {
        vec![socket]
    } else {
        Vec::new()
    }
}

/// The kubelet's links in /var/log/containers into a node's pod logs.
fn container_log_links(node_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(CONTAINER_LOG_LINKS) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|target| {
                node_dirs.iter().any(|d| target.starts_with(d))
                    || target.to_string_lossy().contains("/node/pod-logs/")
            })
        })
        .map(|e| e.path())
        .collect()
}

/// Removes everything a node left. `node_dir` is its state folder when
/// known (then the sysctls saved there are put back, and the folder's mounts
/// and processes are found); `iptables` is the iptables binary. Returns the
/// problems met, for the log; what can be removed is removed regardless.
pub fn sweep(node_dir: Option<&Path>, iptables: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut roots = vec![PathBuf::from(RUN_DIR)];
    roots.extend(node_dir.map(Path::to_owned));
    let needles: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    for survivor in kill_node_processes(&needles, Duration::from_secs(10)) {
        problems.push(format!("process still alive: {survivor}"));
    }
    for mount in mounts_under(&roots) {
        if let Err(e) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
            problems.push(format!("umount {}: {e}", mount.display()));
        }
    }
    for dir in node_cgroups() {
        // A cgroup whose last process just died can be busy for a moment.
        let mut removed = false;
        for _ in 0..50 {
            if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                removed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !removed {
            problems.push(format!("cgroup {} not removable", dir.display()));
        }
    }
    problems.extend(remove_network(iptables));
    if let Some(dir) = node_dir
        && let Some(snapshot) = SysctlSnapshot::load(&sysctl_snapshot_path(dir))
    {
        for failed in snapshot.restore() {
            problems.push(format!("sysctl not restored: {failed}"));
        }
    }
    let dirs: Vec<PathBuf> = node_dir.into_iter().map(Path::to_owned).collect();
    for file in cni_results()
        .into_iter()
        .chain(container_log_links(&dirs))
        .chain(kubelet_leftovers())
    {
        if let Err(e) = std::fs::remove_file(&file) {
            problems.push(format!("{}: {e}", file.display()));
        }
    }
    // Folders go only if empty: other users may keep files there.
    for dir in [
        CNI_RESULTS,
        "/var/lib/cni",
        KUBELET_DEVICE_PLUGINS,
        "/var/lib/kubelet",
        CONTAINER_LOG_LINKS,
    ] {
        let _ = std::fs::remove_dir(dir);
    }
    if Path::new(RUN_DIR).exists()
        && mounts_under(&[PathBuf::from(RUN_DIR)]).is_empty()
        && let Err(e) = std::fs::remove_dir_all(RUN_DIR)
    {
        problems.push(format!("{RUN_DIR}: {e}"));
    }
    problems
}

/// Removes `dir` without crossing into anything still mounted below it
/// (unmounting those first): a state folder can hold a pod's mounts.
pub fn remove_state_dir(dir: &Path) -> std::io::Result<()> {
    for mount in mounts_under(&[dir.to_owned()]) {
        nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH)
            .map_err(std::io::Error::from)?;
    }
    std::fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABC - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A PREROUTING -j DOCKER
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A KUBE-SERVICES -d 10.232.0.1/32 -j KUBE-SVC-ABC
COMMIT
";

    #[test]
    fn removes_only_our_chains_and_the_jumps_to_them() {
        let script = chain_removal_script("nat", SAVED).unwrap();
        assert_eq!(
            script,
            "*nat
-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-D OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-F KUBE-SERVICES
-F KUBE-SVC-ABC
-F CNI-HOSTPORT-DNAT
-X KUBE-SERVICES
-X KUBE-SVC-ABC
-X CNI-HOSTPORT-DNAT
COMMIT
"
        );
        // Someone else's chain is left alone.
        assert!(!script.contains("DOCKER"));
    }

    #[test]
    fn nothing_to_do_without_our_chains() {
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n";
        assert_eq!(chain_removal_script("filter", saved), None);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }
}
