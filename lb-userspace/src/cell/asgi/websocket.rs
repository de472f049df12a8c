//! An accepted ASGI WebSocket: once hyper has written the 101 the connection is a WebSocket
//! (tokio-tungstenite: masking, fragments, ping/pong, the close handshake, the message size
//! limit) whose messages are passed to and from the app until either side closes. The client
//! is read only while few of its messages wait for the app's `receive` (`INBOUND_MESSAGES`,
//! `INBOUND_BYTES`): a fast client and a slow app meet TCP backpressure, not a growing queue.
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use wsgi_worker::asgi::{Exchange, Out, WsData};

use super::Running;
use crate::cell::context::CellCtx;
use crate::metrics::cell_counter;

/// How long a closing side waits for the other's close frame before dropping the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Client messages handed to the app but not yet taken by its `receive`, past which the
/// client is not read...
const INBOUND_MESSAGES: usize = 16;
/// ... and their bytes (one message of up to `websocket_max_message` may go past it).
const INBOUND_BYTES: usize = 1 << 20;

/// Most bytes read from the client at a time. tungstenite zero-fills this much of its read
/// buffer on every read, including one that finds nothing: its default (128 KiB) cost a third
/// of the CPU per 4 KiB echo and 128 KiB of memory per connection.
const READ_CHUNK: usize = 16 * 1024;

/// An accepted WebSocket, waiting for hyper to write its 101.
pub struct Session {
    pub(super) ctx: Rc<CellCtx>,
    pub(super) route: usize,
    pub(super) x: Exchange,
    pub(super) running: Running,
    pub(super) max_message: usize,
    /// `websocket_idle_timeout`.
    pub(super) idle: Option<Duration>,
}

/// Waits for the app's call to end once its WebSocket is gone, logging an exception then.
pub(super) async fn follow(mut x: Exchange, mut running: Running) {
    while let Some(ev) = x.events.recv().await {
        if let Out::Finished { error } = ev {
            running.app_done = true;
            if let Some(tb) = error {
                tracing::error!(
                    "ASGI app raised after its WebSocket closed:\n{}",
                    tb.trim_end()
                );
            }
            return;
        }
    }
}

/// Counts the WebSocket as open while it lives.
struct Active(crate::metrics::CellStats<'static>);

impl Drop for Active {
    fn drop(&mut self) {
        let c = &self.0;
        c.set(
            cell_counter::WEBSOCKETS_ACTIVE,
            c.get(cell_counter::WEBSOCKETS_ACTIVE).saturating_sub(1),
        );
    }
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Runs an accepted WebSocket over the connection (with the bytes hyper read past the
/// request head) until both sides have closed or the app has ended and the client is gone.
pub async fn run<S>(io: S, read_ahead: Bytes, s: Session)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Session {
        ctx,
        route,
        mut x,
        mut running,
        max_message,
        idle,
    } = s;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .read_buffer_size(READ_CHUNK);
    let mut ws =
        WebSocketStream::from_partially_read(io, read_ahead.to_vec(), Role::Server, Some(config))
            .await;
    let stats = ctx.stats;
    stats.add(cell_counter::WEBSOCKETS_ACTIVE, 1);
    let _active = Active(stats);
    let app = |f: &dyn Fn(&wsgi_worker::asgi::AsgiApp)| {
        if let Some(a) = ctx.router.asgi(route) {
            f(&a.app);
        }
    };
    let rid = x.rid;
    // The app was told the client went (websocket.disconnect).
    let mut told = false;
    // Our close frame went out: the client's answer (or the timeout) ends the connection.
    let mut closing: Option<tokio::time::Instant> = None;
    // The sizes of the client messages the app has not taken yet, oldest first.
    let mut inbound: VecDeque<usize> = VecDeque::new();
    let mut inbound_bytes = 0usize;
    loop {
        let close_wait = async {
            match closing {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // After our close frame the client is read to its answer (its messages are dropped).
        let read = closing.is_some()
            || (inbound.len() < INBOUND_MESSAGES && inbound_bytes < INBOUND_BYTES);
        // Every pass of the loop is a frame or an app event: the idle clock starts over. It
        // runs only while no client message waits for the app (a busy app is not idle).
        let idle_wait = async {
            match idle {
                Some(d) if closing.is_none() && inbound.is_empty() => {
                    tokio::time::sleep(d).await;
                    d
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = ws.next(), if read => {
                let got = match msg {
                    Some(Ok(Message::Text(t))) => Ok(WsData::Text(t.as_str().to_owned())),
                    Some(Ok(Message::Binary(b))) => Ok(WsData::Bytes(b)),
                    // tungstenite answers pings itself; a lone pong needs nothing.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(frame))) => {
                        Err(frame.map_or(1005, |f| u16::from(f.code)))
                    }
                    Some(Err(e)) => {
                        let (code, why) = match &e {
                            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                                (1009, "message too big")
                            }
                            WsError::Utf8(_) => (1007, "invalid UTF-8"),
                            WsError::Protocol(_) => (1002, "protocol error"),
                            _ => (1006, ""),
                        };
                        tracing::info!("WebSocket client error: {e}; closing with {code}");
                        if code != 1006 && closing.is_none() {
                            refuse(&mut ws, close_frame(code, why)).await;
                        }
                        if !told {
                            app(&|a| a.ws_disconnect(rid, code));
                            told = true;
                        }
                        break;
                    }
                    None => Err(1006),
                };
                let code = match got {
                    Ok(data) => {
                        stats.add(cell_counter::WEBSOCKET_MESSAGES_IN, 1);
                        if !told
                            && closing.is_none()
                            && let Some(a) = ctx.router.asgi(route)
                        {
                            inbound.push_back(data.len());
                            inbound_bytes += data.len();
                            a.app.ws_message(rid, data);
                        }
                        continue;
                    }
                    Err(code) => code,
                };
                if !told {
                    told = true;
                    app(&|a| a.ws_disconnect(rid, code));
                }
                if code != 1006 && closing.is_none() {
                    // The client closed first: tungstenite queued the answer.
                    close_reply(&mut ws).await;
                }
                break;
            }
            ev = x.events.recv(), if !running.app_done => match ev {
                Some(Out::Message(data)) => {
                    let n = data.len();
                    let msg = match data {
                        WsData::Text(t) => Message::text(t),
                        WsData::Bytes(b) => Message::binary(b),
                    };
                    let sent = closing.is_none() && ws.send(msg).await.is_ok();
                    app(&|a| a.sent(&x, n));
                    if sent {
                        stats.add(cell_counter::WEBSOCKET_MESSAGES_OUT, 1);
                    } else if closing.is_none() && !told {
                        told = true;
                        app(&|a| a.ws_disconnect(rid, 1006));
                        break;
                    }
                }
                Some(Out::Close { code, reason }) => {
                    if closing.is_none() {
                        let _ = ws.send(close_frame(code, &reason)).await;
                        closing = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
                    }
                }
                Some(Out::Finished { error }) => {
                    running.app_done = true;
                    let (code, reason) = match error {
                        Some(tb) => {
                            tracing::error!(
                                "ASGI WebSocket app raised; closing with 1011:\n{}",
                                tb.trim_end()
                            );
                            (1011, "internal error")
                        }
                        None => (1000, ""),
                    };
                    if told && closing.is_none() {
                        break;
                    }
                    if closing.is_none() {
                        let _ = ws.send(close_frame(code, reason)).await;
                        closing = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
                    }
                }
                Some(Out::Received) => {
                    if let Some(n) = inbound.pop_front() {
                        inbound_bytes -= n;
                    }
                }
                Some(_) => {}
                None => running.app_done = true,
            },
            d = idle_wait => {
                tracing::info!(
                    "WebSocket idle past websocket_idle_timeout ({d:?}); closing with 1001"
                );
                let _ = ws.send(close_frame(1001, "idle timeout")).await;
                closing = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
            }
            () = close_wait => break,
        }
    }
    drop(ws);
    if !told {
        app(&|a| a.ws_disconnect(rid, 1006));
    }
    if !running.app_done {
        tokio::task::spawn_local(follow(x, running));
    }
}

/// After the client's close frame: sends tungstenite's queued answer and reads to the end.
async fn close_reply<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = ws.flush().await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Closes after a client error (the frames that follow may not parse): the close frame, our
/// side of the socket, then the client's bytes read and dropped until it closes too, so that
/// unread data does not turn the close into a reset.
async fn refuse<S>(ws: &mut WebSocketStream<S>, close: Message)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = ws.send(close).await;
        let io = ws.get_mut();
        let _ = io.shutdown().await;
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}
