//! eBPF `steering` (sk_reuseport): a client pinned to CPU k lands on cell k. Runs for real as
//! root, inside its own network namespace (removed afterwards); prints SKIP otherwise.
use std::process::Command;
use std::time::Duration;

use portico_tests::*;

struct Netns(String);

impl Netns {
    fn create() -> Option<Netns> {
        let name = format!("portico-steer-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        let ns = Netns(name);
        Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .ok()?;
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `f` on a thread that has joined the namespace and is pinned to `cpu`.
fn in_ns_on_cpu<T: Send + 'static>(
    ns: &str,
    cpu: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("open netns");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&fd),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).expect("pin client");
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn client_on_cpu_k_lands_on_cell_k() {
    if !is_root() {
        println!(
            "SKIP steering: needs root (CAP_BPF, CAP_NET_ADMIN) for eBPF and network namespaces"
        );
        return;
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cpus < 2 {
        println!("SKIP steering: needs at least 2 CPUs to tell cells apart");
        return;
    }
    let Some(ns) = Netns::create() else {
        println!("SKIP steering: `ip netns add` failed (no iproute2 or no namespace support)");
        return;
    };
    let s = Site::new();
    s.file("www/a.txt", b"a");
    // The admin endpoint lives in the namespace too; `Portico::start` cannot reach it from
    // here, so health is polled from a thread inside the namespace below.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0, portico_bin().to_str().unwrap()]);
    let p = Portico::launch(
        cmd,
        &[
            "--static",
            &format!("/={}", s.root("www")),
            "--workers",
            &cpus.to_string(),
            "--admin",
            "127.0.0.1:0",
        ],
        false,
    );
    let (addr, admin) = (p.addr, p.admin.unwrap());
    let scrape = {
        let ns = ns.0.clone();
        move || in_ns_on_cpu(&ns, 0, move || get(admin, "/metrics").unwrap().text())
    };
    // Healthy (wait_healthy ran from outside the namespace and could not reach it; poll inside).
    let mut up = false;
    for _ in 0..200 {
        let m = scrape();
        if (0..cpus)
            .all(|i| metric_value(&m, &format!("portico_cell_up{{cell=\"{i}\"}}")) == Some(1.0))
        {
            assert_eq!(
                metric_value(&m, "portico_ebpf_enabled"),
                Some(1.0),
                "eBPF did not attach as root:\n{}",
                p.stderr_text()
            );
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "cells never came up:\n{}", p.stderr_text());

    const N: usize = 40;
    for k in 0..cpus {
        let before = scrape();
        let served = in_ns_on_cpu(&ns.0, k, move || {
            (0..N)
                .filter(|_| {
                    get(addr, "/a.txt")
                        .map(|r| r.status == 200)
                        .unwrap_or(false)
                })
                .count()
        });
        assert_eq!(served, N);
        let after = scrape();
        let delta = |m_after: &str, m_before: &str, series: &str| {
            metric_value(m_after, series).unwrap_or(0.0)
                - metric_value(m_before, series).unwrap_or(0.0)
        };
        let series = format!("portico_cell_requests_total{{cell=\"{k}\",status_class=\"2xx\"}}");
        let on_k = delta(&after, &before, &series);
        assert_eq!(
            on_k as usize, N,
            "client on CPU {k}: only {on_k} of {N} requests reached cell {k}"
        );
        let steered = delta(
            &after,
            &before,
            &format!("portico_steering_decisions_total{{cell=\"{k}\",result=\"selected\"}}"),
        );
        assert!(
            steered as usize >= N,
            "steering map counted {steered} for cell {k}"
        );
    }
    drop(p);
    drop(ns);
}
