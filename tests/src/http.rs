//! A raw HTTP/1.1 client: keep-alive, pipelining, and malformed requests on purpose.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One client connection that can send several requests (keep-alive, pipelining).
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// A connection whose socket was set up by the caller (e.g. a small receive buffer).
    pub fn from_stream(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(raw)
    }

    /// Reads one response to a request with `method` (HEAD has no body).
    pub fn read_response(&mut self, method: &str) -> std::io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        let resp = Response {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        let no_body =
            method == "HEAD" || status == 304 || status == 204 || (100..200).contains(&status);
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let mut trailers = Vec::new();
        let body = if no_body {
            Vec::new()
        } else if chunked {
            self.read_chunked(&mut trailers)?
        } else if let Some(len) = resp
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            while self.buf.len() < len {
                self.fill()?;
            }
            self.buf.drain(..len).collect()
        } else {
            // Read to EOF.
            loop {
                match self.fill() {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            std::mem::take(&mut self.buf)
        };
        Ok(Response {
            body,
            trailers,
            ..resp
        })
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    /// A chunked body (RFC 9112 section 7.1); its trailer fields go to `trailers`.
    fn read_chunked(&mut self, trailers: &mut Vec<(String, String)>) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                loop {
                    let line = self.read_line()?;
                    if line.is_empty() {
                        return Ok(body);
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        trailers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Reads the head of a response and then only the first `n` body bytes that arrive.
    pub fn read_some(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..).collect())
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut tmp = [0u8; 65536];
        let n = self.stream.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// True when the server has closed the connection (EOF) within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut tmp = [0u8; 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        self.send(raw_request(method, path, headers).as_bytes())?;
        self.read_response(method)
    }

    /// Opens a WebSocket on `path`: a valid handshake plus `headers`; returns the connection
    /// and the head of the answer, a `101` or not (what follows it stays buffered).
    pub fn websocket(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<(Conn, String)> {
        let mut all = vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];
        all.extend_from_slice(headers);
        let mut c = Conn::open(addr)?;
        c.send(raw_request("GET", path, &all).as_bytes())?;
        let end = loop {
            if let Some(i) = find(&c.buf, b"\r\n\r\n") {
                break i + 4;
            }
            c.fill()?;
        };
        let head = String::from_utf8_lossy(&c.buf[..end]).into_owned();
        c.buf.drain(..end);
        Ok((c, head))
    }

    /// Reads one unmasked (server) WebSocket frame: its first byte (FIN and opcode) and its
    /// payload.
    pub fn read_frame(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        loop {
            let b = &self.buf;
            let header = match b.get(1).map(|l| l & 0x7f) {
                Some(126) if b.len() >= 4 => Some((u16::from_be_bytes([b[2], b[3]]) as usize, 4)),
                Some(127) if b.len() >= 10 => Some((
                    u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                )),
                Some(n) if n < 126 => Some((n as usize, 2)),
                _ => None,
            };
            if let Some((len, at)) = header
                && b.len() >= at + len
            {
                let first = b[0];
                let payload = b[at..at + len].to_vec();
                self.buf.drain(..at + len);
                return Ok((first, payload));
            }
            self.fill()?;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn raw_request(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    Conn::open(addr)?.request(method, path, headers)
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", path, &[])
}

/// Sends raw bytes on a fresh connection and reads one response.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Response> {
    let mut c = Conn::open(addr)?;
    c.send(bytes)?;
    c.read_response("GET")
}
