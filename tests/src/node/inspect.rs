//! Looking into a running pod from the host: the processes of a container
//! (from its cgroup), when each started, and the sockets each listens on
//! (from its network namespace's tables). Tests use these to show what a
//! pod does from the inside, without any tool in its image.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::CGROUP_ROOT;
use crate::HarnessError;

/// The pids of a container's processes, from its cgroup on the node.
pub fn container_pids(container_id: &str) -> Result<Vec<i32>, HarnessError> {
    fn find(dir: &Path, name: &str) -> Option<PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if entry.file_name() == name {
                return Some(path);
            }
            if let Some(found) = find(&path, name) {
                return Some(found);
            }
        }
        None
    }
    // cgroup v1 (the pids hierarchy), else v2 (the unified tree).
    let v1 = Path::new("/sys/fs/cgroup/pids").join(CGROUP_ROOT);
    let root = if v1.is_dir() {
        v1
    } else {
        Path::new("/sys/fs/cgroup").join(CGROUP_ROOT)
    };
    let dir = find(&root, container_id).ok_or_else(|| {
        HarnessError::Other(format!(
            "no cgroup for container {container_id} under {}",
            root.display()
        ))
    })?;
    let procs = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&procs).map_err(HarnessError::io(&procs))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// When the process started, in clock ticks since boot (`/proc/<pid>/stat`).
pub fn start_ticks(pid: i32) -> Result<u64, HarnessError> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(HarnessError::io(&path))?;
    // The command name may hold spaces: count fields from after its ')'.
    stat.rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .and_then(|rest| rest.split(' ').nth(19))
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| HarnessError::Other(format!("unexpected {path}: {stat}")))
}

/// The TCP sockets `pid` listens on (open in its file descriptors), read
/// from its network namespace's tables.
pub fn listening_sockets(pid: i32) -> Result<Vec<SocketAddr>, HarnessError> {
    let fd_dir = format!("/proc/{pid}/fd");
    let inodes: Vec<String> = std::fs::read_dir(&fd_dir)
        .map_err(HarnessError::io(&fd_dir))?
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            t.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let mut found = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode: 1, 3 and 9.
            let listening =
                fields.len() >= 10 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]);
            if listening && let Some(addr) = parse_proc_addr(fields[1], v6) {
                found.push(addr);
            }
        }
    }
    Ok(found)
}

/// `0100007F:2CA2` (32-bit words in host order, little-endian here) to
/// `127.0.0.1:11426`.
fn parse_proc_addr(field: &str, v6: bool) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = field.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let words = (0..ip_hex.len() / 8)
        .map(|i| u32::from_str_radix(ip_hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<Vec<u32>>>()?;
    let ip: IpAddr = if v6 {
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate().take(4) {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        Ipv6Addr::from(bytes).into()
    } else {
        Ipv4Addr::from(words.first()?.to_le_bytes()).into()
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_parse() {
        assert_eq!(
            parse_proc_addr("0100007F:2CA2", false).unwrap(),
            "127.0.0.1:11426".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_proc_addr("00000000:2CA2", false).unwrap(),
            "0.0.0.0:11426".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000000000000:1F90", true).unwrap(),
            "[::]:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:1F90", true).unwrap(),
            "[::1]:8080".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn this_process_is_seen_listening() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(listening_sockets(me).unwrap().contains(&addr));
        assert!(start_ticks(me).unwrap() > 0);
    }
}
