//! Network namespaces for the privileged eBPF tests, removed with their links on drop.
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{Portico, get, metric_value, poll_until};

/// A network namespace for a privileged test; deleted (with its links) on drop.
#[derive(Debug)]
pub struct Netns(pub String);

impl Netns {
    /// `portico-<tag>-<pid>`, with loopback up. None when `ip netns add` fails.
    pub fn create(tag: &str) -> Option<Netns> {
        let name = format!("portico-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// `ip -n NS ARGS`; panics when it fails.
    pub fn ip(&self, args: &[&str]) {
        let st = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .status()
            .expect("run ip");
        assert!(st.success(), "ip -n {} {args:?} failed", self.0);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }

    /// Runs `f` on a thread that joined the namespace (and is pinned to `cpu`, if given).
    pub fn run<T: Send + 'static>(
        &self,
        cpu: Option<usize>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        self.spawn(cpu, f)
            .join()
            .expect("namespace thread panicked")
    }

    /// Like `run`, without waiting.
    pub fn spawn<T: Send + 'static>(
        &self,
        cpu: Option<usize>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            if let Some(cpu) = cpu {
                let mut set = rustix::thread::CpuSet::new();
                set.set(cpu);
                rustix::thread::sched_setaffinity(None, &set).expect("pin thread");
            }
            f()
        })
    }

    /// Scrapes `/metrics` of an admin endpoint inside the namespace.
    pub fn scrape(&self, admin: SocketAddr) -> String {
        self.run(None, move || {
            get(admin, "/metrics").map(|r| r.text()).unwrap_or_default()
        })
    }

    /// Waits until `cells` cells report up through an admin endpoint inside the namespace.
    pub fn wait_cells_up(&self, p: &Portico, cells: usize) -> String {
        let admin = p.admin.expect("admin");
        let mut m = String::new();
        let up = poll_until(Duration::from_secs(10), || {
            m = self.scrape(admin);
            (0..cells)
                .all(|i| metric_value(&m, &format!("portico_cell_up{{cell=\"{i}\"}}")) == Some(1.0))
        });
        assert!(up, "cells never came up:\n{}", p.stderr_text());
        m
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
