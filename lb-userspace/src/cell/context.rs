//! What every connection of a cell shares (single-threaded: no locks), and the cell's
//! requests to the master (recycling).
use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Instant;

use crate::cell::access_log::AccessLog;
use crate::cell::router::Router;
use crate::cell::static_files::FileCache;
use crate::config::LimitsConfig;
use crate::metrics::CellStats;
use crate::proto::Recycle;

/// Everything a cell's connections share (single-threaded: no locks).
pub struct CellCtx {
    pub router: Router,
    pub cache: FileCache,
    pub limits: LimitsConfig,
    pub stats: CellStats<'static>,
    pub log: AccessLog,
    /// Set when the cell drains: every response then says `Connection: close`.
    pub draining: Cell<bool>,
    /// The pipe to the master (readiness, then recycle requests).
    pub control: RefCell<Option<OwnedFd>>,
    /// A recycle was requested (asked once).
    pub recycling: Cell<bool>,
    /// Requests to app routes (WSGI and ASGI), and when the last one came.
    pub app_served: Cell<u64>,
    pub last_app_request: Cell<Instant>,
    /// `max_requests` plus this cell's jitter (0: never).
    pub max_requests: u64,
    /// `[metrics] enabled`: record per-request histograms.
    pub histograms: bool,
    /// This cell's entry of the steering program's CELL_LOAD map, read by `least-loaded`.
    pub load: Option<crate::ebpf::cell_load::CellLoadEntry>,
    /// The sockmap relay's maps, when the master loaded it (`relay = "sockmap"`).
    pub tunnel_maps: Option<Rc<RefCell<crate::ebpf::TunnelMaps>>>,
    /// `[server.redirect_https]`: the listener whose requests are all sent to https.
    pub redirect_https: Option<crate::config::RedirectHttps>,
}

impl CellCtx {
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, in the cell's startup; each argument is a separate part"
    )]
    pub fn new(
        router: Router,
        limits: LimitsConfig,
        stats: CellStats<'static>,
        log: AccessLog,
        control: OwnedFd,
        max_requests: u64,
        histograms: bool,
        load: Option<crate::ebpf::cell_load::CellLoadEntry>,
        tunnel_maps: Option<crate::ebpf::TunnelMaps>,
    ) -> Self {
        CellCtx {
            router,
            cache: FileCache::default(),
            limits,
            stats,
            log,
            draining: Cell::new(false),
            control: RefCell::new(Some(control)),
            recycling: Cell::new(false),
            app_served: Cell::new(0),
            last_app_request: Cell::new(Instant::now()),
            max_requests,
            histograms,
            load,
            tunnel_maps: tunnel_maps.map(|m| Rc::new(RefCell::new(m))),
            redirect_https: None,
        }
    }

    /// The https port to redirect this connection's requests to, if it came in on the
    /// `redirect_https` listener.
    pub fn https_redirect(&self, conn: &wsgi_worker::ConnInfo) -> Option<u16> {
        let r = self.redirect_https.as_ref()?;
        let crate::config::ListenAddr::Tcp(a) = &r.listen else {
            return None;
        };
        let same = conn.local_port == a.port()
            && (a.ip().is_unspecified() || conn.local_addr == a.ip().to_string());
        same.then_some(r.port)
    }

    /// Counts a request to an app route (WSGI or ASGI); asks for recycling at `max_requests`.
    pub fn app_request(&self) {
        let n = self.app_served.get() + 1;
        self.app_served.set(n);
        self.last_app_request.set(Instant::now());
        if self.max_requests > 0 && n >= self.max_requests {
            self.recycle(Recycle::MaxRequests);
        }
    }

    /// Asks the master for a replacement cell (started first; then this one drains).
    pub fn recycle(&self, why: Recycle) {
        if self.recycling.replace(true) {
            return;
        }
        tracing::info!("asking the master to recycle this cell ({})", why.label());
        if let Some(fd) = self.control.borrow().as_ref()
            && rustix::io::write(fd, &[why.byte()]).is_err()
        {
            tracing::warn!("could not reach the master to recycle");
        }
    }
}
