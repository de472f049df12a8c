//! Handshake load for `cargo xtask bench tls`: C clients, each opening a new TLS connection per
//! request, for a fixed time; prints requests/s and latency. Full handshakes by default; with
//! `--resume` each client resumes its own previous session, as a returning browser does (oha
//! shares one small ticket cache between its connections, so most of its "new" connections
//! find no ticket and do a full handshake).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
#[command(
    name = "tls-load",
    about = "New TLS connection per request, full or resumed handshakes: requests/s and p50 to p99.99 latency"
)]
struct Args {
    /// host:port of the server (an IP address: the name checked in its certificate).
    addr: std::net::SocketAddr,
    /// Path requested on each connection.
    #[arg(long, default_value = "/")]
    path: String,
    /// PEM certificate the server must present (the bench's self-signed one), compared byte for
    /// byte: no chain to build and verify, as h2load, wrk and `oha --insecure` skip it too, so the
    /// client's CPU goes to the handshake itself (its signature is still checked).
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Each client resumes its previous session (a ticket) instead of a full handshake.
    #[arg(long)]
    resume: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bench_backend::runtime()?.block_on(run(args))
}

/// Accepts exactly one server certificate, and checks the handshake's signatures with it.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn client_config(args: &Args) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let cert = CertificateDer::pem_file_iter(&args.ca)
        .with_context(|| format!("reading {}", args.ca.display()))?
        .next()
        .context("no certificate in the CA file")?
        .context("a certificate in the CA file")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let pinned = Pinned {
        cert,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pinned))
        .with_no_client_auth();
    if !args.resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// One request on a new connection: handshake, GET, the whole response to the server's close.
async fn one(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await.context("handshake")?;
    tls.write_all(request).await.context("write")?;
    buf.clear();
    match tls.read_to_end(buf).await {
        Ok(_) => {}
        // A server that closes without close_notify after a whole response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(e).context("read"),
    }
    if !buf.starts_with(b"HTTP/1.1 200") {
        let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
        bail!("unexpected response {head:?}");
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Resuming clients each keep their own session cache.
    let shared = TlsConnector::from(client_config(&args)?);
    let request = Arc::new(
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            args.path, args.addr
        )
        .into_bytes(),
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let connector = if args.resume {
            TlsConnector::from(client_config(&args)?)
        } else {
            shared.clone()
        };
        let (request, addr) = (request.clone(), args.addr);
        tasks.spawn(async move {
            let (mut lat_us, mut errors, mut first) = (Vec::new(), 0usize, None);
            let mut buf = Vec::with_capacity(4096);
            while Instant::now() < deadline {
                let sent = Instant::now();
                match one(&connector, addr, &request, &mut buf).await {
                    Ok(()) => {
                        lat_us.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (lat_us, errors, first)
        });
    }
    let (mut lat, mut errors, mut first): (Vec<u32>, usize, Option<String>) = (Vec::new(), 0, None);
    while let Some(r) = tasks.join_next().await {
        let (l, e, f) = r.context("load task panicked")?;
        lat.extend(l);
        errors += e;
        first = first.or(f);
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(e) = &first {
        eprintln!("tls-load: {errors} errors, the first: {e}");
    }
    if lat.is_empty() {
        bail!("no request succeeded in {secs:.1}s ({errors} errors)");
    }
    bench_backend::print_report("requests", &mut lat, secs, Some(errors));
    Ok(())
}
