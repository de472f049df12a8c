//! The master <-> cell contract, all in one place: the descriptors a cell inherits, the
//! environment it is started with, the bytes on the control pipe, and the exit codes.

/// Exit status for a configuration that does not validate (sysexits EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;
/// Exit status of `serve`, a cell or the import check when a WSGI app fails to import.
pub const EXIT_APP: i32 = 3;

/// Environment variables the master sets for a cell (and for `portico app-check`).
pub mod env {
    /// The worker this cell serves as (0-based): its metrics and listeners.
    pub const INDEX: &str = "PORTICO_CELL_INDEX";
    /// The CPU to pin to.
    pub const CPU: &str = "PORTICO_CELL_CPU";
    /// How many cells the master runs: a cell pins itself first, so it cannot count the
    /// usable CPUs itself (the app's `wsgi.multiprocess` depends on it).
    pub const CELLS: &str = "PORTICO_CELLS";
    /// The validated configuration, as JSON.
    pub const CONFIG: &str = "PORTICO_CELL_CONFIG";
    /// Set when the steering program's CELL_LOAD map is passed after the control pipe.
    pub const LOAD_MAP: &str = "PORTICO_CELL_LOAD_MAP";
    /// Set when the tunnel_relay program's TUNNEL_SOCKS and TUNNEL_PEERS maps are passed
    /// (`relay = "sockmap"` tunnels can use it).
    pub const TUNNEL_MAPS: &str = "PORTICO_CELL_TUNNEL_MAPS";
    /// Set when the shared TLS session ticket keys are passed.
    pub const TICKETS: &str = "PORTICO_CELL_TICKETS";
}

/// Inherited descriptors, in order from `FIRST_FD`: one listener per listen address (in
/// configuration order), the metrics region, the control pipe, then (with eBPF steering) the
/// CELL_LOAD map, then (with the sockmap relay) TUNNEL_SOCKS and TUNNEL_PEERS, then (with TLS
/// listeners) the session ticket keys. Each optional
/// descriptor keeps its number whether the others are there or not.
pub const FIRST_FD: i32 = 3;

/// Where each inherited descriptor sits, for a configuration with `listeners` addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLayout {
    pub listeners: usize,
}

impl FdLayout {
    pub fn listener(self, i: usize) -> i32 {
        assert!(i < self.listeners, "listener {i} of {}", self.listeners);
        FIRST_FD + i32::try_from(i).expect("few listeners")
    }
    pub fn metrics(self) -> i32 {
        FIRST_FD + i32::try_from(self.listeners).expect("few listeners")
    }
    pub fn control(self) -> i32 {
        self.metrics() + 1
    }
    pub fn load_map(self) -> i32 {
        self.metrics() + 2
    }
    pub fn tunnel_socks(self) -> i32 {
        self.metrics() + 3
    }
    pub fn tunnel_peers(self) -> i32 {
        self.metrics() + 4
    }
    pub fn tickets(self) -> i32 {
        self.metrics() + 5
    }
}

/// The first byte a cell writes on the control pipe: it is accepting connections. Every byte
/// after it is a `Recycle` request.
pub const READY: u8 = b'R';

/// Why a cell asks the master to replace it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recycle {
    MaxRequests,
    MaxRss,
    Lifetime,
    Inactivity,
    RequestTimeout,
    SourceChange,
}

impl Recycle {
    pub const ALL: [Recycle; 6] = [
        Recycle::MaxRequests,
        Recycle::MaxRss,
        Recycle::Lifetime,
        Recycle::Inactivity,
        Recycle::RequestTimeout,
        Recycle::SourceChange,
    ];
    /// The byte on the control pipe.
    pub fn byte(self) -> u8 {
        match self {
            Recycle::MaxRequests => b'm',
            Recycle::MaxRss => b'r',
            Recycle::Lifetime => b'l',
            Recycle::Inactivity => b'i',
            Recycle::RequestTimeout => b't',
            Recycle::SourceChange => b's',
        }
    }
    pub fn from_byte(b: u8) -> Option<Recycle> {
        Recycle::ALL.into_iter().find(|r| r.byte() == b)
    }
    /// Position in `ALL`: the index of its restart counter.
    pub fn index(self) -> usize {
        Recycle::ALL
            .iter()
            .position(|r| *r == self)
            .expect("listed")
    }
    /// The `reason` label of `portico_cell_restarts_total`.
    pub fn label(self) -> &'static str {
        match self {
            Recycle::MaxRequests => "max_requests",
            Recycle::MaxRss => "max_rss",
            Recycle::Lifetime => "lifetime",
            Recycle::Inactivity => "inactivity",
            Recycle::RequestTimeout => "timeout",
            Recycle::SourceChange => "source_change",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycle_bytes_round_trip_and_never_look_ready() {
        for r in Recycle::ALL {
            assert_eq!(Recycle::from_byte(r.byte()), Some(r));
            assert_ne!(r.byte(), READY);
            assert_eq!(Recycle::ALL[r.index()], r);
        }
        assert_eq!(Recycle::from_byte(READY), None);
    }

    #[test]
    fn descriptors_follow_the_listeners() {
        let l = FdLayout { listeners: 2 };
        assert_eq!(
            (
                l.listener(0),
                l.listener(1),
                l.metrics(),
                l.control(),
                l.load_map(),
                l.tunnel_socks(),
                l.tunnel_peers()
            ),
            (3, 4, 5, 6, 7, 8, 9)
        );
    }
}
