//! Bounded client load for the process-model tests: threads that send GETs until stopped (or a
//! minute passes), counting good answers and failures; every error counts.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{Conn, wait_until};

/// A path and the body a good answer to it has.
pub type Target = (&'static str, &'static [u8]);

#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `clients` threads; client `i` asks for `targets[i % targets.len()]`. With `keepalive`,
    /// a client reuses its connection until the server answers `Connection: close`; without
    /// it, every request opens a new connection.
    pub fn start(addr: SocketAddr, clients: usize, keepalive: bool, targets: &[Target]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|i| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let (path, want) = targets[i % targets.len()];
                std::thread::spawn(move || {
                    // Bounded in time whatever happens to the test.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut conn: Option<Conn> = None;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match Conn::open(addr) {
                                Ok(c) => conn.insert(c),
                                Err(e) => {
                                    eprintln!("connect failed: {e}");
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                            },
                        };
                        match c.request("GET", path, &[]) {
                            Ok(r) if r.status == 200 && r.body == want => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if !keepalive || r.header("connection") == Some("close") {
                                    conn = None;
                                }
                            }
                            Ok(r) => {
                                eprintln!("bad response {} on {path}", r.status);
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                            Err(e) => {
                                eprintln!("request on {path} failed: {e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Waits until the clients have had `n` more answers than `since` (the load is running).
    pub fn wait_ok(&self, since: u64, n: u64) {
        wait_until(
            Duration::from_secs(20),
            &format!("the load got {n} answers"),
            || self.ok.load(Ordering::Relaxed) >= since + n,
        );
    }

    pub fn ok_so_far(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients: (good answers, failures).
    pub fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
