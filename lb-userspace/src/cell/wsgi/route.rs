//! One WSGI route as a cell runs it: its pool of Python threads and its time limits.
use std::time::Duration;

use wsgi_worker::Pool;

#[derive(Debug)]
pub struct WsgiRoute {
    pub pool: Pool,
    pub request_timeout: Duration,
    pub grace: Duration,
    pub queue_timeout: Duration,
    pub allow_ranges: bool,
}
