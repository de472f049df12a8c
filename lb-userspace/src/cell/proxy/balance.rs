//! Which server of an upstream group takes the next request, and which servers are out: a
//! sans-IO state machine per cell. Requests start and finish (with their latency, or as a
//! failure); `pick` chooses by the group's policy among the servers that are up, and the
//! backups only when no primary is.
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::Balance;

/// One server's weight, role and what the cell has seen of it.
#[derive(Debug, Clone)]
struct State {
    weight: u32,
    backup: bool,
    /// Failures since `first_fail` (within `fail_timeout`).
    fails: u32,
    first_fail: Option<Instant>,
    /// Out until then (after `max_fails` failures).
    down_until: Option<Instant>,
    in_flight: u32,
    /// Peak-EWMA of the time to the response head, in seconds (0: nothing seen yet).
    ewma: f64,
    ewma_at: Option<Instant>,
    /// Smooth weighted round-robin's running weight (nginx's algorithm).
    current: i64,
    /// Active health checks: out until `passes` checks in a row pass, after `fails` in a
    /// row failed; and the current run of results.
    unhealthy: bool,
    check_run: u32,
}

/// What became of a request on a server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A response head came, after this long.
    Answered(Duration),
    /// A connect error, a timeout, or an invalid response.
    Failed,
}

/// Decay time of the latency average: old samples weigh half after about this long.
const EWMA_DECAY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Balancer {
    policy: Balance,
    servers: Vec<State>,
    max_fails: u32,
    fail_timeout: Duration,
    /// xorshift state for p2c's two random choices.
    rng: u64,
    /// Round-robin start for ties and for hashing without a client address.
    turn: usize,
}

impl Balancer {
    /// `servers`: (weight, backup) in configuration order.
    pub fn new(
        policy: Balance,
        servers: &[(u32, bool)],
        max_fails: u32,
        fail_timeout: Duration,
    ) -> Self {
        Balancer {
            policy,
            servers: servers
                .iter()
                .map(|&(weight, backup)| State {
                    weight: weight.max(1),
                    backup,
                    fails: 0,
                    first_fail: None,
                    down_until: None,
                    in_flight: 0,
                    ewma: 0.0,
                    ewma_at: None,
                    current: 0,
                    unhealthy: false,
                    check_run: 0,
                })
                .collect(),
            max_fails,
            fail_timeout,
            rng: 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
            turn: 0,
        }
    }

    /// Is server `i` taking requests now? Not while its health checks fail; and not after
    /// `max_fails` failures, unless it is the group's only server (as in nginx).
    pub fn is_up(&self, i: usize, now: Instant) -> bool {
        let s = &self.servers[i];
        !s.unhealthy && (self.servers.len() == 1 || s.down_until.is_none_or(|t| now >= t))
    }

    /// An active health check of server `i` passed (`ok`) or failed. Returns whether that
    /// changed its health (for the log line).
    pub fn checked(&mut self, i: usize, ok: bool, fails: u32, passes: u32) -> bool {
        let s = &mut self.servers[i];
        // A run counts results that go against the current health.
        if ok == s.unhealthy {
            s.check_run += 1;
        } else {
            s.check_run = 0;
        }
        let needed = if s.unhealthy { passes } else { fails };
        if s.check_run >= needed.max(1) {
            s.unhealthy = !s.unhealthy;
            s.check_run = 0;
            if !s.unhealthy {
                // Back: what passive failures said before is forgotten.
                s.down_until = None;
                s.fails = 0;
                s.first_fail = None;
            }
            return true;
        }
        false
    }

    /// The server for the next try, never one in `tried`; None when none is up.
    pub fn pick(&mut self, now: Instant, client: Option<IpAddr>, tried: &[usize]) -> Option<usize> {
        // Inline for small groups: no allocation per request.
        let eligible = |b: &Balancer, backup: bool| -> smallvec::SmallVec<[usize; 8]> {
            (0..b.servers.len())
                .filter(|&i| {
                    b.servers[i].backup == backup && !tried.contains(&i) && b.is_up(i, now)
                })
                .collect()
        };
        let mut candidates = eligible(self, false);
        if candidates.is_empty() {
            candidates = eligible(self, true);
        }
        if candidates.is_empty() {
            return None;
        }
        Some(match self.policy {
            Balance::RoundRobin => self.weighted_round_robin(&candidates),
            Balance::LeastConn => self.least_conn(&candidates),
            Balance::P2cEwma => self.p2c(&candidates, now),
            Balance::Hash => match client {
                Some(ip) => self.rendezvous(&candidates, ip),
                None => self.weighted_round_robin(&candidates),
            },
        })
    }

    /// Requests in flight on server `i`.
    pub fn in_flight(&self, i: usize) -> u32 {
        self.servers[i].in_flight
    }

    /// A request went to server `i`.
    pub fn started(&mut self, i: usize) {
        self.servers[i].in_flight += 1;
    }

    /// The request that went to server `i` ended (its response head came, or it failed).
    /// True when this failure took the server out (so that is logged once, not per request
    /// that was in flight on it).
    pub fn finished(&mut self, i: usize, now: Instant, outcome: Outcome) -> bool {
        let s = &mut self.servers[i];
        s.in_flight = s.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Answered(took) => {
                s.fails = 0;
                s.first_fail = None;
                s.down_until = None;
                let x = took.as_secs_f64();
                // Peak-EWMA: a slower sample counts at once, faster ones decay in.
                s.ewma = if x > s.ewma || s.ewma_at.is_none() {
                    x
                } else {
                    let dt = s
                        .ewma_at
                        .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
                    let w = (-dt / EWMA_DECAY.as_secs_f64()).exp();
                    s.ewma * w + x * (1.0 - w)
                };
                s.ewma_at = Some(now);
            }
            Outcome::Failed => {
                // Already out: a request that was in flight when it went down.
                if self.max_fails == 0 || s.down_until.is_some_and(|t| t > now) {
                    return false;
                }
                if s.first_fail
                    .is_none_or(|t| now.saturating_duration_since(t) > self.fail_timeout)
                {
                    s.first_fail = Some(now);
                    s.fails = 0;
                }
                s.fails += 1;
                if s.fails >= self.max_fails {
                    s.down_until = Some(now + self.fail_timeout);
                    s.fails = 0;
                    s.first_fail = None;
                    return true;
                }
            }
        }
        false
    }

    /// nginx's smooth weighted round-robin: each candidate gains its weight, the largest is
    /// chosen and pays the total back.
    fn weighted_round_robin(&mut self, candidates: &[usize]) -> usize {
        let total: i64 = candidates
            .iter()
            .map(|&i| i64::from(self.servers[i].weight))
            .sum();
        let mut best = candidates[0];
        for &i in candidates {
            let s = &mut self.servers[i];
            s.current += i64::from(s.weight);
        }
        for &i in candidates {
            if self.servers[i].current > self.servers[best].current {
                best = i;
            }
        }
        self.servers[best].current -= total;
        best
    }

    /// Fewest requests in flight per unit of weight; ties go round the candidates.
    fn least_conn(&mut self, candidates: &[usize]) -> usize {
        self.turn = self.turn.wrapping_add(1);
        let n = candidates.len();
        let load = |s: &State| f64::from(s.in_flight) / f64::from(s.weight);
        let mut best = candidates[self.turn % n];
        for k in 0..n {
            let i = candidates[(self.turn + k) % n];
            if load(&self.servers[i]) < load(&self.servers[best]) {
                best = i;
            }
        }
        best
    }

    /// Two random choices, the one with the lower peak-EWMA latency times its load.
    fn p2c(&mut self, candidates: &[usize], now: Instant) -> usize {
        if candidates.len() == 1 {
            return candidates[0];
        }
        let a = candidates[self.random(candidates.len())];
        let mut b = candidates[self.random(candidates.len() - 1)];
        if b == a {
            b = candidates[candidates.len() - 1];
        }
        let score = |s: &State| {
            // An idle server's average decays towards nothing: it gets tried again.
            let decay = s
                .ewma_at
                .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
            let ewma = s.ewma * (-decay / EWMA_DECAY.as_secs_f64()).exp();
            (ewma + 1e-6) * f64::from(s.in_flight + 1) / f64::from(s.weight)
        };
        if score(&self.servers[b]) < score(&self.servers[a]) {
            b
        } else {
            a
        }
    }

    /// Rendezvous hashing on the client address: the same client keeps its server while it is
    /// up, and only its clients move when one goes down.
    fn rendezvous(&self, candidates: &[usize], ip: IpAddr) -> usize {
        let key = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let mut best = candidates[0];
        let mut best_score = f64::MIN;
        for &i in candidates {
            let h = mix((key as u64) ^ ((key >> 64) as u64) ^ (i as u64).wrapping_mul(0x9e37_79b9));
            // Weighted: -w / ln(u) with u uniform in (0, 1).
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -f64::from(self.servers[i].weight) / u.ln();
            if score > best_score {
                best_score = score;
                best = i;
            }
        }
        best
    }

    fn random(&mut self, n: usize) -> usize {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x % n as u64) as usize
    }
}

/// A 64-bit finaliser (murmur3's): every input bit moves every output bit.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECS: Duration = Duration::from_secs(10);

    fn picks(b: &mut Balancer, n: usize, now: Instant) -> Vec<usize> {
        (0..n).map(|_| b.pick(now, None, &[]).unwrap()).collect()
    }

    #[test]
    fn round_robin_follows_the_weights_smoothly() {
        let mut b = Balancer::new(Balance::RoundRobin, &[(3, false), (1, false)], 1, SECS);
        let now = Instant::now();
        let p = picks(&mut b, 8, now);
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 6);
        // Smooth: never the light server twice in a row.
        assert!(p.windows(2).all(|w| !(w[0] == 1 && w[1] == 1)), "{p:?}");
        let mut b = Balancer::new(
            Balance::RoundRobin,
            &[(1, false), (1, false), (1, false)],
            1,
            SECS,
        );
        assert_eq!(picks(&mut b, 6, now), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn failures_take_a_server_out_for_fail_timeout() {
        let now = Instant::now();
        let mut b = Balancer::new(Balance::RoundRobin, &[(1, false), (1, false)], 2, SECS);
        assert!(!b.finished(0, now, Outcome::Failed));
        assert!(b.is_up(0, now), "one failure of max_fails = 2");
        assert!(
            b.finished(0, now, Outcome::Failed),
            "this failure took it out"
        );
        assert!(!b.is_up(0, now));
        // Requests that were in flight fail too: they neither count nor take it out again.
        assert!(!b.finished(0, now, Outcome::Failed));
        assert!(!b.is_up(0, now));
        assert_eq!(picks(&mut b, 3, now), [1, 1, 1]);
        assert!(b.is_up(0, now + SECS), "back after fail_timeout");
        // Failures further apart than fail_timeout do not add up.
        let mut b = Balancer::new(Balance::RoundRobin, &[(1, false), (1, false)], 2, SECS);
        b.finished(0, now, Outcome::Failed);
        b.finished(0, now + SECS * 2, Outcome::Failed);
        assert!(b.is_up(0, now + SECS * 2));
        // A success clears the count.
        b.finished(
            0,
            now + SECS * 2,
            Outcome::Answered(Duration::from_millis(1)),
        );
        b.finished(0, now + SECS * 2, Outcome::Failed);
        assert!(b.is_up(0, now + SECS * 2));
    }

    #[test]
    fn health_checks_take_a_server_out_and_back() {
        let now = Instant::now();
        let mut b = Balancer::new(Balance::RoundRobin, &[(1, false), (1, false)], 1, SECS);
        assert!(!b.checked(0, false, 2, 3), "one failure of fails = 2");
        assert!(b.checked(0, false, 2, 3), "out after two in a row");
        assert!(!b.is_up(0, now));
        assert_eq!(picks(&mut b, 3, now), [1, 1, 1]);
        // A pass in between restarts the count of passes needed.
        assert!(!b.checked(0, true, 2, 3));
        assert!(!b.checked(0, false, 2, 3));
        assert!(!b.checked(0, true, 2, 3));
        assert!(!b.checked(0, true, 2, 3));
        assert!(b.checked(0, true, 2, 3), "back after three passes in a row");
        assert!(b.is_up(0, now));
        // Even a lone server is out while its checks fail.
        let mut lone = Balancer::new(Balance::RoundRobin, &[(1, false)], 1, SECS);
        lone.checked(0, false, 1, 1);
        assert_eq!(lone.pick(now, None, &[]), None);
    }

    #[test]
    fn a_lone_server_and_max_fails_zero_never_go_down() {
        let now = Instant::now();
        let mut b = Balancer::new(Balance::RoundRobin, &[(1, false)], 1, SECS);
        b.finished(0, now, Outcome::Failed);
        assert_eq!(b.pick(now, None, &[]), Some(0));
        let mut b = Balancer::new(Balance::RoundRobin, &[(1, false), (1, false)], 0, SECS);
        b.finished(0, now, Outcome::Failed);
        assert!(b.is_up(0, now));
    }

    #[test]
    fn backups_serve_only_when_no_primary_is_up() {
        let now = Instant::now();
        let mut b = Balancer::new(
            Balance::RoundRobin,
            &[(1, false), (1, false), (1, true)],
            1,
            SECS,
        );
        assert!(!picks(&mut b, 10, now).contains(&2));
        b.finished(0, now, Outcome::Failed);
        b.finished(1, now, Outcome::Failed);
        assert_eq!(picks(&mut b, 3, now), [2, 2, 2]);
        b.finished(2, now, Outcome::Failed);
        assert_eq!(b.pick(now, None, &[]), None, "all down: no live upstreams");
    }

    #[test]
    fn a_retry_never_goes_to_a_server_already_tried() {
        let now = Instant::now();
        let mut b = Balancer::new(Balance::RoundRobin, &[(1, false), (1, false)], 1, SECS);
        let first = b.pick(now, None, &[]).unwrap();
        let second = b.pick(now, None, &[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(b.pick(now, None, &[first, second]), None);
    }

    #[test]
    fn least_conn_prefers_the_least_busy_per_weight() {
        let now = Instant::now();
        let mut b = Balancer::new(
            Balance::LeastConn,
            &[(1, false), (1, false), (2, false)],
            1,
            SECS,
        );
        b.started(0);
        b.started(1);
        b.started(2);
        // 1/1, 1/1, 1/2: the weighted one is least loaded.
        assert_eq!(b.pick(now, None, &[]), Some(2));
        b.finished(1, now, Outcome::Answered(Duration::ZERO));
        assert_eq!(b.pick(now, None, &[]), Some(1));
    }

    #[test]
    fn p2c_avoids_the_slow_server() {
        let now = Instant::now();
        let mut b = Balancer::new(Balance::P2cEwma, &[(1, false), (1, false)], 1, SECS);
        b.started(0);
        b.finished(0, now, Outcome::Answered(Duration::from_millis(500)));
        b.started(1);
        b.finished(1, now, Outcome::Answered(Duration::from_millis(5)));
        let p = picks(&mut b, 50, now);
        assert!(p.iter().all(|&i| i == 1), "{p:?}");
        // Peak-EWMA: one slow answer counts at once.
        b.finished(1, now, Outcome::Answered(Duration::from_secs(2)));
        assert_eq!(b.pick(now, None, &[]), Some(0));
    }

    #[test]
    fn hashing_keeps_a_client_on_its_server() {
        let now = Instant::now();
        let mut b = Balancer::new(
            Balance::Hash,
            &[(1, false), (1, false), (1, false)],
            1,
            SECS,
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let home = b.pick(now, Some(ip), &[]).unwrap();
        assert!((0..20).all(|_| b.pick(now, Some(ip), &[]) == Some(home)));
        // Clients spread over the servers.
        let mut seen = [0; 3];
        for k in 0..300u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + k));
            seen[b.pick(now, Some(ip), &[]).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        // Its server down: the client moves, and comes back when it is up.
        b.finished(home, now, Outcome::Failed);
        let moved = b.pick(now, Some(ip), &[]).unwrap();
        assert_ne!(moved, home);
        assert_eq!(b.pick(now + SECS, Some(ip), &[]), Some(home));
    }
}
