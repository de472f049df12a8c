//! Least privilege, for real: cells switch to `[server] user` and keep no capability, the way
//! `deploy/systemd/portico.service` starts Portico (an unprivileged account with four ambient
//! capabilities, through `setpriv`) keeps eBPF steering on, and root without `user` warns.
//! Each privileged test runs in its own network (and mount) namespace, deleted afterwards;
//! the account is `nobody`. Without root, the test prints SKIP.
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portico_tests::*;

const USER: &str = "nobody";

/// An account of the user database, by `id`.
struct Account {
    uid: u32,
    gid: u32,
}

fn account(name: &str) -> Option<Account> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, name]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some(Account {
        uid: id("-u")?,
        gid: id("-g")?,
    })
}

/// Root, the account and a namespace, or a skip marker for `test` naming what is missing.
fn setup(test: &str, tag: &str) -> Option<(Netns, Account)> {
    if !is_root() {
        skip(
            test,
            "needs root to start Portico as root and to create namespaces",
        );
        return None;
    }
    let Some(acct) = account(USER) else {
        skip(test, &format!("no {USER:?} account in the user database"));
        return None;
    };
    let Some(ns) = Netns::create(tag) else {
        skip(
            test,
            "`ip netns add` failed (no iproute2 or no namespace support)",
        );
        return None;
    };
    Some((ns, acct))
}

/// Fields of /proc/<pid>/status, e.g. `CapEff` -> `0000000000000000`.
fn status(pid: i32) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Asserts what a cell must be after its start: `uid`/`gid` in every slot (real, effective,
/// saved, filesystem), no capability in any set that grants one, no_new_privs.
fn assert_dropped(pid: i32, uid: u32, gid: u32) {
    let st = status(pid);
    let four = |id: u32| format!("{id}\t{id}\t{id}\t{id}");
    assert_eq!(st["Uid"], four(uid), "cell {pid} Uid: {st:?}");
    assert_eq!(st["Gid"], four(gid), "cell {pid} Gid: {st:?}");
    for set in ["CapEff", "CapPrm", "CapAmb", "CapInh"] {
        assert_eq!(
            u64::from_str_radix(&st[set], 16),
            Ok(0),
            "cell {pid} {set}: {st:?}"
        );
    }
    assert_eq!(st["NoNewPrivs"], "1", "cell {pid}: {st:?}");
}

/// The cells' pids, from /status.json inside the namespace.
fn cell_pids(ns: &Netns, p: &Portico) -> Vec<i32> {
    let admin = p.admin.expect("admin");
    let body = ns.run(None, move || get(admin, "/status.json").unwrap().text());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pid"].as_i64().unwrap() as i32)
        .collect()
}

/// Shell lines for the namespace's own mount namespace (`ip netns exec` makes one) that let
/// another account reach the portico binary's libpython and stdlib when they sit under a
/// directory others cannot enter (a pyenv under a 0700 /root, as on this project's machines):
/// a 0755 tmpfs over that directory with only the interpreter's subtree bound back. A system
/// Python under /usr needs none. Nothing changes outside the namespace.
fn reach_python() -> String {
    let out = Command::new("ldd")
        .arg(portico_bin())
        .output()
        .expect("ldd");
    let lib = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("libpython"))
        .and_then(|l| l.split("=>").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(PathBuf::from);
    let Some(lib) = lib else {
        return String::new();
    };
    let mut closed = None;
    for dir in lib.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let mode = std::fs::metadata(dir).map_or(0o755, |m| m.permissions().mode());
        if dir.is_dir() && mode & 0o001 == 0 {
            closed = Some(dir.to_path_buf());
            break;
        }
    }
    let Some(closed) = closed else {
        return String::new();
    };
    let child = lib
        .strip_prefix(&closed)
        .ok()
        .and_then(|r| r.components().next())
        .expect("libpython below the closed directory");
    let (d, c) = (closed.display(), Path::new(child.as_os_str()).display());
    format!(
        "K=$(mktemp -d) && mount --bind {d} $K && mount -t tmpfs -o mode=0755 tmpfs {d} && \
         mkdir -p {d}/{c} && mount --bind $K/{c} {d}/{c} && umount $K && rmdir $K || exit 97\n"
    )
}

/// `ip netns exec NS sh -c PRELUDE; exec WRAPPER portico ...`: the harness appends the args.
fn wrapped(ns: &Netns, prelude: &str, wrapper: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.0, "sh", "-c"])
        .arg(format!("{prelude}exec {wrapper} \"$@\""))
        .arg("sh")
        .arg(portico_bin());
    c
}

/// A site readable by the account: the temporary directory itself is 0700.
fn open_site() -> Site {
    let s = Site::new();
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    s
}

const WHOAMI_APP: &[u8] = br#"import os
with open(os.path.join(os.path.dirname(__file__), "imports", "log"), "a") as f:
    f.write(f"import uid={os.getuid()} gid={os.getgid()}\n")

def app(environ, start_response):
    try:
        open(os.path.join(os.path.dirname(__file__), "root-only"), "a").close()
        write = "allowed"
    except PermissionError:
        write = "denied"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"uid={os.getuid()} gid={os.getgid()} groups={os.getgroups()} write={write}".encode()]
"#;

#[test]
fn cells_run_as_the_configured_user_without_capabilities() {
    let test = "cells_run_as_the_configured_user_without_capabilities";
    let Some((ns, acct)) = setup(test, "lpuser") else {
        return;
    };
    let s = open_site();
    s.file("www/a.txt", b"static as nobody\n");
    s.file("app/whoami.py", WHOAMI_APP);
    s.file("app/root-only", b"");
    std::fs::set_permissions(
        s.path().join("app/root-only"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::create_dir_all(s.path().join("app/imports")).unwrap();
    std::fs::set_permissions(
        s.path().join("app/imports"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    // Root's directory: the cells could not create the log after the drop, only write it.
    std::fs::create_dir_all(s.path().join("logs")).unwrap();
    let log = s.path().join("logs/access.log");
    let cfg = s.file(
        "portico.toml",
        format!(
            "[server]\nworkers = 2\nuser = \"{USER}\"\n\
             [[route]]\nprefix = \"/app/\"\nwsgi = {{ app = \"whoami:app\", chdir = \"{}\" }}\n\
             [[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n",
            s.root("app"),
            s.root("www")
        )
        .as_bytes(),
    );
    let p = Portico::launch(
        wrapped(&ns, &reach_python(), ""),
        &[
            "-c",
            cfg.to_str().unwrap(),
            "--access-log",
            log.to_str().unwrap(),
        ],
        false,
    );
    let m = ns.wait_cells_up(&p, 2);
    assert_eq!(
        metric_value(&m, "portico_ebpf_enabled"),
        Some(1.0),
        "eBPF steering did not attach as root:\n{}",
        p.stderr_text()
    );
    p.wait_stderr(Duration::from_secs(5), "cells run as nobody");
    assert!(
        !p.stderr_text().contains("running as root without"),
        "the root warning shows although user is set:\n{}",
        p.stderr_text()
    );
    let pids = cell_pids(&ns, &p);
    assert_eq!(pids.len(), 2);
    for pid in &pids {
        assert_dropped(*pid, acct.uid, acct.gid);
        assert_eq!(status(*pid)["Groups"], acct.gid.to_string(), "cell {pid}");
    }
    let addr = p.addr;
    let (app, file) = ns.run(None, move || {
        (
            get(addr, "/app/whoami").unwrap(),
            get(addr, "/a.txt").unwrap(),
        )
    });
    assert_eq!(app.status, 200);
    assert_eq!(
        app.text(),
        format!(
            "uid={} gid={} groups=[{}] write=denied",
            acct.uid, acct.gid, acct.gid
        )
    );
    assert_eq!(
        (file.status, file.text().as_str()),
        (200, "static as nobody\n")
    );
    // Every import ran as the account: the master's app-check and one per cell.
    let imports = std::fs::read_to_string(s.path().join("app/imports/log")).unwrap();
    let want = format!("import uid={} gid={}", acct.uid, acct.gid);
    assert_eq!(imports.lines().count(), 3, "imports:\n{imports}");
    assert!(imports.lines().all(|l| l == want), "imports:\n{imports}");
    // The access log (root's file, opened before the drop) gets both lines from the cells.
    wait_until(
        Duration::from_secs(5),
        "both requests in the access log",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("\"GET /app/whoami HTTP/1.1\" 200")
                && text.contains("\"GET /a.txt HTTP/1.1\" 200")
        },
    );
    assert_eq!(
        std::fs::metadata(&log)
            .map(|m| m.permissions().mode() & 0o777)
            .ok(),
        Some(0o644)
    );
}

/// The unit file's `AmbientCapabilities=` (uncommented lines), as setpriv's `+bpf,+...` list.
fn unit_capabilities(unit: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix("AmbientCapabilities="))
        .flat_map(str::split_whitespace)
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// The capability mask of names like `bpf`, `net_admin` (linux/capability.h numbers).
fn cap_mask(names: &[String]) -> u64 {
    names
        .iter()
        .map(|n| match n.as_str() {
            "net_bind_service" => 10,
            "net_admin" => 12,
            "setgid" => 6,
            "setuid" => 7,
            "perfmon" => 38,
            "bpf" => 39,
            other => panic!("capability {other} of the unit file is not known to this test"),
        })
        .fold(0, |m, bit| m | 1u64 << bit)
}

#[test]
fn unit_file_start_keeps_ebpf_while_cells_hold_no_capabilities() {
    let test = "unit_file_start_keeps_ebpf_while_cells_hold_no_capabilities";
    let Some((ns, acct)) = setup(test, "lpunit") else {
        return;
    };
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip(
            test,
            "no setpriv (util-linux; `cargo xtask setup` installs it)",
        );
        return;
    }
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/portico.service");
    let unit = std::fs::read_to_string(&unit_path).expect("the unit file");
    let caps = unit_capabilities(&unit);
    assert!(
        caps.contains(&"bpf".to_string()),
        "unit file capabilities: {caps:?}"
    );
    let list = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let nnp = if unit.lines().any(|l| l == "NoNewPrivileges=yes") {
        "--no-new-privs "
    } else {
        ""
    };
    // What systemd does for the unit: bpffs at /sys/fs/bpf (a fresh mount namespace has none),
    // the ExecStartPre's directory for the account, then the account with only these caps.
    let prelude = format!(
        "{}mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || exit 98\n\
         install -d -o {USER} -g {} -m 0750 /sys/fs/bpf/portico || exit 99\n",
        reach_python(),
        acct.gid
    );
    let wrapper = format!(
        "setpriv --reuid={} --regid={} --clear-groups --inh-caps=-all,{list} \
         --ambient-caps=-all,{list} --bounding-set=-all,{list} {nnp}--",
        acct.uid, acct.gid
    );
    let s = open_site();
    s.file("www/a.txt", b"port 80\n");
    // Port 80 needs CAP_NET_BIND_SERVICE: the namespace's ip_unprivileged_port_start is 1024.
    let p = Portico::launch(
        wrapped(&ns, &prelude, &wrapper),
        &[
            "--static",
            &format!("/={}", s.root("www")),
            "--workers",
            "2",
            "--listen",
            "127.0.0.1:80",
        ],
        false,
    );
    let m = ns.wait_cells_up(&p, 2);
    if metric_value(&m, "portico_ebpf_enabled") != Some(1.0) {
        let log = p.stderr_text();
        let why = log
            .lines()
            .find(|l| l.contains("eBPF unavailable"))
            .unwrap_or("portico_ebpf_enabled is not 1 and no reason was logged");
        skip(
            test,
            &format!("the kernel refused eBPF to an unprivileged account with {list}: {why}"),
        );
        return;
    }
    // The master: the account, exactly the unit's capabilities (ambient, so its cells get them
    // at exec and must drop them).
    let master = status(p.pid());
    assert_eq!(
        master["Uid"],
        format!("{0}\t{0}\t{0}\t{0}", acct.uid),
        "{master:?}"
    );
    let want = cap_mask(&caps);
    for set in ["CapEff", "CapAmb"] {
        assert_eq!(
            u64::from_str_radix(&master[set], 16),
            Ok(want),
            "master {set}: {master:?}"
        );
    }
    if !nnp.is_empty() {
        assert_eq!(master["NoNewPrivs"], "1");
    }
    for pid in cell_pids(&ns, &p) {
        assert_dropped(pid, acct.uid, acct.gid);
    }
    let (addr, admin) = (p.addr, p.admin.unwrap());
    assert_eq!(addr.port(), 80);
    let before = ns.scrape(admin);
    let served = ns.run(None, move || {
        (0..20)
            .filter(|_| {
                get(addr, "/a.txt").is_ok_and(|r| r.status == 200 && r.text() == "port 80\n")
            })
            .count()
    });
    assert_eq!(served, 20, "{}", p.stderr_text());
    let after = ns.scrape(admin);
    let steered = (0..2)
        .map(|i| {
            delta(
                &after,
                &before,
                &format!("portico_steering_decisions_total{{cell=\"{i}\",result=\"selected\"}}"),
            )
        })
        .sum::<f64>();
    assert!(
        steered >= 20.0,
        "the steering program chose {steered} of 20 connections"
    );
}

#[test]
fn root_without_user_warns_that_the_app_runs_as_root() {
    let test = "root_without_user_warns_that_the_app_runs_as_root";
    if !is_root() {
        skip(test, "needs root (the warning is about starting as root)");
        return;
    }
    let s = Site::new();
    s.file("www/a.txt", b"a");
    let p = Portico::start(&[
        "--static",
        &format!("/={}", s.root("www")),
        "--workers",
        "2",
    ]);
    p.wait_stderr(
        Duration::from_secs(5),
        "running as root without [server] user",
    );
    let warnings = p
        .stderr_text()
        .lines()
        .filter(|l| l.contains("running as root without"))
        .count();
    assert_eq!(warnings, 1, "{}", p.stderr_text());
    // Still root's uid, but none of root's capabilities.
    let pids = p.cell_pids();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert_dropped(pid, 0, 0);
    }
    assert_eq!(get(p.addr, "/a.txt").unwrap().status, 200);
}

#[test]
fn unknown_user_and_group_are_configuration_errors() {
    let s = Site::new();
    s.file("www/a.txt", b"a");
    let cfg = s.file(
        "bad.toml",
        format!(
            "[server]\nuser = \"no-such-user-portico\"\ngroup = \"no-such-group-portico\"\n\
             workers = 0\n[[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n",
            s.root("www")
        )
        .as_bytes(),
    );
    let out = Command::new(portico_bin())
        .args(["check", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for want in [
        "server.user: no such user \"no-such-user-portico\"",
        "server.group: no such group \"no-such-group-portico\"",
        "server.workers",
    ] {
        assert!(err.contains(want), "no {want:?} in:\n{err}");
    }
    // `serve` stops with the same before binding anything.
    let port = free_port();
    let serve = Command::new(portico_bin())
        .args([
            "serve",
            "-c",
            cfg.to_str().unwrap(),
            "--listen",
            &port.to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&serve.stderr).contains("server.user"));
    assert!(
        std::net::TcpListener::bind(port).is_ok(),
        "serve bound {port}"
    );
}
