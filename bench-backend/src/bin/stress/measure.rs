//! What `stress-load` measures besides its own clients: a normal client's latencies, and the
//! cells' memory and CPU from /proc.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A client that fetches a small file on one keep-alive connection (reconnecting after an
/// error), 5 ms apart, until stopped.
pub struct NormalClient {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<Duration>, usize)>,
}

impl NormalClient {
    pub fn start(addr: SocketAddr, path: &'static str) -> NormalClient {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut lat, mut errors) = (Vec::new(), 0);
            let mut conn: Option<BufReader<TcpStream>> = None;
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                match get(&mut conn, addr, path) {
                    Ok(200) => lat.push(t.elapsed()),
                    _ => {
                        errors += 1;
                        conn = None;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (lat, errors)
        });
        NormalClient { stop, thread }
    }

    /// Stops it: "p50 p99 max" in ms, requests and errors.
    pub fn finish(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        let (mut lat, errors) = self.thread.join().expect("normal client");
        lat.sort();
        let pct = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
        };
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} requests, {errors} errors",
            pct(0.5),
            pct(0.99),
            lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
            lat.len()
        )
    }
}

/// One GET on the kept connection (opened if needed); returns the status.
fn get(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<u16> {
    if conn.is_none() {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        *conn = Some(BufReader::new(s));
    }
    let c = conn.as_mut().expect("connected");
    c.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: s\r\n\r\n").as_bytes())?;
    let (mut status, mut len) = (0u16, 0usize);
    let mut line = String::new();
    loop {
        line.clear();
        if c.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(s) = l.strip_prefix("HTTP/1.1 ") {
            status = s.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0);
        } else if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    c.read_exact(&mut body)?;
    Ok(status)
}

/// The master's children: the cells.
pub fn cells(master: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A `key: N kB` line of a /proc file, in bytes.
fn proc_kb(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Proportional set size of the cells together (shared pages split between them), bytes.
pub fn cells_pss(master: i32) -> u64 {
    cells(master)
        .iter()
        .map(|p| proc_kb(&format!("/proc/{p}/smaps_rollup"), "Pss:"))
        .sum()
}

/// Resident memory of the cells together, bytes.
pub fn cells_rss(master: i32) -> u64 {
    cells(master)
        .iter()
        .map(|p| proc_kb(&format!("/proc/{p}/status"), "VmRSS:"))
        .sum()
}

/// CPU seconds (user + system) the cells have used.
pub fn cells_cpu(master: i32) -> f64 {
    cells(master)
        .iter()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let after = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            // Fields 14 and 15 of stat(5), counted after the command name (field 3 is f[0]).
            let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .sum()
}

/// Kernel memory of all TCP sockets (both ends on loopback), bytes.
pub fn tcp_mem() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|w| *w == "mem")?;
            f.get(i + 1)?.parse::<u64>().ok()
        })
        .unwrap_or(0)
        * 4096
}

/// Samples the cells' PSS and the kernel's TCP memory every 500 ms; keeps the peaks.
pub struct Peaks {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, u64)>,
}

impl Peaks {
    pub fn start(master: i32) -> Peaks {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut pss, mut tcp) = (0, 0);
            while !s.load(Ordering::Relaxed) {
                pss = pss.max(cells_pss(master));
                tcp = tcp.max(tcp_mem());
                std::thread::sleep(Duration::from_millis(500));
            }
            (pss, tcp)
        });
        Peaks { stop, thread }
    }

    /// (cells' PSS, kernel TCP memory) at their highest, bytes.
    pub fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}

/// One sample of the admin endpoint's `/metrics` summed over every series of `name`.
pub fn metric_sum(admin: SocketAddr, name: &str) -> f64 {
    let Ok(mut s) = TcpStream::connect(admin) else {
        return f64::NAN;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Bytes as MiB with two decimals.
pub fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / f64::from(1 << 20))
}
