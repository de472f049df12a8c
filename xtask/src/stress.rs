//! `stress`: Portico under abusive clients (idle keep-alive connections, slowloris, slow
//! readers, header / pipelining / tiny-chunk floods), measured by `stress-load` (bench-backend)
//! next to a normal client. Numbers are reported here, never asserted by tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::compile;

/// The scenarios, in the order `all` runs them.
const SCENARIOS: [&str; 4] = ["idle", "slowloris", "slowread", "flood"];

/// The WSGI app of the tiny-chunk flood: reads the whole body, answers its length.
const APP: &str = "def application(environ, start_response):\n    n = 0\n    while True:\n        b = environ['wsgi.input'].read(65536)\n        if not b:\n            break\n        n += len(b)\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [str(n).encode()]\n";

/// Runs `which` (a scenario or `all`) against a fresh Portico with `workers` cells; `args`
/// go to `stress-load`'s scenario (e.g. `--conns 500`).
pub fn stress(
    root: &Path,
    which: &str,
    workers: Option<usize>,
    args: &[String],
) -> anyhow::Result<()> {
    let list: Vec<&str> = match which {
        "all" => SCENARIOS.to_vec(),
        s if SCENARIOS.contains(&s) => vec![s],
        other => bail!(
            "unknown stress scenario {other:?} (available: {}, all)",
            SCENARIOS.join(", ")
        ),
    };
    compile::build()?;
    compile::build_bench_backend()?;
    let dir = std::env::temp_dir().join(format!("portico-stress-{}", std::process::id()));
    site(&dir)?;
    let results = root.join("bench-results");
    std::fs::create_dir_all(&results)?;
    for s in list {
        let out = run_one(root, &dir, s, workers, args)?;
        let file = results.join(format!("stress-{s}.txt"));
        std::fs::write(&file, &out).with_context(|| format!("writing {}", file.display()))?;
        println!("(written to {})\n", file.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn site(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::create_dir_all(dir.join("app"))?;
    std::fs::write(dir.join("www/a.txt"), b"hello")?;
    std::fs::write(dir.join("www/big.bin"), vec![b'x'; 8 << 20])?;
    std::fs::write(dir.join("app/app.py"), APP)?;
    Ok(())
}

/// A free TCP port on loopback (bound and released).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Portico with default limits, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_one(
    root: &Path,
    dir: &Path,
    scenario: &str,
    workers: Option<usize>,
    args: &[String],
) -> anyhow::Result<String> {
    let (port, admin) = (free_port()?, free_port()?);
    let workers = workers.map_or_else(|| "\"auto\"".to_string(), |w| w.to_string());
    let cfg = dir.join("portico.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nworkers = {workers}\nlisten = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{admin}\"\n\
             [log]\naccess_log = \"off\"\n\
             [[route]]\nprefix = \"/app/\"\nwsgi = {{ app = \"app:application\", chdir = \"{app}\" }}\n\
             [[route]]\nprefix = \"/\"\nstatic = {{ root = \"{www}\" }}\n",
            app = dir.join("app").display(),
            www = dir.join("www").display()
        ),
    )?;
    let log: PathBuf = dir.join(format!("portico-{scenario}.log"));
    let child = Command::new(root.join("target/release/portico"))
        .args(["serve", "-c"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting portico")?;
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("listening on") {
            break;
        }
        if Instant::now() > deadline {
            bail!("portico did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let nofile = text
        .lines()
        .find(|l| l.contains("RLIMIT_NOFILE"))
        .unwrap_or("")
        .to_string();
    let header = format!(
        "# cargo xtask stress {scenario} {}\n# portico: workers = {workers}, default [limits]; {}\n",
        args.join(" "),
        nofile
            .split_once("INFO ")
            .map_or(nofile.as_str(), |(_, l)| l)
    );
    print!("{header}");
    let out = Command::new(root.join("target/release/stress-load"))
        .args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .args(["--master", &server.0.id().to_string(), scenario])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("running stress-load")?;
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{body}");
    if !out.status.success() {
        bail!("stress-load {scenario} failed ({})", out.status);
    }
    drop(server);
    Ok(header + &body)
}
