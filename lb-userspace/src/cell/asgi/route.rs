//! One ASGI route as a cell runs it: its app (and loop thread), its limits, and the requests
//! it runs now.
use std::cell::Cell;
use std::time::Duration;

use wsgi_worker::asgi::AsgiApp;

#[derive(Debug)]
pub struct AsgiRoute {
    pub app: AsgiApp,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    /// Largest WebSocket message a client may send (`websocket_max_message`).
    pub websocket_max_message: usize,
    /// How long a WebSocket may go without a message (`websocket_idle_timeout`).
    pub websocket_idle_timeout: Option<Duration>,
    /// Requests of this route whose app call has not ended.
    pub running: Cell<usize>,
}
