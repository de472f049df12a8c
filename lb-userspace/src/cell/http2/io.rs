//! The socket as an HTTP/2 connection sees it: bytes read (has the preface arrived?), writes
//! that block (send_timeout), and the frames written, so that the RST_STREAM and GOAWAY frames
//! h2's limits send are counted (hyper reports neither).
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cell::http2::state::H2Conn;
use crate::metrics::{CellStats, cell_counter, http2_error_index};

/// Frame header length (RFC 9113 section 4.1).
const FRAME_HEADER: usize = 9;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;

pub struct H2Io<S> {
    inner: S,
    conn: Rc<H2Conn>,
    frames: FrameScan,
    stats: CellStats<'static>,
}

impl<S> H2Io<S> {
    pub fn new(inner: S, conn: Rc<H2Conn>, stats: CellStats<'static>) -> Self {
        H2Io {
            inner,
            conn,
            frames: FrameScan::default(),
            stats,
        }
    }

    /// A write returned: `written` bytes of `bufs` left (their frames are followed), or it
    /// blocked (a blocked spell starts).
    fn wrote<'b>(&mut self, r: &Poll<io::Result<usize>>, bufs: impl Iterator<Item = &'b [u8]>) {
        match r {
            Poll::Pending => {
                if self.conn.write_blocked.get().is_none() {
                    self.conn.write_blocked.set(Some(Instant::now()));
                }
            }
            Poll::Ready(res) => {
                self.conn.write_blocked.set(None);
                let mut left = *res.as_ref().unwrap_or(&0);
                for b in bufs {
                    let n = left.min(b.len());
                    self.frames.feed(&b[..n], self.stats);
                    left -= n;
                    if left == 0 {
                        break;
                    }
                }
            }
        }
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
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&r, std::iter::once(buf));
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r, bufs.iter().map(|b| &**b));
        r
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

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn error_codes_are_counted_across_split_writes() {
        let region: &'static crate::metrics::MetricsRegion =
            Box::leak(Box::new(crate::metrics::MetricsRegion::create().unwrap()));
        let stats = region.cell(0);
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
