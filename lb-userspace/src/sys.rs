//! The one place with `unsafe`: each OS call that needs it is wrapped once here, with a typed
//! error that names the operation.
use std::fs::File;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU64;

/// An OS call that failed, with the operation's name.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct SysError {
    pub op: &'static str,
    #[source]
    pub source: std::io::Error,
}

fn err(op: &'static str) -> impl FnOnce(std::io::Error) -> SysError {
    move |source| SysError { op, source }
}

/// Takes ownership of a descriptor the master handed down at exec time.
pub fn inherited_fd(fd: RawFd) -> Result<OwnedFd, SysError> {
    // SAFETY: only borrowed for the F_GETFD probe below, which fails cleanly on a closed fd.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed).map_err(|e| SysError {
        op: "fcntl(F_GETFD) on inherited fd",
        source: e.into(),
    })?;
    // SAFETY: the fd is open (checked above) and nothing else in this process owns it: the
    // master's fd mapping placed it at this number just before exec.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A shared, fixed-size array of atomic counters in a memfd mapped by master and cells.
pub struct SharedCounters {
    map: memmap2::MmapMut,
    len: usize,
}

impl SharedCounters {
    /// Maps `count` u64 counters from `file` (which must be at least `count * 8` bytes).
    pub fn map(file: &File, count: usize) -> Result<Self, SysError> {
        let bytes = count * size_of::<u64>();
        let meta = file.metadata().map_err(err("fstat(metrics memfd)"))?;
        if (meta.len() as usize) < bytes {
            return Err(SysError {
                op: "mmap(metrics memfd)",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "region smaller than the layout",
                ),
            });
        }
        // SAFETY: MAP_SHARED mapping of a memfd that only Portico processes hold; it is never
        // truncated after creation, so the mapping stays valid for the object's lifetime.
        let map = unsafe { memmap2::MmapOptions::new().len(bytes).map_mut(file) }
            .map_err(err("mmap(metrics memfd)"))?;
        Ok(Self { map, len: count })
    }

    /// The counters as atomics.
    pub fn all(&self) -> &[AtomicU64] {
        let ptr = self.map.as_ptr() as *const AtomicU64;
        debug_assert_eq!(ptr.align_offset(align_of::<AtomicU64>()), 0);
        // SAFETY: the mapping is page aligned, `len * 8` bytes long and lives as long as `self`;
        // AtomicU64 has the size and alignment of u64 and every bit pattern is valid. All
        // processes touch it only through atomics.
        unsafe { std::slice::from_raw_parts(ptr, self.len) }
    }
}

/// Maps an mmapable BPF array as `entries` u64 words (the steering program's CELL_LOAD) for
/// the life of the process: the cell publishes its load with one atomic add, no syscall.
pub fn map_bpf_u64_array(fd: &OwnedFd, entries: usize) -> Result<&'static [AtomicU64], SysError> {
    let bytes = entries * size_of::<u64>();
    // SAFETY: MAP_SHARED mapping of a BPF_F_MMAPABLE array map, which cannot shrink; the
    // mapping is leaked, so it lives as long as the process.
    let map = unsafe { memmap2::MmapOptions::new().len(bytes).map_mut(fd) }
        .map_err(err("mmap(CELL_LOAD BPF map)"))?;
    let map: &'static mut memmap2::MmapMut = Box::leak(Box::new(map));
    let ptr = map.as_ptr() as *const AtomicU64;
    // SAFETY: page aligned, `entries * 8` bytes, never unmapped; the BPF program and other
    // cells only touch it atomically (or read it racily, which any u64 tolerates).
    Ok(unsafe { std::slice::from_raw_parts(ptr, entries) })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, so the steering program
/// can compare its "now" with times the cells publish.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Maps a read-only file into memory so a static file's bytes reach the socket without a
/// userspace copy (the kernel copies straight from the page cache on write).
pub fn map_file(file: &File, len: usize) -> Result<memmap2::Mmap, SysError> {
    // SAFETY: read-only private mapping. Truncating a file that is being served is the one
    // hazard (SIGBUS); deploy by rename, as with nginx's open_file_cache.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file) }
        .map_err(err("mmap(static file)"))?;
    // Its first pages read in now: a disk that fails them fails here, before any header went
    // out (a 500), not in the middle of the body. EINVAL: a kernel before 5.14, served lazily.
    match map.advise_range(memmap2::Advice::PopulateRead, 0, len.min(POPULATE_MAX)) {
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
            Err(err("madvise(MADV_POPULATE_READ, static file)")(e))
        }
        _ => Ok(map),
    }
}

/// How much of a mapped file `map_file` reads in up front (a file served by ranges need not
/// be read whole).
const POPULATE_MAX: usize = 64 << 20;

/// Puts the calling thread (and the threads it creates later) under SCHED_BATCH: a woken thread
/// of the cell does not preempt the running one, so the event loop finishes a batch of requests
/// before a Python thread runs them, and vice versa (one switch per batch, not per request).
pub fn set_batch_scheduling() -> Result<(), SysError> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on the calling thread with a valid, initialised parameter struct.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(SysError {
            op: "sched_setscheduler(SCHED_BATCH)",
            source: std::io::Error::last_os_error(),
        })
    }
}

/// TCP_INFO of a TCP socket.
fn tcp_info(fd: BorrowedFd<'_>, op: &'static str) -> Result<libc::tcp_info, SysError> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the buffer and its length describe `info`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(info)
    } else {
        Err(SysError {
            op,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Connections waiting in a listening TCP socket's accept queue: for a listener, TCP_INFO's
/// `tcpi_unacked` is the queue length (one syscall, unlike walking /proc/net/tcp).
pub fn listen_queue_len(fd: BorrowedFd<'_>) -> Result<u32, SysError> {
    Ok(tcp_info(fd, "getsockopt(TCP_INFO) on a listener")?.tcpi_unacked)
}

/// Bytes ever put in a connected TCP socket's send queue: the bytes the peer acknowledged
/// (TCP_INFO) plus those still queued (SIOCOUTQ). A sockmap tunnel compares it with what the
/// tunnel_relay program redirected to the socket before passing an end of stream on.
pub fn tcp_bytes_queued(fd: BorrowedFd<'_>) -> Result<u64, SysError> {
    use std::os::fd::AsRawFd as _;
    let acked = tcp_info(fd, "getsockopt(TCP_INFO) on a tunnel socket")?.tcpi_bytes_acked;
    let mut outq: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int to the pointer, which points at `outq`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut outq) };
    if rc != 0 {
        return Err(SysError {
            op: "ioctl(SIOCOUTQ) on a tunnel socket",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(acked + u64::try_from(outq).unwrap_or(0))
}

impl From<SysError> for std::io::Error {
    /// Keeps the kind (`WouldBlock` above all, which tokio's `try_io` looks for).
    fn from(e: SysError) -> Self {
        std::io::Error::new(e.source.kind(), e)
    }
}

/// A pipe for splice(2), both ends non-blocking: the kernel's buffer between two sockets.
pub fn splice_pipe() -> Result<(OwnedFd, OwnedFd), SysError> {
    use rustix::pipe::PipeFlags;
    rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).map_err(|e| SysError {
        op: "pipe2(O_NONBLOCK) for splice",
        source: e.into(),
    })
}

/// Moves up to `len` bytes from `from` to `to` (one of them a pipe) with splice(2), without
/// blocking on the pipe; Ok(0) from a socket is its end of stream.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> Result<usize, SysError> {
    use rustix::pipe::SpliceFlags;
    rustix::pipe::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
    )
    .map_err(|e| SysError {
        op: "splice",
        source: e.into(),
    })
}

/// Half-closes a socket: the peer reads end of stream, and the other direction stays open.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> Result<(), SysError> {
    rustix::net::shutdown(fd, rustix::net::Shutdown::Write).map_err(|e| SysError {
        op: "shutdown(SHUT_WR)",
        source: e.into(),
    })
}

/// The kernel's cookie of a socket (SO_COOKIE): what the tunnel_relay program knows a socket by.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> Result<u64, SysError> {
    rustix::net::sockopt::socket_cookie(fd).map_err(|e| SysError {
        op: "getsockopt(SO_COOKIE)",
        source: e.into(),
    })
}

/// TCP_DEFER_ACCEPT on a listener: a connection reaches the accept queue once its first data
/// has arrived (or after about `secs`), so the cell's first read finds the request there
/// instead of an empty socket (nginx's `listen ... deferred`).
pub fn set_defer_accept(fd: BorrowedFd<'_>, secs: u32) -> Result<(), SysError> {
    use std::os::fd::AsRawFd as _;
    let v = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads one int from the pointer, which points at `v` for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&v).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if rc != 0 {
        return Err(SysError {
            op: "setsockopt(TCP_DEFER_ACCEPT)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
