//! `deadsfu proxy`: command line and the assembly of the fronts.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use deadsfu_cluster::{JoinUrl, RedisConn, Role};

use crate::ftl_routes::{FtlRouteError, FtlRoutes};
use crate::https_front::{HttpsFront, HttpsFrontConfig, HttpsRefusal, HttpsStats};
use crate::pipe::Splice;
use crate::route_cache::{RouteCache, unix_ms};
use deadsfu_limits::{Admission, AdmissionLimits, Refusals};

#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// HTTPS (TLS passthrough by SNI) listen address.
    #[arg(
        long,
        env = "DEADSFU_PROXY_HTTPS_LISTEN",
        default_value = "0.0.0.0:443"
    )]
    pub https_listen: SocketAddr,
    /// Plain HTTP: ACME HTTP-01 answers and 308 to HTTPS; "" turns it off.
    #[arg(long, env = "DEADSFU_PROXY_HTTP_LISTEN", default_value = "0.0.0.0:80")]
    pub http_listen: String,
    /// FTL control listen address (OBS always uses 8084); "" turns FTL off.
    #[arg(long, env = "DEADSFU_PROXY_FTL_LISTEN", default_value = "0.0.0.0:8084")]
    pub ftl_listen: String,
    /// The proxy's one UDP port FTL clients send media to (0: ephemeral).
    #[arg(long, env = "DEADSFU_PROXY_FTL_UDP_PORT", default_value_t = 8084)]
    pub ftl_udp_port: u16,
    /// The cluster's public name: connections for it go to a chosen SFU.
    #[arg(long, env = "DEADSFU_SERVICE_DOMAIN")]
    pub service_domain: String,
    /// This proxy's region: SFUs of the same region are chosen first.
    #[arg(long, env = "DEADSFU_REGION", default_value = "default")]
    pub region: String,
    /// `/metrics`, `/healthz`, `/readyz`; "" turns it off.
    #[arg(
        long,
        env = "DEADSFU_PROXY_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_listen: String,
    /// Connections open at once, in all.
    #[arg(long, env = "DEADSFU_PROXY_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// Connections open at once from one client IP.
    #[arg(
        long,
        env = "DEADSFU_PROXY_MAX_CONNECTIONS_PER_IP",
        default_value_t = 256
    )]
    pub max_connections_per_ip: usize,
    /// New connections per second from one client IP (burst: twice this).
    #[arg(
        long,
        env = "DEADSFU_PROXY_NEW_CONNECTIONS_PER_IP",
        default_value_t = 50.0
    )]
    pub new_connections_per_ip: f64,
    /// Seconds a client has to send its whole ClientHello.
    #[arg(long, env = "DEADSFU_PROXY_HELLO_TIMEOUT", default_value_t = 5)]
    pub hello_timeout: u64,
    /// Source address of connections to SFUs (what their --proxy-protocol-from trusts);
    /// default: the kernel's choice.
    #[arg(long, env = "DEADSFU_PROXY_BACKEND_SOURCE")]
    pub backend_source: Option<std::net::IpAddr>,
    /// Seconds without a byte either way before a proxied connection is closed.
    #[arg(long, env = "DEADSFU_PROXY_IDLE_TIMEOUT", default_value_t = 300)]
    pub idle_timeout: u64,
    /// When a bulk transfer is spliced inside the kernel rather than copied: auto (when its
    /// destination is another host), always, never.
    #[arg(long, env = "DEADSFU_PROXY_SPLICE", value_enum, default_value_t = Splice::Auto)]
    pub splice: Splice,
}

/// FTL routing from the cached table and Redis (stream secrets are read per session).
struct ClusterFtlRoutes {
    cache: Arc<RouteCache>,
    redis: Arc<RedisConn>,
    region: String,
}

#[async_trait]
impl FtlRoutes for ClusterFtlRoutes {
    async fn channel_secret(&self, channel: u32) -> Result<Option<String>, FtlRouteError> {
        let key = self.redis.keys().ftl_key(&channel.to_string());
        let mut conn = self.redis.manager();
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(|e| FtlRouteError::Unavailable(e.to_string()))
    }

    fn sfu_for_channel(&self, channel: u32) -> Option<SocketAddr> {
        self.cache.table().ftl_target(
            &channel.to_string(),
            &self.region,
            unix_ms(),
            self.cache.redis_away(),
            &mut rand::rng(),
        )
    }
}

fn optional_addr(text: &str, flag: &str) -> anyhow::Result<Option<SocketAddr>> {
    match text.trim() {
        "" => Ok(None),
        a => Ok(Some(a.parse().with_context(|| format!("{flag} {a:?}"))?)),
    }
}

pub async fn run(
    args: ProxyArgs,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let url = JoinUrl::from_env()?
        .context("deadsfu proxy needs DEADSFU_CLUSTER_URL (a proxy bundle's URL)")?;
    let bundle = deadsfu_cluster::bundle_fetch::fetch_bundle(&url).await?;
    if bundle.settings.role != Role::Proxy && bundle.settings.role != Role::Admin {
        anyhow::bail!(
            "the bundle's role is {}; deadsfu proxy needs a proxy bundle",
            bundle.settings.role
        );
    }
    let routes = RouteCache::start(&bundle).await?;
    let redis = Arc::new(RedisConn::connect(&bundle).await?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let https = Arc::new(HttpsFront {
        config: HttpsFrontConfig {
            service_domain: args.service_domain.to_ascii_lowercase(),
            region: args.region.clone(),
            hello_timeout: Duration::from_secs(args.hello_timeout.max(1)),
            idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
            backend_source: args.backend_source,
            splice: args.splice,
            ..HttpsFrontConfig::default()
        },
        routes: routes.clone(),
        admission: Admission::new(AdmissionLimits {
            max_total: args.max_connections,
            max_per_ip: args.max_connections_per_ip,
            rate_per_ip: args.new_connections_per_ip,
            burst_per_ip: args.new_connections_per_ip * 2.0,
        }),
        stats: Arc::new(HttpsStats::default()),
        refusals: Refusals::new("https_proxy", crate::https_front::REFUSAL_LOG_INTERVAL),
    });
    let https_listener = tokio::net::TcpListener::bind(args.https_listen)
        .await
        .with_context(|| format!("binding --https-listen {}", args.https_listen))?;
    println!(
        "deadsfu proxy {} listening on {} (https)",
        env!("CARGO_PKG_VERSION"),
        https_listener.local_addr()?
    );
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(https.clone().run(https_listener, stopped())));

    if let Some(addr) = optional_addr(&args.http_listen, "--http-listen")? {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --http-listen {addr}"))?;
        println!("  http (ACME HTTP-01, 308 to https): {}", l.local_addr()?);
        let redis = redis.clone();
        tasks.push(tokio::spawn(crate::http_front::serve_http1(
            l,
            move |req| crate::http_front::port80(Some(redis.clone()), req),
            stopped(),
        )));
    }

    let ftl_routes: Arc<dyn FtlRoutes> = Arc::new(ClusterFtlRoutes {
        cache: routes.clone(),
        redis: redis.clone(),
        region: args.region.clone(),
    });
    let ftl = crate::ftl_wiring::start(&args, ftl_routes, stopped()).await?;

    if let Some(addr) = optional_addr(&args.admin_listen, "--admin-listen")? {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --admin-listen {addr}"))?;
        println!("  admin (/metrics, /healthz, /readyz): {}", l.local_addr()?);
        let https = https.clone();
        let routes = routes.clone();
        let ftl_metrics = ftl.clone();
        tasks.push(tokio::spawn(crate::http_front::serve_http1(
            l,
            move |req| {
                let https = https.clone();
                let routes = routes.clone();
                let ftl_metrics = ftl_metrics.clone();
                async move {
                    crate::http_front::admin(
                        &req,
                        || metrics(&https, &routes, ftl_metrics.as_deref()),
                        || routes.table().has_live_node(unix_ms(), routes.redis_away()),
                    )
                }
            },
            stopped(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

fn metrics(
    https: &HttpsFront,
    routes: &RouteCache,
    ftl: Option<&(dyn Fn(&mut String) + Send + Sync)>,
) -> String {
    let mut out = String::new();
    let s = &https.stats;
    let r = &https.refusals;
    let mut counter = |name: &str, help: &str, labels: &str, value: u64| {
        let _ = writeln!(out, "# HELP deadsfu_proxy_{name} {help}");
        let _ = writeln!(out, "# TYPE deadsfu_proxy_{name} counter");
        let _ = writeln!(out, "deadsfu_proxy_{name}{labels} {value}");
    };
    counter(
        "https_accepted_total",
        "HTTPS connections accepted",
        "",
        s.accepted.load(Relaxed),
    );
    counter(
        "https_routed_total",
        "HTTPS connections passed to an SFU",
        "",
        s.routed.load(Relaxed),
    );
    counter(
        "https_hello_rejected_total",
        "Connections whose ClientHello was refused",
        "",
        s.hello_rejected.load(Relaxed),
    );
    counter(
        "https_hello_timeouts_total",
        "Connections that sent no whole ClientHello in time",
        "",
        s.hello_timeouts.load(Relaxed),
    );
    counter(
        "https_unknown_name_total",
        "Connections for a name no node serves",
        "",
        s.unknown_name.load(Relaxed),
    );
    counter(
        "https_backend_failures_total",
        "Connections whose SFU could not be reached",
        "",
        s.backend_failed.load(Relaxed),
    );
    counter(
        "https_refused_total",
        "Connections refused by a limit",
        "{limit=\"total\"}",
        r.count(HttpsRefusal::Total),
    );
    counter(
        "https_refused_total",
        "Connections refused by a limit",
        "{limit=\"per_ip\"}",
        r.count(HttpsRefusal::PerIp),
    );
    counter(
        "https_refused_total",
        "Connections refused by a limit",
        "{limit=\"rate\"}",
        r.count(HttpsRefusal::Rate),
    );
    counter(
        "https_bytes_total",
        "Bytes relayed",
        "{direction=\"to_sfu\"}",
        s.bytes.to_backend.load(Relaxed),
    );
    counter(
        "https_bytes_total",
        "Bytes relayed",
        "{direction=\"to_client\"}",
        s.bytes.to_client.load(Relaxed),
    );
    counter(
        "https_spliced_bytes_total",
        "Of the bytes relayed, those moved by splice inside the kernel",
        "",
        s.bytes.spliced.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP deadsfu_proxy_connections Open HTTPS connections"
    );
    let _ = writeln!(out, "# TYPE deadsfu_proxy_connections gauge");
    let _ = writeln!(out, "deadsfu_proxy_connections {}", https.admission.open());
    let table = routes.table();
    let _ = writeln!(out, "# HELP deadsfu_proxy_nodes Nodes in the routing table");
    let _ = writeln!(out, "# TYPE deadsfu_proxy_nodes gauge");
    let _ = writeln!(out, "deadsfu_proxy_nodes {}", table.nodes.len());
    let _ = writeln!(
        out,
        "# HELP deadsfu_proxy_redis_reachable 1 while Redis answers"
    );
    let _ = writeln!(out, "# TYPE deadsfu_proxy_redis_reachable gauge");
    let _ = writeln!(
        out,
        "deadsfu_proxy_redis_reachable {}",
        u8::from(!routes.redis_away())
    );
    if let Some(f) = ftl {
        f(&mut out);
    }
    out
}
