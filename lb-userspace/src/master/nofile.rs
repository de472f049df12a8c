//! RLIMIT_NOFILE at start: every connection is a descriptor, so the soft limit is raised to
//! the hard one (the cells inherit it across fork and exec) and logged once with what it allows.
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::config::MaxConnections;

/// The descriptor limit before and after the raise.
#[derive(Debug, Clone, Copy)]
pub struct Nofile {
    pub before: u64,
    pub now: u64,
    pub hard: Option<u64>,
}

/// Raises the soft limit to the hard limit (an unlimited hard limit keeps the soft one: the
/// kernel's nr_open caps any finite value we could pick).
pub fn raise() -> Nofile {
    let lim = getrlimit(Resource::Nofile);
    let before = lim.current.unwrap_or(u64::MAX);
    let mut now = before;
    if let Some(hard) = lim.maximum
        && before < hard
    {
        let new = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, new) {
            Ok(()) => now = hard,
            Err(e) => tracing::warn!("could not raise RLIMIT_NOFILE from {before} to {hard}: {e}"),
        }
    }
    Nofile {
        before,
        now,
        hard: lim.maximum,
    }
}

impl Nofile {
    /// The one line about the limit, with the connections per cell it gives; a warning when
    /// a configured `max_connections` cannot fit in the descriptors.
    pub fn log(&self, max: MaxConnections, cells: usize) {
        let hard = self
            .hard
            .map_or_else(|| "unlimited".into(), |h| h.to_string());
        let per_cell = max.resolve(self.now);
        let how = match max {
            MaxConnections::Auto => "auto: half of RLIMIT_NOFILE",
            MaxConnections::Count(_) => "configured",
        };
        tracing::info!(
            "RLIMIT_NOFILE {} (soft limit was {}, hard limit {hard}); max_connections {per_cell} per cell ({how}), {} over {cells} cell(s)",
            self.now,
            self.before,
            per_cell.saturating_mul(cells)
        );
        if per_cell as u64 >= self.now {
            tracing::warn!(
                "max_connections = {per_cell} reaches RLIMIT_NOFILE ({}): a full cell fails accept with EMFILE instead of leaving connections queued",
                self.now
            );
        }
    }
}
