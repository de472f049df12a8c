//! The socket as an HTTP/2 connection sees it: bytes read (has the preface arrived?), writes
//! that block (send_timeout), the frames written, so that the RST_STREAM and GOAWAY frames
//! h2's limits send are counted (hyper reports neither), and small frames gathered into one
//! write per batch of responses.
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cell::http2::state::H2Conn;
use crate::metrics::{CellStats, cell_counter, http2_error_index};

/// Frame header length (RFC 9113 section 4.1).
const FRAME_HEADER: usize = 9;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
/// Writes smaller than this are gathered (`H2Io::out`); larger ones (big DATA frames) go to
/// the socket as they are, after what was gathered.
const GATHER: usize = 16 * 1024;

pub struct H2Io<S> {
    inner: S,
    conn: Rc<H2Conn>,
    frames: FrameScan,
    stats: CellStats<'static>,
    /// Frames h2 handed over that the socket has not taken yet, from `sent` on. h2 flushes
    /// after every response's DATA frame; gathered, the responses ready together (ten streams
    /// answered from one read) leave in one TLS record and one system call instead of ten.
    out: Vec<u8>,
    sent: usize,
    /// Bytes were gathered since the last flush.
    fresh: bool,
}

impl<S: AsyncWrite + Unpin> H2Io<S> {
    pub fn new(inner: S, conn: Rc<H2Conn>, stats: CellStats<'static>) -> Self {
        H2Io {
            inner,
            conn,
            frames: FrameScan::default(),
            stats,
            out: Vec::new(),
            sent: 0,
            fresh: false,
        }
    }

    /// A write to the socket returned: a blocked spell starts or ends.
    fn blocked<T>(&self, r: &Poll<T>) {
        match r {
            Poll::Pending if self.conn.write_blocked.get().is_none() => {
                self.conn.write_blocked.set(Some(Instant::now()));
            }
            Poll::Pending => {}
            Poll::Ready(_) => self.conn.write_blocked.set(None),
        }
    }

    /// Writes what was gathered; the buffer is given back once the connection is idle.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let r = Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]);
            self.blocked(&r);
            match ready!(r)? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.sent += n,
            }
        }
        self.sent = 0;
        if self.conn.open.get() == 0 {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for H2Io<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.conn.read.set(self.conn.read.get().saturating_add(n));
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H2Io<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if this.out.len() - this.sent + len > GATHER {
            ready!(this.poll_drain(cx))?;
        }
        if len >= GATHER {
            let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            this.blocked(&r);
            if let Poll::Ready(Ok(mut left)) = r {
                for b in bufs {
                    let n = left.min(b.len());
                    this.frames.feed(&b[..n], this.stats);
                    left -= n;
                }
            }
            return r;
        }
        for b in bufs {
            this.out.extend_from_slice(b);
            this.frames.feed(b, this.stats);
        }
        this.fresh |= len > 0;
        Poll::Ready(Ok(len))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.fresh {
            // h2 flushes again once it has queued every response ready now (at the latest
            // when polled again, which the wake makes sure of): the bytes leave together then.
            this.fresh = false;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Follows frame boundaries in the bytes the cell writes (a server writes nothing but frames)
/// and keeps the error code of each RST_STREAM and GOAWAY.
#[derive(Debug, Default)]
pub struct FrameScan {
    head: [u8; FRAME_HEADER],
    /// Bytes of the current frame header seen; `FRAME_HEADER` while in its payload.
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    /// The start of the payload of a frame whose error code is wanted (RST_STREAM: the code;
    /// GOAWAY: the last stream id, then the code).
    code: [u8; 8],
    code_have: usize,
    want: usize,
}

impl FrameScan {
    pub fn feed(&mut self, mut data: &[u8], stats: CellStats<'_>) {
        while !data.is_empty() {
            if self.have < FRAME_HEADER {
                let n = (FRAME_HEADER - self.have).min(data.len());
                self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == FRAME_HEADER {
                    let h = self.head;
                    self.left = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    self.want = match h[3] {
                        RST_STREAM => 4,
                        GOAWAY => 8,
                        _ => 0,
                    };
                    self.code_have = 0;
                    if self.left == 0 {
                        self.end(stats);
                    }
                }
                continue;
            }
            let n = self.left.min(data.len());
            if self.code_have < self.want {
                let m = (self.want - self.code_have).min(n);
                self.code[self.code_have..self.code_have + m].copy_from_slice(&data[..m]);
                self.code_have += m;
            }
            self.left -= n;
            data = &data[n..];
            if self.left == 0 {
                self.end(stats);
            }
        }
    }

    /// The current frame is complete: count it if it carried an error code.
    fn end(&mut self, stats: CellStats<'_>) {
        self.have = 0;
        if self.want == 0 || self.code_have < self.want {
            return;
        }
        let c = &self.code;
        let (base, code) = if self.want == 4 {
            let code = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            (cell_counter::HTTP2_STREAM_RESETS, code)
        } else {
            let code = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
            (cell_counter::HTTP2_GOAWAYS, code)
        };
        if let Some(i) = http2_error_index(code) {
            stats.add(base + i, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that records each write it takes, or takes none while `full`.
    #[derive(Default)]
    struct Socket {
        writes: Vec<Vec<u8>>,
        full: bool,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.full {
                return Poll::Pending;
            }
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn stats() -> CellStats<'static> {
        let region: &'static crate::metrics::MetricsRegion =
            Box::leak(Box::new(crate::metrics::MetricsRegion::create().unwrap()));
        region.cell(0)
    }

    #[test]
    fn small_frames_leave_together_at_the_second_flush_and_large_ones_after_them() {
        let conn = Rc::new(H2Conn::new(Instant::now()));
        let mut io = H2Io::new(Socket::default(), conn.clone(), stats());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut io = Pin::new(&mut io);
        let write = |io: &mut Pin<&mut H2Io<Socket>>, cx: &mut Context<'_>, b: &[u8]| {
            io.as_mut().poll_write(cx, b)
        };
        // Two responses, each followed by h2's flush: nothing written yet.
        for r in [b"one", b"two"] {
            assert!(matches!(write(&mut io, &mut cx, r), Poll::Ready(Ok(3))));
            assert!(matches!(
                io.as_mut().poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            ));
        }
        assert!(io.inner.writes.is_empty());
        // The flush with nothing new since: one write of both.
        assert!(matches!(
            io.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(io.inner.writes, vec![b"onetwo".to_vec()]);
        // A large frame after a small one: the small one first, then the large one as it is.
        assert!(matches!(
            write(&mut io, &mut cx, b"head"),
            Poll::Ready(Ok(4))
        ));
        let big = vec![7u8; GATHER];
        assert!(matches!(write(&mut io, &mut cx, &big), Poll::Ready(Ok(n)) if n == GATHER));
        assert_eq!(io.inner.writes[1..], [b"head".to_vec(), big]);
        // A socket that takes nothing: the flush waits, the connection counts a blocked spell,
        // and shutdown writes what is left first.
        assert!(matches!(
            write(&mut io, &mut cx, b"tail"),
            Poll::Ready(Ok(4))
        ));
        io.inner.full = true;
        assert!(io.as_mut().poll_flush(&mut cx).is_ready(), "deferred once");
        assert!(io.as_mut().poll_flush(&mut cx).is_pending());
        assert!(io.as_mut().poll_shutdown(&mut cx).is_pending());
        assert!(conn.write_blocked.get().is_some());
        io.inner.full = false;
        assert!(matches!(
            io.as_mut().poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(io.inner.writes.last().unwrap(), b"tail");
        assert!(conn.write_blocked.get().is_none());
        // No stream open: the buffer is given back.
        assert_eq!(io.out.capacity(), 0);
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn error_codes_are_counted_across_split_writes() {
        let stats = stats();
        let mut wire = frame(0x4, &[0; 12]); // SETTINGS
        wire.extend(frame(0x3, &7u32.to_be_bytes())); // RST_STREAM(REFUSED_STREAM)
        wire.extend(frame(0x3, &8u32.to_be_bytes())); // RST_STREAM(CANCEL): not counted
        wire.extend(frame(0x0, &[b'x'; 40])); // DATA
        wire.extend(frame(0x4, &[])); // SETTINGS ack
        let mut goaway = 5u32.to_be_bytes().to_vec();
        goaway.extend(11u32.to_be_bytes()); // ENHANCE_YOUR_CALM
        goaway.extend(b"debug data");
        wire.extend(frame(0x7, &goaway));
        // Every split point, and byte by byte.
        for step in [1, 2, 5, 9, 13, wire.len()] {
            let mut scan = FrameScan::default();
            for chunk in wire.chunks(step) {
                scan.feed(chunk, stats);
            }
            assert_eq!(scan.have, 0, "ends at a frame boundary (step {step})");
        }
        let resets = |code: u32| {
            stats.get(cell_counter::HTTP2_STREAM_RESETS + http2_error_index(code).unwrap())
        };
        let goaways =
            |code: u32| stats.get(cell_counter::HTTP2_GOAWAYS + http2_error_index(code).unwrap());
        assert_eq!(resets(7), 6);
        assert_eq!(goaways(11), 6);
        assert_eq!(resets(1) + goaways(1) + resets(11) + goaways(7), 0);
    }
}
