//! The performance targets of issues 12 (proxy), 13 (ASGI) and 15 (static, WSGI), judged on the
//! medians of one run: Portico's rate over the peer's, and where the issue asks, CPU per
//! request and p99 too.

use serde::{Deserialize, Serialize};

use super::results::{Results, Scenario, ServerRuns};

/// Who Portico is measured against.
#[derive(Clone, Copy, Debug)]
enum Peer {
    Named(&'static str),
    /// The peer with the highest rate in the same scenario.
    Best,
}

/// Portico's CPU per request against the peer's.
#[derive(Clone, Copy, Debug)]
enum Cpu {
    AtMost(f64),
    Below,
}

#[derive(Clone, Copy, Debug)]
struct Target {
    family: &'static str,
    scenario: &'static str,
    peer: Peer,
    min_ratio: f64,
    cpu: Option<Cpu>,
    p99_no_worse: bool,
    /// A bound on one of Portico's own figures (a round's `extra`), not a ratio: (name, max).
    at_most: Option<(&'static str, f64)>,
    source: &'static str,
}

const fn t(family: &'static str, scenario: &'static str, peer: &'static str, min: f64) -> Target {
    Target {
        family,
        scenario,
        peer: Peer::Named(peer),
        min_ratio: min,
        cpu: None,
        p99_no_worse: false,
        at_most: None,
        source: "issue 15",
    }
}

/// Issue 15's memory target: Portico's bytes per idle connection, nginx beside for scale.
const fn idle(scenario: &'static str) -> Target {
    Target {
        family: "idle",
        scenario,
        peer: Peer::Named("nginx"),
        min_ratio: 0.0,
        cpu: None,
        p99_no_worse: false,
        at_most: Some((super::idle::PER_CONN, 4096.0)),
        source: "issue 15",
    }
}

const fn cpu(mut target: Target, rule: Cpu) -> Target {
    target.cpu = Some(rule);
    target
}

const fn from(mut target: Target, source: &'static str) -> Target {
    target.source = source;
    target
}

const fn asgi(scenario: &'static str) -> Target {
    Target {
        family: "asgi",
        scenario,
        peer: Peer::Best,
        min_ratio: 1.2,
        cpu: None,
        p99_no_worse: true,
        at_most: None,
        source: "issue 13",
    }
}

const TARGETS: &[Target] = &[
    cpu(t("static", "1k", "nginx", 1.3), Cpu::AtMost(0.75)),
    cpu(t("static", "64k", "nginx", 1.2), Cpu::Below),
    cpu(t("static", "1m", "nginx", 1.2), Cpu::Below),
    t("static", "1k-new-conn", "nginx", 1.2),
    cpu(t("wsgi", "hello", "bjoern", 1.0), Cpu::AtMost(1.0)),
    t("wsgi", "hello-new-conn", "bjoern", 1.0),
    t("wsgi", "post-echo", "bjoern", 1.0),
    t("wsgi", "flask-json", "granian", 1.3),
    from(cpu(t("proxy", "1k", "nginx", 1.2), Cpu::Below), "issue 12"),
    from(
        cpu(t("proxy", "1k-new-conn", "nginx", 1.2), Cpu::Below),
        "issue 12",
    ),
    from(t("proxy", "1m", "nginx", 1.0), "issue 12"),
    from(t("proxy", "ws-64", "nginx", 1.0), "issue 12"),
    from(t("tls", "full-ecdsa", "nginx", 1.2), "issue 16"),
    from(t("tls", "full-rsa", "nginx", 1.2), "issue 16"),
    from(t("tls", "resumed-ecdsa", "nginx", 1.2), "issue 16"),
    from(t("tls", "resumed-rsa", "nginx", 1.2), "issue 16"),
    from(t("tls", "1k-tls", "nginx", 1.0), "issue 16"),
    from(t("tls", "1k-h2", "nginx", 1.0), "issue 16"),
    from(t("tls", "1m-tls", "nginx", 1.0), "issue 16"),
    asgi("hello"),
    asgi("hello-new-conn"),
    asgi("ws-64"),
    asgi("ws-4k"),
    asgi("starlette-json"),
    idle("10k"),
    idle("100k"),
];

/// One target judged on one run.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Verdict {
    pub family: String,
    pub scenario: String,
    pub label: String,
    pub peer: String,
    /// The target in words, e.g. ">= 1.3x nginx, CPU/req <= 0.75x".
    pub want: String,
    pub ratio: Option<f64>,
    pub cpu_ratio: Option<f64>,
    pub p99_ms: Option<(f64, f64)>,
    /// None when Portico or the peer has no figure in this run.
    pub met: Option<bool>,
    pub source: String,
}

/// Every target whose scenario ran.
pub fn judge(results: &Results) -> Vec<Verdict> {
    let mut out = Vec::new();
    for target in TARGETS {
        let Some(sc) = results
            .families
            .iter()
            .filter(|f| f.family == target.family)
            .flat_map(|f| &f.scenarios)
            .find(|s| s.id == target.scenario)
        else {
            continue;
        };
        out.push(verdict(target, sc));
    }
    out
}

fn med(s: &ServerRuns, f: impl Fn(&super::results::Round) -> f64) -> Option<f64> {
    s.stat(f).map(|x| x.median)
}

fn verdict(target: &Target, sc: &Scenario) -> Verdict {
    let ours = sc.server("portico").filter(|s| !s.rounds.is_empty());
    let peer = match target.peer {
        Peer::Named(n) => sc.server(n).filter(|s| !s.rounds.is_empty()),
        Peer::Best => sc
            .servers
            .iter()
            .filter(|s| s.server != "portico" && !s.rounds.is_empty())
            .max_by(|a, b| {
                let rate = |s: &ServerRuns| med(s, |r| r.rate).unwrap_or(0.0);
                rate(a).total_cmp(&rate(b))
            }),
    };
    let peer_name = match (target.peer, peer) {
        (_, Some(p)) => p.server.clone(),
        (Peer::Named(n), None) => n.to_string(),
        (Peer::Best, None) => "best peer".to_string(),
    };
    let mut want = match target.at_most {
        Some((name, max)) => format!("{name} <= {max:.0} ({peer_name} beside)"),
        None => format!(">= {:.1}x {peer_name}", target.min_ratio),
    };
    match target.cpu {
        Some(Cpu::AtMost(x)) => want.push_str(&format!(", CPU/req <= {x:.2}x")),
        Some(Cpu::Below) => want.push_str(", CPU/req below"),
        None => {}
    }
    if target.p99_no_worse {
        want.push_str(", p99 no worse");
    }
    let mut v = Verdict {
        family: target.family.to_string(),
        scenario: target.scenario.to_string(),
        label: sc.label.clone(),
        peer: peer_name,
        want,
        ratio: None,
        cpu_ratio: None,
        p99_ms: None,
        met: None,
        source: target.source.to_string(),
    };
    if let Some((name, max)) = target.at_most {
        let figure = |s: Option<&ServerRuns>| {
            s.and_then(|s| med(s, |r| r.extra.get(name).copied().unwrap_or(f64::NAN)))
        };
        let (o, p) = (figure(ours), figure(peer));
        v.want = format!(
            "{name} <= {max:.0} (portico {}, {} {})",
            o.map_or("-".into(), |x| format!("{x:.0}")),
            v.peer,
            p.map_or("-".into(), |x| format!("{x:.0}"))
        );
        v.met = o.map(|x| x <= max);
        return v;
    }
    let (Some(o), Some(p)) = (ours, peer) else {
        return v;
    };
    let ratio = med(o, |r| r.rate)
        .zip(med(p, |r| r.rate))
        .map(|(a, b)| a / b);
    let cpu_ratio = med(o, |r| r.cpu_us)
        .zip(med(p, |r| r.cpu_us))
        .map(|(a, b)| a / b);
    let p99 = med(o, |r| r.latency(99.0)).zip(med(p, |r| r.latency(99.0)));
    v.ratio = ratio;
    v.cpu_ratio = cpu_ratio;
    v.p99_ms = p99;
    v.met = ratio.map(|r| {
        let cpu_ok = match (target.cpu, cpu_ratio) {
            (None, _) => true,
            (Some(Cpu::AtMost(x)), Some(c)) => c <= x,
            (Some(Cpu::Below), Some(c)) => c < 1.0,
            (Some(_), None) => false,
        };
        let p99_ok = !target.p99_no_worse || p99.is_some_and(|(a, b)| a <= b);
        r >= target.min_ratio && cpu_ok && p99_ok
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::results::{Percentile, Round};

    fn runs(name: &str, rate: f64, cpu: f64, p99: f64) -> ServerRuns {
        ServerRuns {
            server: name.into(),
            rounds: vec![Round {
                rate,
                cpu_us: cpu,
                latency_ms: vec![Percentile { p: 99.0, ms: p99 }],
                ..Round::default()
            }],
            failed: None,
        }
    }

    fn scenario(servers: Vec<ServerRuns>) -> Scenario {
        Scenario {
            id: "1k".into(),
            label: "1 KiB".into(),
            unit: "req".into(),
            conns: 1,
            servers,
        }
    }

    #[test]
    fn rate_and_cpu_both_judge() {
        let target = cpu(t("static", "1k", "nginx", 1.3), Cpu::AtMost(0.75));
        let fast_but_costly = scenario(vec![
            runs("portico", 140.0, 10.0, 1.0),
            runs("nginx", 100.0, 12.0, 1.0),
        ]);
        let v = verdict(&target, &fast_but_costly);
        assert_eq!(v.met, Some(false));
        assert!((v.ratio.unwrap() - 1.4).abs() < 1e-9);
        let both = scenario(vec![
            runs("portico", 140.0, 7.0, 1.0),
            runs("nginx", 100.0, 12.0, 1.0),
        ]);
        assert_eq!(verdict(&target, &both).met, Some(true));
    }

    #[test]
    fn best_peer_and_p99() {
        let target = asgi("1k");
        let sc = scenario(vec![
            runs("portico", 130.0, 1.0, 2.0),
            runs("granian", 100.0, 1.0, 1.5),
            runs("daphne", 10.0, 1.0, 9.0),
        ]);
        let v = verdict(&target, &sc);
        assert_eq!(v.peer, "granian");
        assert_eq!(v.met, Some(false), "p99 worse than granian's");
    }

    #[test]
    fn idle_memory_is_judged_on_portico_alone() {
        let target = idle("10k");
        let with = |bytes: f64| {
            let mut r = runs("portico", 1.0, 1.0, 1.0);
            r.rounds[0]
                .extra
                .insert(crate::bench::idle::PER_CONN.into(), bytes);
            r
        };
        let mut nginx = runs("nginx", 1.0, 1.0, 1.0);
        nginx.rounds[0]
            .extra
            .insert(crate::bench::idle::PER_CONN.into(), 600.0);
        let v = verdict(&target, &scenario(vec![with(1900.0), nginx.clone()]));
        assert_eq!(v.met, Some(true));
        assert!(v.want.contains("portico 1900, nginx 600"), "{}", v.want);
        let v = verdict(&target, &scenario(vec![with(12_600.0), nginx]));
        assert_eq!(v.met, Some(false));
        // No Portico figure: not judged.
        let v = verdict(&target, &scenario(vec![runs("portico", 1.0, 1.0, 1.0)]));
        assert_eq!(v.met, None);
    }

    #[test]
    fn missing_peer_is_not_judged() {
        let target = t("static", "1k", "nginx", 1.3);
        let sc = scenario(vec![runs("portico", 1.0, 1.0, 1.0)]);
        assert_eq!(verdict(&target, &sc).met, None);
    }
}
