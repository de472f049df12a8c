//! What the fault test and the soak read of Portico's processes from /proc: resident memory,
//! open descriptors, and which client connections a cell holds.
use std::collections::HashSet;

/// Resident set size of `pid` in KiB (`VmRSS`), None when it is gone.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Open file descriptors of `pid`, None when it is gone.
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Inodes of the sockets `pid` has open.
fn socket_inodes(pid: i32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The peer ports of the established TCP connections that process `pid` holds on local port
/// `port`: for a cell and its listen port, the client ends of its connections.
pub fn client_ports(pid: i32, port: u16) -> HashSet<u16> {
    let inodes = socket_inodes(pid);
    let mut out = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" {
                continue;
            }
            let port_of = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            let inode: u64 = f[9].parse().unwrap_or(0);
            if port_of(f[1]) == Some(port)
                && inodes.contains(&inode)
                && let Some(peer) = port_of(f[2])
            {
                out.insert(peer);
            }
        }
    }
    out
}
