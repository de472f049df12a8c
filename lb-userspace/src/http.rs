//! One HTTP/1.1 connection in a cell: hyper for the protocol, plus what hyper leaves to us:
//! header-read (408) and keep-alive idle timeouts, request limits, CL+TE rejection, routing,
//! metrics and the access log.
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use crate::access_log::{AccessLog, Entry};
use crate::body::{Body, FileRegion, OnDone, status_page};
use crate::config::LimitsConfig;
use crate::metrics::CellStats;
use crate::router::{Handler, Match, Router};
use crate::static_files::{FileCache, FileRequest};
use crate::wsgi::Recycle;
use wsgi_worker::ConnInfo;

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
    /// Requests to WSGI routes, and when the last one came.
    pub wsgi_served: Cell<u64>,
    pub last_wsgi: Cell<Instant>,
    /// `max_requests` plus this cell's jitter (0: never).
    pub max_requests: u64,
    /// `[metrics] enabled`: record per-request histograms.
    pub histograms: bool,
    /// This cell's entry of the steering program's CELL_LOAD map, read by `least-loaded`.
    pub load: Option<crate::cell_load::CellLoadSlot>,
}

impl CellCtx {
    pub fn new(
        router: Router,
        limits: LimitsConfig,
        stats: CellStats<'static>,
        log: AccessLog,
        control: OwnedFd,
        max_requests: u64,
        histograms: bool,
        load: Option<crate::cell_load::CellLoadSlot>,
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
            wsgi_served: Cell::new(0),
            last_wsgi: Cell::new(Instant::now()),
            max_requests,
            histograms,
            load,
        }
    }

    /// Counts a WSGI request; asks for recycling at `max_requests`.
    pub fn wsgi_request(&self) {
        let n = self.wsgi_served.get() + 1;
        self.wsgi_served.set(n);
        self.last_wsgi.set(Instant::now());
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: nothing of the next head received yet.
    Idle,
    /// Part of a request head received.
    Head,
    /// A request is being answered.
    Busy,
}

/// Connection state shared by the IO wrapper, the service and the response body.
struct ConnState {
    phase: Cell<Phase>,
    since: Cell<Instant>,
    /// Bytes arrived while Busy (a pipelined next request).
    pending: Cell<bool>,
    /// Header names seen in the current head (hyper merges CL+TE silently; we refuse it).
    saw_cl: Cell<bool>,
    saw_te: Cell<bool>,
    /// Bytes of an unfinished header line carried to the next read.
    carry: RefCell<Vec<u8>>,
    requests: Cell<u64>,
    /// Response chunks that are mapped file regions still to be written (sent with sendfile).
    regions: RefCell<Vec<FileRegion>>,
    /// The request being answered (route, method, start), its status and known body bytes:
    /// observed when its body is done.
    mark: Cell<Option<(Mark, u16, u64)>>,
    stats: CellStats<'static>,
}

impl ConnState {
    fn new(stats: CellStats<'static>) -> Self {
        ConnState {
            phase: Cell::new(Phase::Idle),
            since: Cell::new(Instant::now()),
            pending: Cell::new(false),
            saw_cl: Cell::new(false),
            saw_te: Cell::new(false),
            carry: RefCell::new(Vec::new()),
            requests: Cell::new(0),
            regions: RefCell::new(Vec::new()),
            mark: Cell::new(None),
            stats,
        }
    }

    fn on_read(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.phase.get() {
            Phase::Idle => {
                self.phase.set(Phase::Head);
                self.since.set(Instant::now());
            }
            Phase::Head => {}
            Phase::Busy => self.pending.set(true),
        }
        self.scan_headers(data);
    }

    /// Notes Content-Length and Transfer-Encoding header lines, across read boundaries.
    fn scan_headers(&self, data: &[u8]) {
        let mut carry = self.carry.borrow_mut();
        let check = |line: &[u8]| {
            if starts_with_ci(line, b"content-length:") {
                self.saw_cl.set(true);
            } else if starts_with_ci(line, b"transfer-encoding:") {
                self.saw_te.set(true);
            }
        };
        let mut start = 0;
        for (i, &b) in data.iter().enumerate() {
            if b == b'\n' {
                if !carry.is_empty() {
                    carry.extend_from_slice(&data[start..i.min(start + 32)]);
                    check(&carry);
                    carry.clear();
                } else {
                    check(&data[start..i]);
                }
                start = i + 1;
            }
        }
        if carry.len() < 32 {
            let rest = &data[start..];
            carry.extend_from_slice(&rest[..rest.len().min(32)]);
        }
    }

    /// The service got a request head; returns whether it carried both CL and TE.
    fn begin_request(&self) -> bool {
        // Regions of earlier responses that were not sent by sendfile (HEAD, or still queued in
        // hyper): from now on their bytes are written as ordinary memory.
        self.regions.borrow_mut().clear();
        self.phase.set(Phase::Busy);
        self.pending.set(false);
        self.requests.set(self.requests.get() + 1);
        let both = self.saw_cl.get() && self.saw_te.get();
        self.saw_cl.set(false);
        self.saw_te.set(false);
        both
    }
}

impl OnDone for ConnState {
    fn done(&self, streamed: u64) {
        if let Some((m, status, body)) = self.mark.take() {
            self.stats.observe_request(
                m.route as usize,
                m.method as usize,
                status,
                m.start.elapsed().as_nanos() as u64,
                body + streamed,
            );
        }
        self.since.set(Instant::now());
        self.phase.set(if self.pending.get() {
            Phase::Head
        } else {
            Phase::Idle
        });
    }
}

fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The socket as hyper sees it, reporting each read to the connection state.
struct TrackedIo<S> {
    inner: S,
    state: Rc<ConnState>,
    stats: CellStats<'static>,
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.state.on_read(&buf.filled()[before..]);
        }
        r
    }
}

/// A socket that can send a file region with sendfile(2) when it is writable.
pub trait SendFile {
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>>;
}

macro_rules! impl_sendfile {
    ($t:ty) => {
        impl SendFile for $t {
            fn poll_sendfile(
                &self,
                cx: &mut Context<'_>,
                file: &std::fs::File,
                offset: u64,
                len: usize,
            ) -> Poll<io::Result<usize>> {
                use std::os::fd::AsFd as _;
                loop {
                    std::task::ready!(self.poll_write_ready(cx))?;
                    let r = self.try_io(tokio::io::Interest::WRITABLE, || {
                        let mut off = offset;
                        rustix::fs::sendfile(self.as_fd(), file, Some(&mut off), len)
                            .map_err(io::Error::from)
                    });
                    match r {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        r => return Poll::Ready(r),
                    }
                }
            }
        }
    };
}
impl_sendfile!(tokio::net::TcpStream);
impl_sendfile!(tokio::net::UnixStream);

impl<S: SendFile> TrackedIo<S> {
    /// If `buf` lies in a registered file region, sends (part of) it with sendfile.
    fn try_sendfile(&self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let p = buf.as_ptr() as usize;
        let mut regions = self.state.regions.borrow_mut();
        let i = regions
            .iter()
            .position(|r| p >= r.ptr && p < r.ptr + r.len)?;
        let r = &regions[i];
        let skip = p - r.ptr;
        let len = buf.len().min(r.len - skip);
        let res = self
            .inner
            .poll_sendfile(cx, &r.file, r.offset + skip as u64, len);
        if let Poll::Ready(Ok(n)) = res {
            self.stats
                .add(crate::metrics::slot::SENDFILE_BYTES, n as u64);
            if n == 0 {
                // The file shrank under us: fail rather than loop (hyper closes the connection).
                return Some(Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file truncated while being sent",
                ))));
            }
            if skip + n == r.len {
                regions.swap_remove(i);
            }
        }
        Some(res)
    }
}

impl<S: AsyncWrite + SendFile + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(r) = self.try_sendfile(cx, buf) {
            return r;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.state.regions.borrow().is_empty() {
            // Write the slices before the first mapped region normally, the region by sendfile.
            let first = bufs.iter().position(|b| {
                let p = b.as_ptr() as usize;
                self.state
                    .regions
                    .borrow()
                    .iter()
                    .any(|r| p >= r.ptr && p < r.ptr + r.len)
            });
            match first {
                Some(0) => return self.try_sendfile(cx, &bufs[0]).expect("region found"),
                Some(k) => return Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs[..k]),
                None => {}
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

const REQUEST_TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\n\r\n408 Request Timeout\n";

/// Serves one accepted connection until it closes, times out, or the cell drains.
pub async fn serve_connection<S>(
    stream: S,
    conn_info: Arc<ConnInfo>,
    ctx: Rc<CellCtx>,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + SendFile + Unpin + 'static,
{
    let state = Rc::new(ConnState::new(ctx.stats));
    let io = TrackedIo {
        inner: stream,
        state: state.clone(),
        stats: ctx.stats,
    };
    let svc_state = state.clone();
    let svc_ctx = ctx.clone();
    let peer = conn_info.remote_addr.clone();
    let service =
        hyper::service::service_fn(move |req| handle(&svc_ctx, &svc_state, &conn_info, req));
    let limits = &ctx.limits;
    let max_head = (limits.max_uri_length.0 + limits.max_header_size.0 + 1024).max(8192) as usize;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .half_close(false)
        .max_buf_size(max_head);
    // hyper keeps up to 100 header slots on the stack; we count against `max_headers` ourselves
    // (so the client gets its 431) and only widen hyper's table when the limit is higher.
    if limits.max_headers > 100 {
        builder.max_headers(limits.max_headers as usize + 1);
    }
    let mut conn = builder.serve_connection(TokioIo::new(io), service);

    let header_timeout = limits.header_timeout.0;
    let keepalive_timeout = limits.keepalive_timeout.0;
    // While draining, a connection that was already served and is idle closes now; one that is
    // mid-request, or accepted but not yet read, gets its answer (with `Connection: close`).
    const DRAIN_GRACE: Duration = Duration::from_secs(1);
    let mut draining = *drain.borrow();
    let sleep = tokio::time::sleep(if draining {
        DRAIN_GRACE
    } else {
        header_timeout
    });
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            res = &mut conn => {
                if let Err(e) = res
                    && !e.is_incomplete_message() {
                    tracing::debug!("connection from {peer}: {e}");
                }
                return;
            }
            changed = drain.changed(), if !draining => {
                if changed.is_err() || *drain.borrow() {
                    draining = true;
                    if state.requests.get() > 0 && state.phase.get() == Phase::Idle {
                        Pin::new(&mut conn).graceful_shutdown();
                    } else {
                        sleep.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                    }
                }
            }
            () = &mut sleep => {
                let since = state.since.get();
                let (limit, phase) = match state.phase.get() {
                    Phase::Idle if draining => (DRAIN_GRACE, Phase::Idle),
                    // A fresh connection gets the header timeout to send its first request.
                    Phase::Idle if state.requests.get() == 0 => (header_timeout, Phase::Idle),
                    Phase::Idle => (keepalive_timeout, Phase::Idle),
                    Phase::Head => (header_timeout, Phase::Head),
                    Phase::Busy => {
                        sleep.as_mut().reset(tokio::time::Instant::now() + header_timeout);
                        continue;
                    }
                };
                let deadline = since + limit;
                if Instant::now() < deadline {
                    sleep.as_mut().reset(tokio::time::Instant::from_std(deadline));
                    continue;
                }
                if phase == Phase::Head {
                    // Slow client: tell it why, then close.
                    let mut io = conn.into_parts().io.into_inner().inner;
                    ctx.stats.request(408, 20);
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        io.write_all(REQUEST_TIMEOUT_RESPONSE).await?;
                        io.shutdown().await
                    })
                    .await;
                }
                return;
            }
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        _ => "HTTP/1.1",
    }
}

/// What the access log needs of a request, owned (a WSGI request outlives its borrowed head).
struct LogMeta {
    method: http::Method,
    target: String,
    version: Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
}

impl LogMeta {
    fn of<B>(req: &Request<B>) -> Self {
        let h = req.headers();
        LogMeta {
            method: req.method().clone(),
            target: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_owned(),
            version: req.version(),
            referer: h.get(header::REFERER).cloned(),
            user_agent: h.get(header::USER_AGENT).cloned(),
        }
    }
}

type Reply = Result<Response<Body>, std::convert::Infallible>;

/// Static answers are ready at once; WSGI answers come from a Python thread.
// Unboxed on purpose: the static path stays free of allocations.
#[allow(clippy::large_enum_variant)]
enum Handled {
    Ready(Option<Reply>),
    Wsgi(Pin<Box<dyn Future<Output = Reply>>>),
}

impl Future for Handled {
    type Output = Reply;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        match &mut *self {
            Handled::Ready(r) => Poll::Ready(r.take().expect("polled after completion")),
            Handled::Wsgi(f) => f.as_mut().poll(cx),
        }
    }
}

fn handle(
    ctx: &Rc<CellCtx>,
    state: &Rc<ConnState>,
    conn: &Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Handled {
    let start = Instant::now();
    let cl_and_te = state.begin_request();
    let method = crate::metrics::method_index(req.method());
    match route(ctx, &req, cl_and_te) {
        Routed::Ready(resp, close, slot) => {
            let mark = Mark {
                route: slot as u16,
                method: method as u8,
                start,
            };
            let resp = finish(ctx, state, &conn.remote_addr, mark, resp, close, || {
                LogMeta::of(&req)
            });
            Handled::Ready(Some(Ok(resp)))
        }
        Routed::Wsgi(id, path_info, slot) => {
            let meta = ctx.log.enabled().then(|| LogMeta::of(&req));
            let (parts, body) = req.into_parts();
            let (ctx, state, conn) = (ctx.clone(), state.clone(), conn.clone());
            let mark = Mark {
                route: slot as u16,
                method: method as u8,
                start,
            };
            Handled::Wsgi(Box::pin(async move {
                let remote = conn.remote_addr.clone();
                let (resp, close) =
                    crate::wsgi::call(ctx.clone(), id, parts, body, path_info, conn).await;
                let mut meta = meta;
                Ok(finish(&ctx, &state, &remote, mark, resp, close, || {
                    meta.take().expect("logged once")
                }))
            }))
        }
    }
}

/// What the request-duration histogram needs of a request, kept until its body is done.
#[derive(Clone, Copy)]
struct Mark {
    route: u16,
    method: u8,
    start: Instant,
}

/// Common response headers, metrics and the access log line.
fn finish(
    ctx: &Rc<CellCtx>,
    state: &Rc<ConnState>,
    remote: &str,
    mark: Mark,
    mut resp: Response<Body>,
    close: bool,
    meta: impl FnOnce() -> LogMeta,
) -> Response<Body> {
    if close || ctx.draining.get() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("portico"));
    let start = mark.start;
    let status = resp.status().as_u16();
    let sent = resp.body().len();
    ctx.stats.request(status, sent);
    if ctx.histograms {
        state.mark.set(Some((mark, status, sent)));
    }
    if ctx.log.enabled() {
        let m = meta();
        let log = move |ctx: &CellCtx, remote: &str, body_bytes: u64| {
            ctx.log.log(&Entry {
                remote,
                method: m.method.as_str(),
                target: &m.target,
                version: version_str(m.version),
                status,
                body_bytes,
                referer: m.referer.as_ref().and_then(|v| v.to_str().ok()),
                user_agent: m.user_agent.as_ref().and_then(|v| v.to_str().ok()),
                duration_s: start.elapsed().as_secs_f64(),
            })
        };
        if resp.body().is_stream() {
            // A streamed body's size is known at its end: log then, like nginx.
            let (ctx, remote) = (ctx.clone(), remote.to_owned());
            resp.body_mut()
                .set_on_end(Box::new(move |bytes| log(&ctx, &remote, bytes)));
        } else {
            log(ctx, remote, sent);
        }
    }
    if let Some(r) = resp.body_mut().take_file_region() {
        state.regions.borrow_mut().push(r);
    }
    resp.body_mut().set_on_done(state.clone());
    resp
}

#[allow(clippy::large_enum_variant)]
enum Routed {
    /// The response, whether to close, and the metrics route slot.
    Ready(Response<Body>, bool, usize),
    /// A WSGI route id, the raw PATH_INFO below its mount point, and the metrics route slot.
    Wsgi(usize, String, usize),
}

/// Applies the request limits, then routes. Returns the response and whether to close after it.
fn route(ctx: &CellCtx, req: &Request<Incoming>, cl_and_te: bool) -> Routed {
    match check_and_route(ctx, req, cl_and_te) {
        Ok(r) => r,
        Err(refused) => Routed::Ready(refused.0, refused.1, 0),
    }
}

/// A request refused by the limits: the response and whether to close.
type Refused = Box<(Response<Body>, bool)>;

fn check_and_route(
    ctx: &CellCtx,
    req: &Request<Incoming>,
    cl_and_te: bool,
) -> Result<Routed, Refused> {
    if cl_and_te {
        // Request smuggling shape (RFC 9112 section 6.3): refuse and close.
        return Err(Box::new((status_page(StatusCode::BAD_REQUEST), true)));
    }
    let limits = &ctx.limits;
    if req.version() == Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        return Err(Box::new((status_page(StatusCode::BAD_REQUEST), false)));
    }
    let target_len = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if target_len as u64 > limits.max_uri_length.0 {
        return Err(Box::new((status_page(StatusCode::URI_TOO_LONG), true)));
    }
    if req.headers().len() as i64 > limits.max_headers {
        return Err(Box::new((
            status_page(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            true,
        )));
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes as u64 > limits.max_header_size.0 {
        return Err(Box::new((
            status_page(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            true,
        )));
    }
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limits.max_body_size.0
    {
        return Err(Box::new((status_page(StatusCode::PAYLOAD_TOO_LARGE), true)));
    }
    let path = req.uri().path();
    if !path.starts_with('/') {
        // Absolute-form and asterisk-form targets are not served here.
        return Err(Box::new((status_page(StatusCode::BAD_REQUEST), false)));
    }
    // A request body we will not read must not be parsed as the next request.
    let unread_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut slot = 0;
    let resp = match ctx.router.find(path) {
        Match::Route(id, r, rest) => match &r.handler {
            Handler::Wsgi(_) => {
                let path_info = if r.prefix.ends_with('/') {
                    format!("/{rest}")
                } else {
                    rest.to_owned()
                };
                return Ok(Routed::Wsgi(id, path_info, r.slot));
            }
            Handler::Static(route) => {
                slot = r.slot;
                crate::static_files::serve(
                    &ctx.cache,
                    id,
                    route,
                    FileRequest {
                        method: req.method(),
                        headers: req.headers(),
                        path,
                        query: req.uri().query(),
                        rel_raw: rest,
                    },
                )
            }
        },
        Match::AddSlash(r) => {
            slot = r.slot;
            let mut resp = status_page(StatusCode::MOVED_PERMANENTLY);
            let mut loc = r.prefix.clone();
            if let Some(q) = req.uri().query() {
                loc.push('?');
                loc.push_str(q);
            }
            if let Ok(v) = HeaderValue::from_str(&loc) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Match::None => status_page(StatusCode::NOT_FOUND),
    };
    Ok(Routed::Ready(resp, unread_body, slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_scan_sees_cl_and_te_across_reads() {
        let region: &'static crate::metrics::MetricsRegion =
            Box::leak(Box::new(crate::metrics::MetricsRegion::create().unwrap()));
        let s = ConnState::new(region.cell(0));
        s.on_read(b"POST / HTTP/1.1\r\nHost: x\r\nConTent-Len");
        s.on_read(b"gth: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(s.phase.get(), Phase::Head);
        assert!(s.begin_request());
        assert_eq!(s.phase.get(), Phase::Busy);
        s.on_read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(s.pending.get());
        s.done(0);
        assert_eq!(s.phase.get(), Phase::Head);
        assert!(!s.begin_request());
        s.done(0);
        assert_eq!(s.phase.get(), Phase::Idle);
    }
}
