//! The request smuggling differential: a recording backend that reads what it receives with
//! the strict RFC 9112 reader, the cases' model (bytes and their RFC reading), the verdict of
//! one case and the summary table.
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::strict::StrictRequest;

mod backend;
pub use backend::{Event, RecordingBackend};

/// One request of a case as RFC 9112 reads it: what a server that serves it must see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub method: String,
    pub target: String,
    /// None: not compared (an HTTP/1.0 request without Host).
    pub host: Option<String>,
    pub body: Vec<u8>,
}

/// `method target` with Host `t` and `body`.
pub fn req(method: &str, target: &str, body: &[u8]) -> Expected {
    Expected {
        method: method.into(),
        target: target.into(),
        host: Some("t".into()),
        body: body.to_vec(),
    }
}

/// A case: bytes sent on one client connection, and their reading.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub bytes: Vec<u8>,
    /// The requests the bytes hold, in order, as RFC 9112 reads them.
    pub reading: Vec<Expected>,
    /// Whether something invalid follows `reading` (it must be refused, with nothing of it,
    /// or after it, served); false: the bytes are exactly `reading`.
    pub invalid_tail: bool,
    /// Sent only after an interim `100 Continue` arrives (`Expect: 100-continue`).
    pub after_continue: Option<Vec<u8>>,
    /// The client stops sending (shuts down its side) right after the bytes.
    pub half_close: bool,
}

impl Case {
    /// Bytes that may be served, and then only as `reading` (a server may also refuse them).
    pub fn valid(name: &str, bytes: &[u8], reading: Vec<Expected>) -> Case {
        Case {
            name: name.into(),
            bytes: bytes.to_vec(),
            reading,
            invalid_tail: false,
            after_continue: None,
            half_close: false,
        }
    }
    /// Bytes with no reading a server may serve: refused, at once.
    pub fn invalid(name: &str, bytes: &[u8]) -> Case {
        Case::after(name, bytes, vec![])
    }
    /// `reading`, then bytes that must be refused.
    pub fn after(name: &str, bytes: &[u8], reading: Vec<Expected>) -> Case {
        Case {
            invalid_tail: true,
            ..Case::valid(name, bytes, reading)
        }
    }
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The server refused it (4xx, or 501 for a transfer coding it does not implement) and
    /// closed; what was served before the refusal matched the reading.
    RefusedClosed(u16),
    /// Everything was served, each request as read.
    Consistent,
    /// The client went away mid-request: nothing served, and any upstream connection that held
    /// part of it was closed (`cut`: how many did), never reused.
    ClientGone { cut: usize },
    /// Anything else: why.
    Desync(String),
}

/// What the client saw: the final responses in order (status, whether the backend or app
/// answered it, and its body), and whether the connection was closed at the end.
#[derive(Debug, Default)]
pub struct ClientSide {
    pub responses: Vec<(u16, bool, Vec<u8>)>,
    pub closed: bool,
    pub error: Option<String>,
}

/// Header the recording backend (and the echo app) put on every answer, so a response from
/// behind Portico is told from one Portico wrote itself.
pub const BACKEND_MARK: &str = "x-backend";

/// Sends `case` on a fresh connection to `addr` and reads every response until the
/// connection closes or nothing more comes after the expected ones.
pub fn exchange(addr: SocketAddr, case: &Case) -> ClientSide {
    let mut out = ClientSide::default();
    let s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("connect: {e}"));
            return out;
        }
    };
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut r = Reader {
        s,
        buf: Vec::new(),
        eof: false,
    };
    if let Err(e) = r.s.write_all(&case.bytes) {
        out.error = Some(format!("write: {e}"));
    }
    if case.half_close {
        r.s.shutdown(Shutdown::Write).ok();
    }
    let want = case.reading.len() + usize::from(case.invalid_tail);
    let mut continue_body = case.after_continue.clone();
    while out.responses.len() < want && out.error.is_none() {
        match r.response() {
            Ok(Some((100, ..))) => {
                if let Some(b) = continue_body.take() {
                    r.s.write_all(&b).ok();
                }
            }
            Ok(Some((status, _, _))) if (101..200).contains(&status) => {}
            Ok(Some((status, mark, body))) => {
                let refused = !mark;
                out.responses.push((status, mark, body));
                if refused {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => out.error = Some(e),
        }
    }
    r.s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    if out.responses.last().is_some_and(|r| !r.1) {
        // After a refusal the server must close by itself, the client still sending.
        match r.response() {
            Ok(None) => out.closed = true,
            Ok(Some(resp)) => out.responses.push(resp),
            Err(e) => {
                out.closed = r.eof;
                if !r.eof {
                    out.error = Some(e);
                }
            }
        }
        return out;
    }
    // The rest: the client stops sending, and whatever else comes back is read to the close.
    r.s.shutdown(Shutdown::Write).ok();
    loop {
        match r.response() {
            Ok(Some((status, _, _))) if (100..200).contains(&status) => {}
            Ok(Some(resp)) => out.responses.push(resp),
            Ok(None) => {
                out.closed = true;
                break;
            }
            Err(e) => {
                out.closed = r.eof;
                if !r.eof && out.error.is_none() {
                    out.error = Some(e);
                }
                break;
            }
        }
    }
    out
}

struct Reader {
    s: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Reader {
    fn fill(&mut self) -> Result<bool, String> {
        let mut tmp = [0u8; 16384];
        match self.s.read(&mut tmp) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                self.eof = true;
                Ok(false)
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// One response (status, marked by the backend, body); None at a clean close.
    fn response(&mut self) -> Result<Option<(u16, bool, Vec<u8>)>, String> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill()? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(format!(
                        "cut response {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                };
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        self.buf.drain(..end);
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let mark = field(BACKEND_MARK).is_some();
        let len: usize = if (100..200).contains(&status) || status == 204 || status == 304 {
            0
        } else if field("transfer-encoding").is_some() {
            return Err("chunked response: not expected from these servers".into());
        } else {
            field("content-length")
                .and_then(|v| v.parse().ok())
                .ok_or("response without Content-Length")?
        };
        while self.buf.len() < len {
            if !self.fill()? {
                return Err("response body cut short".into());
            }
        }
        let body = self.buf.drain(..len).collect();
        Ok(Some((status, mark, body)))
    }
}

/// What one served request looked like to whoever served it, for the comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub body: Vec<u8>,
}

impl From<&StrictRequest> for Served {
    fn from(r: &StrictRequest) -> Self {
        Served {
            method: r.method.clone(),
            target: r.target.clone(),
            host: r.host.clone(),
            body: r.body.clone(),
        }
    }
}

fn matches(e: &Expected, s: &Served) -> bool {
    e.method == s.method
        && e.target == s.target
        && e.body == s.body
        && (e.host.is_none() || e.host == s.host)
}

/// The verdict of one case from what the client saw and what was served behind the server
/// (`served`: in order; `problems`: anything the backend could not read).
pub fn judge(case: &Case, client: &ClientSide, served: &[Served], problems: &[String]) -> Verdict {
    let cut = problems.iter().filter(|p| p.starts_with(CUT)).count();
    if case.half_close
        && served.is_empty()
        && problems.len() == cut
        && client.closed
        && client.responses.iter().all(|r| !r.1 && r.0 >= 400)
    {
        return match client.responses.first() {
            Some(&(status, ..)) if cut == 0 && (400..500).contains(&status) => {
                Verdict::RefusedClosed(status)
            }
            None if cut == 0 => Verdict::RefusedClosed(0),
            _ => Verdict::ClientGone { cut },
        };
    }
    if let Some(p) = problems.first() {
        return Verdict::Desync(format!("backend: {p}"));
    }
    let answered = client.responses.iter().filter(|r| r.1).count();
    if answered != served.len() {
        return Verdict::Desync(format!(
            "{} requests served behind the server, {answered} answers reached the client",
            served.len()
        ));
    }
    if served.len() > case.reading.len() {
        return Verdict::Desync(format!(
            "{} requests served, the bytes hold {}: {served:?}",
            served.len(),
            case.reading.len()
        ));
    }
    for (e, s) in case.reading.iter().zip(served) {
        if !matches(e, s) {
            return Verdict::Desync(format!("served {s:?}, RFC 9112 reads {e:?}"));
        }
    }
    let refusal = client
        .responses
        .iter()
        .position(|r| !r.1)
        .map(|i| (i, client.responses[i].0));
    match refusal {
        Some((i, status)) => {
            if i != served.len() || i + 1 != client.responses.len() {
                return Verdict::Desync(format!("answers after a refusal: {:?}", statuses(client)));
            }
            if !((400..500).contains(&status) || status == 501) {
                return Verdict::Desync(format!("refused with {status}"));
            }
            if !client.closed {
                return Verdict::Desync(format!("refused with {status}, connection left open"));
            }
            Verdict::RefusedClosed(status)
        }
        None if case.invalid_tail && client.closed && client.error.is_none() => {
            // Closed without an answer: nothing of the invalid part was served.
            Verdict::RefusedClosed(0)
        }
        None if case.invalid_tail => Verdict::Desync(format!(
            "invalid bytes neither refused nor closed ({:?})",
            client.error
        )),
        None if served.len() < case.reading.len() => Verdict::Desync(format!(
            "{} of {} requests served, and no refusal ({:?})",
            served.len(),
            case.reading.len(),
            client.error
        )),
        None => Verdict::Consistent,
    }
}

fn statuses(c: &ClientSide) -> Vec<u16> {
    c.responses.iter().map(|r| r.0).collect()
}

/// Runs every case against `addr`; `behind` gives what was served for the case (called after
/// the client is done). Prints the table and returns the desyncs.
pub fn run_suite(
    title: &str,
    addr: SocketAddr,
    cases: &[Case],
    mut before: impl FnMut(),
    mut behind: impl FnMut(&ClientSide) -> (Vec<Served>, Vec<String>),
) -> Vec<String> {
    let (mut refused, mut consistent, mut gone, mut desyncs) = (0, 0, 0, Vec::new());
    let started = Instant::now();
    println!("\n{title}");
    println!("{:<58} verdict", "case");
    for case in cases {
        before();
        let client = exchange(addr, case);
        let (served, problems) = behind(&client);
        let v = judge(case, &client, &served, &problems);
        let line = match &v {
            Verdict::RefusedClosed(0) => "closed without an answer".to_string(),
            Verdict::RefusedClosed(s) => format!("refused {s}, closed"),
            Verdict::Consistent => format!("served {} as read", served.len()),
            Verdict::ClientGone { cut } => {
                format!("client gone: {cut} upstream connection(s) cut, nothing served")
            }
            Verdict::Desync(why) => format!("DESYNC: {why}"),
        };
        println!("{:<58} {line}", case.name);
        match v {
            Verdict::RefusedClosed(_) => refused += 1,
            Verdict::Consistent => consistent += 1,
            Verdict::ClientGone { .. } => gone += 1,
            Verdict::Desync(why) => desyncs.push(format!("{}: {why}", case.name)),
        }
    }
    println!(
        "\n| suite | cases | 4xx-and-closed | forwarded-consistent | client-gone-cut | desyncs |\n|---|---|---|---|---|---|\n| {title} | {} | {refused} | {consistent} | {gone} | {} |\n({:.1} s)",
        cases.len(),
        desyncs.len(),
        started.elapsed().as_secs_f64()
    );
    desyncs
}

/// How `backend_view` names a connection that closed holding part of a request.
pub const CUT: &str = "closed holding";

/// `behind` for a suite through the proxy: what the recording backend read for the case.
pub fn backend_view(backend: &RecordingBackend) -> (Vec<Served>, Vec<String>) {
    let mut served = Vec::new();
    let mut problems = Vec::new();
    for e in backend.settle(Duration::from_secs(2)) {
        match e {
            Event::Request(r) => served.push(Served::from(&r)),
            Event::Error(e) => problems.push(format!("strict reader: {e}")),
            Event::Leftover(n) => {
                problems.push(format!("{CUT} {n} bytes of an unfinished request"));
            }
            Event::Unfinished(n) => {
                problems.push(format!("open, holding {n} bytes that are no whole request"));
            }
        }
    }
    (served, problems)
}
