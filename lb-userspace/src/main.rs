//! `portico`: an eBPF-steered, per-core HTTP front end. One master owns the listeners and
//! supervises one pinned cell per CPU; cells serve static files and embedded-Python WSGI apps.
//! This file is the command line only; everything else is the `lb_userspace` library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use lb_userspace::{
    BlockOp, Config, ConfigErrors, EXIT_APP, EXIT_CONFIG, Interface, Overrides, SteeringPolicy,
    init_logging, xdp_fixtures as fixtures,
};

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "eBPF-steered, per-core HTTP front end: static files and WSGI apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: bind the listeners, start one cell per CPU, supervise them.
    Serve(Box<ServeArgs>),
    /// Validate a configuration file and print every problem; binds nothing.
    Check {
        /// Configuration file (TOML).
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Change or show the XDP guard's blocklist of a running server (through its admin
    /// endpoint; no restart).
    Block {
        #[command(subcommand)]
        op: BlockOp,
        /// The server's admin address (default: from --config, else 127.0.0.1:9090).
        #[arg(long, global = true, value_name = "ADDR")]
        admin: Option<String>,
        /// Read the admin address (and admin_token_file) from this configuration file.
        #[arg(short = 'c', long = "config", global = true)]
        config: Option<PathBuf>,
        /// Send the bearer token in this file (default: the configuration's admin_token_file).
        #[arg(long = "token-file", global = true, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Internal: run the XDP guard's decision table through BPF_PROG_TEST_RUN and time it.
    #[command(hide = true)]
    XdpTestRun {
        /// Runs per timed packet.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
    },
    /// Internal: a cell process, started by the master.
    #[command(hide = true)]
    Cell,
    /// Internal: import the WSGI and ASGI apps once in a throw-away process and exit.
    #[command(hide = true)]
    AppCheck {
        /// Print whether the command line's APP is `asgi` or `wsgi` instead.
        #[arg(long)]
        detect: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// WSGI or ASGI application (`module:callable`), mounted at `/`.
    app: Option<String>,
    /// How APP is called; `auto` imports it and looks (a coroutine function is ASGI).
    #[arg(long, value_enum, default_value_t = Interface::Auto)]
    interface: Interface,
    /// A PasteDeploy app, `FILE.ini[#NAME]` (default name `main`), mounted at `/` instead of APP.
    #[arg(long, value_name = "FILE[#NAME]", conflicts_with = "app")]
    paste: Option<String>,
    /// Configuration file (TOML); flags override it.
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Listen address, `host:port` or `unix:/path` (repeatable; replaces the file's list).
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<String>,
    /// Static route, `PREFIX=DIR` (repeatable).
    #[arg(long = "static", value_name = "PREFIX=DIR")]
    statics: Vec<String>,
    /// Proxy route, `PREFIX=URL` with URL `http://host:port[/path]` or `unix:/path` (repeatable).
    #[arg(long = "proxy", value_name = "PREFIX=URL")]
    proxies: Vec<String>,
    /// Number of cells, or `auto` (one per usable CPU).
    #[arg(long)]
    workers: Option<String>,
    /// Admin listener `host:port`, or `off`.
    #[arg(long, value_name = "ADDR|off")]
    admin: Option<String>,
    /// Change to this directory before anything else.
    #[arg(long)]
    chdir: Option<PathBuf>,
    /// Access log: a file path, `-` (stdout) or `off`.
    #[arg(long = "access-log", value_name = "PATH|-|off")]
    access_log: Option<String>,
    /// Access log format.
    #[arg(long = "log-format", value_name = "combined|json")]
    log_format: Option<String>,
    /// Python threads per cell for APP.
    #[arg(long)]
    threads: Option<i64>,
    /// Longest run of one request to APP (then 504), e.g. `30s`.
    #[arg(long = "request-timeout", value_name = "DURATION")]
    request_timeout: Option<String>,
    /// Recycle a cell after this many requests to APP.
    #[arg(long = "max-requests", value_name = "N")]
    max_requests: Option<u64>,
    /// Development: replace cells when one of APP's Python files changes.
    #[arg(long)]
    reload: bool,
    /// Directory prepended to sys.path for APP (repeatable).
    #[arg(long = "python-path", value_name = "DIR")]
    python_path: Vec<PathBuf>,
    /// Virtualenv whose site-packages APP uses.
    #[arg(long)]
    venv: Option<PathBuf>,
    /// eBPF steering policy: cpu, hash, least-loaded or kernel.
    #[arg(long, value_name = "POLICY")]
    steering: Option<SteeringPolicy>,
    /// HTTP/2 with prior knowledge (h2c) on the plain TCP listeners, beside HTTP/1.
    #[arg(long)]
    h2c: bool,
    /// TLS on every TCP listener: the certificate chain (PEM), with --tls-key.
    #[arg(long = "tls-cert", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long = "tls-key", value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

/// `portico xdp-test-run`: the decision table, then the cost per packet of each path.
fn xdp_test_run(repeat: u32) -> ExitCode {
    let outcomes = match fixtures::run() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("portico xdp-test-run: {e}");
            return ExitCode::from(1);
        }
    };
    let mut ok = true;
    for o in &outcomes {
        let mark = if o.got == o.expect { "ok  " } else { "FAIL" };
        ok &= o.got == o.expect;
        println!(
            "{mark} {:<55} {:>6} (expected {})",
            o.name,
            fixtures::action_name(o.got),
            fixtures::action_name(o.expect)
        );
    }
    match fixtures::cost(repeat) {
        Ok(rows) => {
            for (name, action, d) in rows {
                println!(
                    "cost {:<40} {:>6} {:>8.1} ns/packet ({repeat} runs)",
                    name,
                    fixtures::action_name(action),
                    d.as_nanos() as f64
                );
            }
        }
        Err(e) => {
            eprintln!("portico xdp-test-run: timing: {e}");
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn load(config: Option<&PathBuf>, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    Config::resolve(config.map(PathBuf::as_path), overrides)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Cell => match lb_userspace::run_cell() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portico cell: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::AppCheck { detect } => ExitCode::from(lb_userspace::app_check(detect) as u8),
        Command::Block {
            op,
            admin,
            config,
            token_file,
        } => {
            let target = lb_userspace::BlockTarget {
                admin: admin.as_deref(),
                config: config.as_deref(),
                token_file: token_file.as_deref(),
            };
            match lb_userspace::block(op, &target) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("portico block: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::XdpTestRun { repeat } => xdp_test_run(repeat),
        Command::Check { config } => match load(Some(&config), &Overrides::default()) {
            Ok(cfg) => {
                for w in cfg.warnings() {
                    eprintln!("warning: {w}");
                }
                if cfg.has_python() {
                    match lb_userspace::check_apps(&cfg) {
                        Ok(true) => {}
                        Ok(false) => return ExitCode::from(EXIT_APP as u8),
                        Err(e) => {
                            eprintln!("portico: {e:#}");
                            return ExitCode::from(1);
                        }
                    }
                }
                println!(
                    "{}: configuration OK ({} listen address(es), {} route(s))",
                    config.display(),
                    cfg.server.listen.len(),
                    cfg.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_CONFIG as u8)
            }
        },
        Command::Serve(a) => {
            let overrides = Overrides {
                app: a.app,
                interface: a.interface,
                paste: a.paste,
                listen: a.listen,
                statics: a.statics,
                proxies: a.proxies,
                workers: a.workers,
                admin: a.admin,
                chdir: a.chdir,
                access_log: a.access_log,
                log_format: a.log_format,
                threads: a.threads,
                request_timeout: a.request_timeout,
                max_requests: a.max_requests,
                reload: a.reload,
                python_path: a.python_path,
                venv: a.venv,
                steering: a.steering,
                h2c: a.h2c,
                tls_cert: a.tls_cert,
                tls_key: a.tls_key,
            };
            let cfg = match load(a.config.as_ref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            init_logging(&cfg.log.level);
            match lb_userspace::serve(cfg, a.config, overrides) {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("portico: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
