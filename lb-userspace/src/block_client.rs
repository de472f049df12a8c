//! `portico block add|del|list`: talks to a running master's admin endpoint, which changes
//! the XDP guard's blocklist maps in place.
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

use crate::config::{Config, Overrides};

/// What `portico block` does.
#[derive(Debug, clap::Subcommand)]
pub enum BlockOp {
    /// Drop every packet from CIDR (an address, or address/prefix).
    Add { cidr: String },
    /// Stop dropping CIDR.
    Del { cidr: String },
    /// Print the blocklist.
    List,
}

/// Returns the exit code: 0 done, 1 refused by the server.
pub fn run(op: BlockOp, admin: Option<&str>, config: Option<&Path>) -> anyhow::Result<u8> {
    let addr: SocketAddr = match (admin, config) {
        (Some(a), _) => a.parse().with_context(|| format!("--admin {a:?}"))?,
        (None, Some(c)) => {
            let cfg = Config::resolve(Some(c), &Overrides::default())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if cfg.server.admin == "off" {
                bail!(
                    "{}: server.admin is \"off\"; nothing to talk to",
                    c.display()
                );
            }
            cfg.server.admin.parse().context("server.admin")?
        }
        (None, None) => crate::config::DEFAULT_ADMIN
            .parse()
            .expect("default admin address"),
    };
    let (method, path) = match &op {
        BlockOp::Add { cidr } => ("POST", format!("/blocklist/add?cidr={}", encode(cidr))),
        BlockOp::Del { cidr } => ("POST", format!("/blocklist/del?cidr={}", encode(cidr))),
        BlockOp::List => ("GET", "/blocklist".to_string()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let (status, body) = rt.block_on(request(addr, method, &path))?;
    print!("{body}");
    if status.is_success() {
        Ok(0)
    } else {
        eprintln!("portico block: the server answered {status}");
        Ok(1)
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> anyhow::Result<(http::StatusCode, String)> {
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .with_context(|| format!("connecting to the admin endpoint {addr}: timed out"))?
    .with_context(|| format!("connecting to the admin endpoint {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the admin endpoint")?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await.context("admin request")?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
