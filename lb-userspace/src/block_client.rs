//! `portico block add|del|list`: talks to a running master's admin endpoint, which changes
//! the XDP guard's blocklist maps in place; with a token file, it sends the bearer token.
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

/// Where `portico block` sends its request, as the command line says.
#[derive(Debug)]
pub struct Target<'a> {
    pub admin: Option<&'a str>,
    pub config: Option<&'a Path>,
    pub token_file: Option<&'a Path>,
}

/// Returns the exit code: 0 done, 1 refused by the server.
pub fn run(op: BlockOp, target: &Target<'_>) -> anyhow::Result<u8> {
    let cfg = match target.config {
        Some(c) => Some(
            Config::resolve(Some(c), &Overrides::default()).map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        None => None,
    };
    let addr: SocketAddr = match (target.admin, &cfg) {
        (Some(a), _) => a.parse().with_context(|| format!("--admin {a:?}"))?,
        (None, Some(cfg)) => {
            if cfg.server.admin == "off" {
                bail!("server.admin is \"off\" in the configuration; nothing to talk to");
            }
            cfg.server.admin.parse().context("server.admin")?
        }
        (None, None) => crate::config::DEFAULT_ADMIN
            .parse()
            .expect("default admin address"),
    };
    let token_file = target.token_file.or_else(|| {
        cfg.as_ref()
            .and_then(|c| c.server.admin_token_file.as_deref())
    });
    let token = match token_file {
        Some(f) => Some(crate::config::read_admin_token(f).map_err(anyhow::Error::msg)?),
        None => None,
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
    let (status, body) = rt.block_on(request(addr, method, &path, token.as_deref()))?;
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
    token: Option<&[u8]>,
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
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    if let Some(t) = token {
        let mut v = b"Bearer ".to_vec();
        v.extend_from_slice(t);
        let mut v = http::HeaderValue::from_bytes(&v).context("the admin token")?;
        v.set_sensitive(true);
        req = req.header(http::header::AUTHORIZATION, v);
    }
    let req = req.body(Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await.context("admin request")?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
