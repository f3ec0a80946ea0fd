//! New TLS connections: TCP connect, a full TLS handshake (no resumption), one HTTP/1.1
//! `GET` with `Connection: close`, the response read until the server closes. The time of
//! each is from just before `connect` to the end of the response.
//!
//! Closed loop (`rate: None`): `concurrency` workers each start the next connection as soon as
//! the last one ended: the most connections per second the path sustains. Open loop (`rate`):
//! connections start at a fixed rate whether or not earlier ones ended, for latency at a
//! given load.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::{CpuMeter, connect_from, cpu_pct, own_cpu, percentile_ms};

#[derive(Debug, Clone)]
pub struct ConnsConfig {
    pub target: SocketAddr,
    pub sni: String,
    pub path: String,
    /// Source address of the connections.
    pub bind: IpAddr,
    pub tls: Arc<rustls::ClientConfig>,
    /// Closed loop: workers. Open loop: most connections in flight (more are counted as
    /// errors, not started).
    pub concurrency: usize,
    /// Open loop at this many connections per second.
    pub rate: Option<f64>,
    /// Not measured, before the window.
    pub warmup: Duration,
    pub duration: Duration,
    /// The proxy under test (empty: direct).
    pub proxy: CpuMeter,
    /// The backend (the SFU).
    pub backend: CpuMeter,
    pub timeout: Duration,
}

/// What one connection ended as.
struct Outcome {
    started: Instant,
    ended: Instant,
    error: Option<String>,
}

#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    completed: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    /// Counts outcomes that ended (closed loop) or started (open loop) inside the window.
    fn note(&mut self, o: Outcome, window: (Instant, Instant), by_start: bool) {
        let at = if by_start { o.started } else { o.ended };
        if at < window.0 || at >= window.1 {
            return;
        }
        match o.error {
            None => {
                self.completed += 1;
                self.latencies_ns
                    .push(o.ended.duration_since(o.started).as_nanos() as u64);
            }
            Some(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

async fn one(cfg: &ConnsConfig, connector: &TlsConnector, name: &ServerName<'static>) -> Outcome {
    let started = Instant::now();
    let result = tokio::time::timeout(cfg.timeout, exchange(cfg, connector, name)).await;
    let error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("timed out".into()),
    };
    Outcome {
        started,
        ended: Instant::now(),
        error,
    }
}

async fn exchange(
    cfg: &ConnsConfig,
    connector: &TlsConnector,
    name: &ServerName<'static>,
) -> Result<(), String> {
    let tcp = connect_from(cfg.bind, cfg.target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        cfg.path, cfg.sni
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::with_capacity(16);
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let want = 12usize.saturating_sub(head.len()).min(n);
                head.extend_from_slice(&buf[..want]);
            }
            // A server that closes without close_notify: the response is complete anyway.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if head.as_slice() != b"HTTP/1.1 200" {
        return Err(format!("response {:?}", String::from_utf8_lossy(&head)));
    }
    Ok(())
}

/// Runs the load and returns the report (JSON).
pub async fn run(cfg: ConnsConfig) -> anyhow::Result<Value> {
    let name = ServerName::try_from(cfg.sni.clone())?;
    let connector = TlsConnector::from(cfg.tls.clone());
    let begin = Instant::now();
    let window = (begin + cfg.warmup, begin + cfg.warmup + cfg.duration);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let cfg = Arc::new(cfg);

    // CPU readings at the window's edges.
    let meter = {
        let cfg = cfg.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(window.0.into()).await;
            let a = (cfg.proxy.read(), cfg.backend.read(), own_cpu());
            tokio::time::sleep_until(window.1.into()).await;
            let b = (cfg.proxy.read(), cfg.backend.read(), own_cpu());
            (
                cpu_pct(a.0, b.0),
                cpu_pct(a.1, b.1),
                cpu_pct(a.2, b.2),
                b.0.at.duration_since(a.0.at),
            )
        })
    };

    match cfg.rate {
        None => {
            let mut workers = Vec::new();
            for _ in 0..cfg.concurrency.max(1) {
                let (cfg, connector, name, tally) =
                    (cfg.clone(), connector.clone(), name.clone(), tally.clone());
                workers.push(tokio::spawn(async move {
                    while Instant::now() < window.1 {
                        let o = one(&cfg, &connector, &name).await;
                        tally.lock().unwrap().note(o, window, false);
                    }
                }));
            }
            for w in workers {
                w.await?;
            }
        }
        Some(rate) => {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency.max(1)));
            let mut i: u64 = 0;
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let due = begin + Duration::from_secs_f64(i as f64 / rate);
                if due >= window.1 {
                    break;
                }
                i += 1;
                tokio::time::sleep_until(due.into()).await;
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    let now = Instant::now();
                    tally.lock().unwrap().note(
                        Outcome {
                            started: now,
                            ended: now,
                            error: Some("too many in flight".into()),
                        },
                        window,
                        true,
                    );
                    continue;
                };
                let (cfg, connector, name, tally) =
                    (cfg.clone(), connector.clone(), name.clone(), tally.clone());
                tasks.spawn(async move {
                    let o = one(&cfg, &connector, &name).await;
                    drop(permit);
                    tally.lock().unwrap().note(o, window, true);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let (proxy_cpu, backend_cpu, own_cpu, measured) = meter.await?;
    let mut t = std::mem::take(&mut *tally.lock().unwrap());
    t.latencies_ns.sort_unstable();
    let secs = cfg.duration.as_secs_f64();
    let rate = t.completed as f64 / secs;
    let per_core = (!cfg.proxy.is_empty() && proxy_cpu > 0.5).then(|| rate * 100.0 / proxy_cpu);
    Ok(json!({
        "target": cfg.target.to_string(),
        "sni": cfg.sni,
        "mode": if cfg.rate.is_some() { "open" } else { "closed" },
        "offered_per_s": cfg.rate,
        "concurrency": cfg.concurrency,
        "seconds": secs,
        "cpu_window_s": measured.as_secs_f64(),
        "completed": t.completed,
        "errors": t.errors,
        "first_error": t.first_error,
        "conns_per_s": rate,
        "p50_ms": percentile_ms(&t.latencies_ns, 50.0),
        "p90_ms": percentile_ms(&t.latencies_ns, 90.0),
        "p99_ms": percentile_ms(&t.latencies_ns, 99.0),
        "max_ms": t.latencies_ns.last().map(|ns| *ns as f64 / 1e6),
        "proxy_cpu_pct": (!cfg.proxy.is_empty()).then_some(proxy_cpu),
        "conns_per_proxy_core": per_core,
        "backend_cpu_pct": (!cfg.backend.is_empty()).then_some(backend_cpu),
        "generator_cpu_pct": own_cpu,
    }))
}
