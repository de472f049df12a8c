//! Request framing as the bytes arrive, beside hyper: hyper drops `Content-Length` when
//! `Transfer-Encoding` is also present, so only the raw header block shows that smuggling
//! shape. The tracker follows each head and skips its body (by length, or chunk by chunk), so
//! header names are looked for in header blocks only, pipelined requests included.
use std::collections::VecDeque;

/// The longest prefix of a header line that is kept (enough for the names we look for);
/// longer lines are checked on their start only.
const LINE_KEEP: usize = 256;
/// A Content-Length line is kept whole up to this (hyper accepts any number of leading zeros
/// and spaces, and a truncated value would put the tracker out of step).
const LENGTH_LINE_KEEP: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head: `lines` lines seen so far.
    Head {
        lines: u32,
    },
    /// Skipping `left` bytes of a Content-Length body.
    Length {
        left: u64,
    },
    /// Chunked body: reading a chunk-size line (`size` so far, `digits` read).
    ChunkSize {
        size: u64,
        digits: u32,
    },
    /// After the size: whitespace or an extension, up to CR.
    ChunkExt {
        size: u64,
    },
    /// CR seen after the size line; LF expected.
    ChunkSizeLf {
        size: u64,
    },
    /// Chunk data: `left` bytes to skip, then CRLF.
    ChunkData {
        left: u64,
    },
    ChunkDataCr,
    ChunkDataLf,
    /// After the last chunk: trailer lines until an empty one.
    Trailer {
        empty: bool,
        cr: bool,
    },
    /// Framing hyper also refuses (the connection ends), or a Content-Length line longer than
    /// `LENGTH_LINE_KEEP`: nothing more is tracked.
    Broken,
}

/// What one request head said about its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadFraming {
    pub content_length: bool,
    pub transfer_encoding: bool,
    /// A `#` in the request line: the URI parser drops a fragment, so the target hyper hands
    /// over would not be the one sent.
    pub fragment: bool,
}

impl HeadFraming {
    /// Both framings at once: the request smuggling shape (RFC 9112 section 6.3).
    pub fn ambiguous(self) -> bool {
        self.content_length && self.transfer_encoding
    }
}

/// Follows request boundaries on one connection.
#[derive(Debug)]
pub struct FramingTracker {
    state: State,
    /// The unfinished line of a head, carried to the next read (at most `LINE_KEEP` bytes).
    line: Vec<u8>,
    /// The head being read: what it declared.
    head: HeadFraming,
    length: Option<u64>,
    /// Heads read but not yet handed to the service (pipelining), oldest first.
    ready: VecDeque<HeadFraming>,
}

impl Default for FramingTracker {
    fn default() -> Self {
        FramingTracker {
            state: State::Head { lines: 0 },
            line: Vec::new(),
            head: HeadFraming::default(),
            length: None,
            ready: VecDeque::new(),
        }
    }
}

impl FramingTracker {
    /// Feeds bytes as they are read from the socket.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let used = self.step(data);
            data = &data[used..];
        }
    }

    /// Gives back the memory the carried line and the pipelining queue grew (a parked
    /// connection holds nothing).
    pub fn shrink(&mut self) {
        if self.line.is_empty() {
            self.line = Vec::new();
        }
        self.ready.shrink_to_fit();
    }

    /// Whether bytes of a request after the one being answered have been seen (a body's own
    /// late bytes are not a next request).
    pub fn next_head_started(&self) -> bool {
        !self.ready.is_empty()
            || !self.line.is_empty()
            || matches!(self.state, State::Head { lines } if lines > 0)
    }

    /// The framing of the next request hyper hands to the service.
    pub fn next_head(&mut self) -> HeadFraming {
        self.ready.pop_front().unwrap_or_default()
    }

    /// Heads read and not yet taken by `next_head` (the fuzz harness checks hyper never gets
    /// ahead of the tracker).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn pending(&self) -> usize {
        self.ready.len()
    }

    /// Consumes part of `data` in the current state; returns how many bytes.
    fn step(&mut self, data: &[u8]) -> usize {
        match self.state {
            State::Head { lines } => {
                let nl = data.iter().position(|&b| b == b'\n');
                if lines == 0 && data[..nl.unwrap_or(data.len())].contains(&b'#') {
                    self.head.fragment = true;
                }
                let Some(nl) = nl else {
                    self.keep(data);
                    return data.len();
                };
                if self.line.is_empty() {
                    // The whole line is in this read (the usual case): no copy.
                    self.head_line(&data[..nl], lines);
                } else {
                    self.keep(&data[..nl]);
                    let line = std::mem::take(&mut self.line);
                    self.head_line(&line, lines);
                    // Keep the buffer's capacity for the next carried line.
                    self.line = line;
                    self.line.clear();
                }
                nl + 1
            }
            State::Length { left } => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::Head { lines: 0 }
                } else {
                    State::Length { left }
                };
                n
            }
            State::ChunkData { left } => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::ChunkDataCr
                } else {
                    State::ChunkData { left }
                };
                n
            }
            State::Broken => data.len(),
            _ => {
                self.chunk_byte(data[0]);
                1
            }
        }
    }

    /// One line of a head (without its LF).
    fn head_line(&mut self, line: &[u8], lines: u32) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // Empty lines before a request line are skipped, as httparse does.
            if lines > 0 {
                self.end_head();
            }
        } else {
            self.header_line(line, lines);
            if let State::Head { .. } = self.state {
                self.state = State::Head { lines: lines + 1 };
            }
        }
    }

    fn keep(&mut self, part: &[u8]) {
        const NAME: &[u8] = b"content-length";
        let mut room = LINE_KEEP.saturating_sub(self.line.len());
        let seen = self.line.len().min(NAME.len());
        let more = part.len().min(NAME.len() - seen);
        if self.line[..seen].eq_ignore_ascii_case(&NAME[..seen])
            && part[..more].eq_ignore_ascii_case(&NAME[seen..seen + more])
        {
            room = LENGTH_LINE_KEEP.saturating_sub(self.line.len());
        }
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn header_line(&mut self, line: &[u8], index: u32) {
        if index == 0 {
            return; // the request line
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return;
        };
        let name = &line[..colon];
        if name.eq_ignore_ascii_case(b"content-length") {
            self.head.content_length = true;
            let value = std::str::from_utf8(&line[colon + 1..]).unwrap_or("").trim();
            self.length = value.parse().ok();
            if self.length.is_none() {
                // hyper refuses it too; nothing after it can be framed.
                self.length = Some(u64::MAX);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.head.transfer_encoding = true;
        }
    }

    fn end_head(&mut self) {
        let head = std::mem::take(&mut self.head);
        let length = self.length.take();
        self.ready.push_back(head);
        self.state = if head.transfer_encoding {
            State::ChunkSize { size: 0, digits: 0 }
        } else {
            match length {
                Some(u64::MAX) => State::Broken,
                Some(n) if n > 0 => State::Length { left: n },
                _ => State::Head { lines: 0 },
            }
        };
    }

    /// One byte of chunked framing, with hyper's rules (a mismatch means hyper fails the body
    /// and closes the connection, so the tracker stops).
    fn chunk_byte(&mut self, b: u8) {
        self.state = match (self.state, b) {
            (State::ChunkSize { size, digits }, _) if b.is_ascii_hexdigit() => {
                let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                match size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                    Some(size) => State::ChunkSize {
                        size,
                        digits: digits + 1,
                    },
                    None => State::Broken,
                }
            }
            (State::ChunkSize { digits: 0, .. }, _) => State::Broken,
            (State::ChunkSize { size, .. } | State::ChunkExt { size }, b'\r') => {
                State::ChunkSizeLf { size }
            }
            (State::ChunkSize { size, .. } | State::ChunkExt { size }, b'\n') => {
                let _ = size;
                State::Broken
            }
            (State::ChunkSize { size, .. } | State::ChunkExt { size }, _) => {
                State::ChunkExt { size }
            }
            (State::ChunkSizeLf { size: 0 }, b'\n') => State::Trailer {
                empty: true,
                cr: false,
            },
            (State::ChunkSizeLf { size }, b'\n') => State::ChunkData { left: size },
            (State::ChunkDataCr, b'\r') => State::ChunkDataLf,
            (State::ChunkDataLf, b'\n') => State::ChunkSize { size: 0, digits: 0 },
            (State::Trailer { empty, .. }, b'\r') => State::Trailer { empty, cr: true },
            (
                State::Trailer {
                    empty: true,
                    cr: true,
                },
                b'\n',
            ) => State::Head { lines: 0 },
            (State::Trailer { cr: true, .. }, b'\n') => State::Trailer {
                empty: true,
                cr: false,
            },
            (State::Trailer { .. }, _) => State::Trailer {
                empty: false,
                cr: false,
            },
            _ => State::Broken,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(chunks: &[&[u8]]) -> Vec<HeadFraming> {
        let mut t = FramingTracker::default();
        for c in chunks {
            t.feed(c);
        }
        t.ready.into_iter().collect()
    }

    const BOTH: HeadFraming = HeadFraming {
        content_length: true,
        transfer_encoding: true,
        fragment: false,
    };
    const CL: HeadFraming = HeadFraming {
        content_length: true,
        transfer_encoding: false,
        fragment: false,
    };

    #[test]
    fn cl_and_te_seen_across_reads() {
        let h = heads(&[
            b"POST / HTTP/1.1\r\nHost: x\r\nConTent-Len",
            b"gth: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]);
        assert_eq!(h, vec![BOTH]);
        assert!(h[0].ambiguous());
    }

    #[test]
    fn header_names_in_a_body_are_not_headers() {
        // Defect 3: a body line that looks like a header must not count.
        let body = b"Transfer-Encoding: chunked\r\n\r\n";
        let req = format!(
            "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let h = heads(&[req.as_bytes(), body, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert_eq!(h, vec![CL, HeadFraming::default()]);
    }

    #[test]
    fn pipelined_heads_after_a_chunked_body_are_tracked() {
        let h = heads(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n\
              POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"]);
        assert_eq!(
            h,
            vec![
                HeadFraming {
                    content_length: false,
                    transfer_encoding: true,
                    fragment: false,
                },
                BOTH
            ]
        );
    }

    #[test]
    fn byte_at_a_time_is_the_same() {
        let raw: &[u8] = b"\r\nPOST / HTTP/1.1\nHost: x\nContent-Length: 2\n\nokGET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n";
        let mut t = FramingTracker::default();
        for b in raw {
            t.feed(std::slice::from_ref(b));
        }
        assert_eq!(t.next_head(), CL);
        assert_eq!(t.next_head(), BOTH);
        assert_eq!(t.next_head(), HeadFraming::default());
    }

    #[test]
    fn a_long_content_length_value_is_read_whole() {
        // Leading zeros past LINE_KEEP: hyper reads 5; so must the tracker.
        let zeros = "0".repeat(LINE_KEEP * 2);
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {zeros}5\r\n\r\n");
        let h = heads(&[
            head.as_bytes(),
            b"x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]);
        assert_eq!(h, vec![CL, BOTH]);
    }

    #[test]
    fn a_hash_in_the_request_line_is_seen_across_reads() {
        let long = "a".repeat(LINE_KEEP * 2);
        let head = format!(
            "GET /{long}#frag HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nX-A: #\r\n\r\n"
        );
        let (first, second) = head.as_bytes().split_at(LINE_KEEP + 10);
        let h = heads(&[first, second]);
        assert!(h[0].fragment);
        // A `#` in a field value is not the target's.
        assert!(!h[1].fragment);
    }

    #[test]
    fn broken_chunk_framing_stops_tracking() {
        let mut t = FramingTracker::default();
        t.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(t.state, State::Broken);
        t.feed(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(t.ready.len(), 1);
    }
}
