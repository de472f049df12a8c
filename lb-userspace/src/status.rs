//! The live status page: the master samples every cell's counters once a second and keeps a
//! minute of history, so `/status.json` can give request rates and p50/p99 of the last minute
//! per cell, and `/status` draws them (one self-contained page, refreshing itself).
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Serialize;

use crate::master::Shared;
use crate::metrics::{BOUNDS_NS, CLASSES, HIST_LEN, METHODS, ROUTE_SLOTS, route_slot, slot};

/// Seconds of history kept (the window of the page's latency numbers and sparklines).
pub const WINDOW: usize = 60;

/// One cell's cumulative numbers at one instant.
#[derive(Clone, Default)]
struct CellSample {
    requests: u64,
    /// Request-duration buckets summed over routes, methods and classes (last: +Inf).
    buckets: [u64; HIST_LEN - 1],
    steered: u64,
}

#[derive(Default)]
pub struct History {
    /// Oldest first; one entry per second.
    samples: VecDeque<Vec<CellSample>>,
}

fn sample_cell(shared: &Shared, cell: usize, steered: u64) -> CellSample {
    let c = shared.metrics.cell(cell);
    let mut s = CellSample {
        requests: c.get(slot::REQUESTS),
        steered,
        ..Default::default()
    };
    let routes = shared.routes.borrow().len().min(ROUTE_SLOTS - 1);
    for r in 0..=routes {
        let block = c.route(r);
        for h in 0..METHODS.len() * CLASSES.len() {
            let at = route_slot::REQUEST_HIST + h * HIST_LEN;
            for (k, b) in s.buckets.iter_mut().enumerate() {
                *b += block[at + k].load(Relaxed);
            }
        }
    }
    s
}

/// Samples every second, forever (spawned by the master next to the admin endpoint).
pub async fn sample(shared: Rc<Shared>, history: Rc<RefCell<History>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let cells = shared.cells();
        let steering = shared.steering.borrow().as_ref().map(|s| s.snapshot(cells));
        let row: Vec<CellSample> = (0..cells)
            .map(|i| {
                let steered = steering
                    .as_ref()
                    .and_then(|s| s.per_cell.get(i))
                    .map_or(0, |r| r.iter().sum());
                sample_cell(&shared, i, steered)
            })
            .collect();
        let mut h = history.borrow_mut();
        h.samples.push_back(row);
        while h.samples.len() > WINDOW + 1 {
            h.samples.pop_front();
        }
    }
}

/// The `q` quantile (0..1) of a histogram given per-bucket counts, interpolated linearly inside
/// its bucket like Prometheus' histogram_quantile. None without observations.
pub fn quantile(buckets: &[u64; HIST_LEN - 1], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        if *n > 0 && (seen + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { BOUNDS_NS[i - 1] as f64 };
            // The +Inf bucket reports its lower bound, as Prometheus does.
            let Some(&upper) = BOUNDS_NS.get(i) else {
                return Some(lower / 1e9);
            };
            let frac = (rank - seen as f64) / *n as f64;
            return Some((lower + (upper as f64 - lower) * frac) / 1e9);
        }
        seen += n;
    }
    Some(BOUNDS_NS[BOUNDS_NS.len() - 1] as f64 / 1e9)
}

#[derive(Serialize)]
pub struct CellStatus {
    pub cell: usize,
    pub up: bool,
    pub pid: u64,
    /// Requests per second over the last second.
    pub rps: f64,
    /// Requests per second, one value per second of the window (oldest first).
    pub rps_history: Vec<f64>,
    pub connections_active: u64,
    pub wsgi_queue_depth: u64,
    pub wsgi_threads_busy: u64,
    pub wsgi_threads: u64,
    /// Request-duration quantiles over the window, in milliseconds.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// New connections the steering program sent to this cell over the window.
    pub steered: u64,
    pub rss_bytes: Option<u64>,
}

#[derive(Serialize)]
pub struct XdpStatus {
    pub interface: String,
    pub mode: &'static str,
    pub packets: Vec<(&'static str, u64)>,
}

#[derive(Serialize)]
pub struct Status {
    pub version: &'static str,
    pub window_seconds: usize,
    pub ebpf_enabled: bool,
    /// The steering policy (`kernel` when no program is attached).
    pub steering_policy: &'static str,
    /// Steering decisions by result, since start.
    pub steering: Vec<(&'static str, u64)>,
    /// XDP guard: interface and mode, and packets by action since start.
    pub xdp: Option<XdpStatus>,
    pub cells: Vec<CellStatus>,
}

pub fn status(shared: &Shared, history: &History) -> Status {
    let s = &history.samples;
    let procs = crate::admin::proc_snapshot(shared);
    let cells = (0..shared.cells())
        .map(|i| {
            let c = shared.metrics.cell(i);
            let at = |k: usize| s.get(k).and_then(|row| row.get(i));
            let (first, last) = (at(0), s.len().checked_sub(1).and_then(at));
            let prev = s.len().checked_sub(2).and_then(at);
            let rps = match (prev, last) {
                (Some(a), Some(b)) => b.requests.saturating_sub(a.requests) as f64,
                _ => 0.0,
            };
            let rps_history = (1..s.len())
                .filter_map(|k| Some(at(k)?.requests.saturating_sub(at(k - 1)?.requests) as f64))
                .collect();
            let window = match (first, last) {
                (Some(a), Some(b)) => {
                    let mut d = [0u64; HIST_LEN - 1];
                    for (k, v) in d.iter_mut().enumerate() {
                        *v = b.buckets[k].saturating_sub(a.buckets[k]);
                    }
                    d
                }
                _ => [0; HIST_LEN - 1],
            };
            CellStatus {
                cell: i,
                up: c.get(slot::UP) == 1,
                pid: c.get(slot::PID),
                rps,
                rps_history,
                connections_active: c.get(slot::CONNECTIONS_ACTIVE),
                wsgi_queue_depth: c.get(slot::WSGI_QUEUE_DEPTH),
                wsgi_threads_busy: c.get(slot::WSGI_THREADS_BUSY),
                wsgi_threads: c.get(slot::WSGI_THREADS),
                p50_ms: quantile(&window, 0.5).map(|v| v * 1e3),
                p99_ms: quantile(&window, 0.99).map(|v| v * 1e3),
                steered: match (first, last) {
                    (Some(a), Some(b)) => b.steered.saturating_sub(a.steered),
                    _ => 0,
                },
                rss_bytes: procs.cells.get(i).copied().flatten().map(|(rss, _)| rss),
            }
        })
        .collect();
    // Counters only: the map sizes /metrics also reads are not shown here.
    let snap = shared
        .steering
        .borrow()
        .as_ref()
        .map(|s| s.snapshot(shared.cells()));
    let mut steering: Vec<(&'static str, u64)> = Vec::new();
    if let Some(snap) = &snap {
        for (k, l) in lb_common::steering::LABELS.iter().enumerate() {
            steering.push((l, snap.per_cell.iter().map(|r| r[k]).sum()));
        }
        steering.push(("no_live_cell", snap.no_live_cell));
    }
    let xdp = shared.xdp.borrow().as_ref().map(|x| {
        let counts = x.snapshot();
        XdpStatus {
            interface: x.interface().to_string(),
            mode: x.mode(),
            packets: lb_common::xdp::LABELS
                .iter()
                .enumerate()
                .map(|(a, l)| (*l, counts.packets[a]))
                .collect(),
        }
    });
    Status {
        version: env!("CARGO_PKG_VERSION"),
        window_seconds: WINDOW,
        ebpf_enabled: snap.is_some() || xdp.is_some(),
        steering_policy: shared.policy,
        steering,
        xdp,
        cells,
    }
}

/// The page: no external assets; it polls /status.json every second and redraws.
pub const PAGE: &str = r###"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Portico status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em;margin:0 0 .3em} .muted{color:#777}
table{border-collapse:collapse;margin-top:1em;background:#fff}
th,td{padding:.35em .7em;border-bottom:1px solid #e5e5e5;text-align:right;white-space:nowrap}
th{background:#f0f0f0;font-weight:600} td.l,th.l{text-align:left}
.bar{display:inline-block;height:.8em;background:#4a7bd0;vertical-align:middle;min-width:1px}
.down{color:#b00020;font-weight:600} svg{vertical-align:middle}
</style></head><body>
<h1>Portico <span id="version" class="muted"></span></h1>
<div id="summary" class="muted">loading…</div>
<table id="cells"><thead><tr>
<th class="l">cell</th><th>req/s</th><th class="l">last minute</th><th>p50 ms</th><th>p99 ms</th>
<th>connections</th><th>queue</th><th>busy threads</th><th>steered (1 min)</th><th>RSS MiB</th>
</tr></thead><tbody></tbody></table>
<div id="steering" class="muted" style="margin-top:1em"></div>
<div id="xdp" class="muted" style="margin-top:.4em"></div>
<script>
function spark(values){
  const w=120,h=24,max=Math.max(1,...values);
  const pts=values.map((v,i)=>`${(i/(Math.max(1,values.length-1))*w).toFixed(1)},${(h-v/max*h).toFixed(1)}`).join(' ');
  return `<svg width="${w}" height="${h}" role="img" aria-label="requests per second"><polyline fill="none" stroke="#4a7bd0" stroke-width="1.5" points="${pts}"/></svg>`;
}
function fmt(v,d){return v==null?'–':v.toFixed(d)}
async function refresh(){
  try{
    const s=await (await fetch('status.json',{cache:'no-store'})).json();
    document.getElementById('version').textContent='v'+s.version;
    const total=s.cells.reduce((a,c)=>a+c.rps,0);
    const up=s.cells.filter(c=>c.up).length;
    document.getElementById('summary').textContent=
      `${up}/${s.cells.length} cells up · ${total.toFixed(0)} req/s · eBPF steering ${s.ebpf_enabled?s.steering_policy:'off'} · updated ${new Date().toLocaleTimeString()}`;
    const maxRps=Math.max(1,...s.cells.map(c=>c.rps));
    const rows=s.cells.map(c=>`<tr data-cell="${c.cell}">
      <td class="l">${c.cell}${c.up?'':' <span class="down">down</span>'}</td>
      <td><span class="bar" style="width:${(c.rps/maxRps*80).toFixed(0)}px"></span> ${c.rps.toFixed(0)}</td>
      <td class="l">${spark(c.rps_history)}</td>
      <td>${fmt(c.p50_ms,2)}</td><td>${fmt(c.p99_ms,2)}</td>
      <td>${c.connections_active}</td><td>${c.wsgi_queue_depth}</td>
      <td>${c.wsgi_threads?c.wsgi_threads_busy+'/'+c.wsgi_threads:'–'}</td>
      <td>${c.steered}</td><td>${c.rss_bytes==null?'–':(c.rss_bytes/1048576).toFixed(1)}</td></tr>`).join('');
    document.querySelector('#cells tbody').innerHTML=rows;
    document.getElementById('steering').textContent=s.steering.length?
      'steering decisions: '+s.steering.map(([k,v])=>`${k} ${v}`).join(' · '):'';
    document.getElementById('xdp').innerHTML=s.xdp?
      `XDP guard on ${s.xdp.interface} (${s.xdp.mode}): `+s.xdp.packets.map(([k,v])=>
        `${k} ${v} <span class="bar" style="width:${Math.min(80,Math.log10(1+v)*10).toFixed(0)}px"></span>`).join(' · '):'XDP guard off';
    document.body.dataset.refreshes=String(Number(document.body.dataset.refreshes||0)+1);
  }catch(e){document.getElementById('summary').textContent='status unavailable: '+e}
}
refresh();setInterval(refresh,1000);
</script></body></html>
"###;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let mut b = [0u64; HIST_LEN - 1];
        assert_eq!(quantile(&b, 0.5), None);
        // 100 observations in (100 us, 250 us].
        b[1] = 100;
        let p50 = quantile(&b, 0.5).unwrap();
        assert!((p50 - 0.000175).abs() < 1e-9, "{p50}");
        // One slow outlier above 10 s lands in +Inf: p99 stays in the fast bucket.
        b[HIST_LEN - 2] = 1;
        assert!(quantile(&b, 0.99).unwrap() < 0.00025);
        assert_eq!(quantile(&b, 1.0).unwrap(), 10.0);
    }
}
