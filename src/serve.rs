//! `deadsfu serve`: a standalone SFU node.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use deadsfu_rtc::{EngineConfig, MediaEngine};
use deadsfu_server::AppState;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Plain-HTTP listen address; "" turns plain HTTP off. With HTTPS on, it redirects pages
    /// to HTTPS and answers ACME HTTP-01.
    #[arg(long = "http", env = "DEADSFU_HTTP", default_value = "0.0.0.0:8080")]
    pub http: String,
    /// HTTPS listen address, e.g. 0.0.0.0:443 (certificates from --tls-cert, ACME, or the
    /// cluster's store).
    #[arg(long = "https", env = "DEADSFU_HTTPS")]
    pub https: Option<SocketAddr>,
    #[command(flatten)]
    pub tls: deadsfu_node::HttpsArgs,
    /// First UDP media port; worker N uses PORT+N (0: ephemeral ports).
    #[arg(long, env = "DEADSFU_UDP_PORT", default_value_t = 8000)]
    pub udp_port: u16,
    /// Media worker threads (default: number of cores).
    #[arg(long, env = "DEADSFU_WORKERS")]
    pub workers: Option<usize>,
    /// Address to advertise as an ICE host candidate (repeatable; default: the machine's
    /// non-loopback interface addresses).
    #[arg(
        long = "ice-candidate-host",
        env = "DEADSFU_ICE_CANDIDATE_HOST",
        value_delimiter = ','
    )]
    pub ice_candidate_host: Vec<IpAddr>,
    /// When set, publishing and viewing both require this bearer token (see --publish-token
    /// and --view-token to tell them apart).
    #[arg(long, env = "DEADSFU_BEARER_TOKEN", hide_env_values = true)]
    pub bearer_token: Option<String>,
    /// Token required to publish (WHIP, FTL keys aside); overrides --bearer-token for it.
    #[arg(long, env = "DEADSFU_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,
    /// Token required to view (WHEP, the room list); overrides --bearer-token for it.
    #[arg(long, env = "DEADSFU_VIEW_TOKEN", hide_env_values = true)]
    pub view_token: Option<String>,
    /// STUN server URL advertised to clients (repeatable), e.g. stun:stun.example.net:3478.
    #[arg(
        long = "stun-server",
        env = "DEADSFU_STUN_SERVER",
        value_delimiter = ','
    )]
    pub stun_server: Vec<String>,
    /// ICE server URL (stun: or turn:) advertised to clients (repeatable).
    #[arg(long = "ice-server", env = "DEADSFU_ICE_SERVER", value_delimiter = ',')]
    pub ice_server: Vec<String>,
    /// Web pages: `internal` (built in), `none`, or a directory to serve them from.
    #[arg(long, env = "DEADSFU_HTML", default_value = "internal")]
    pub html: deadsfu_server::HtmlSource,
    /// Start new viewers from the room's current GOP (instant start); `false` makes them wait
    /// for the publisher's next keyframe.
    #[arg(long, env = "DEADSFU_GOP_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub gop_cache: bool,
    /// "No signal" clip looped to viewers of rooms nobody publishes to: `builtin`, `none`, or
    /// an H264 Annex-B file (one slice per frame, starting with a keyframe) played at 10 fps.
    #[arg(long, env = "DEADSFU_IDLE_CLIP", default_value = "builtin")]
    pub idle_clip: String,
    /// Seconds without any packet from a connected peer (ICE consent, RTCP, media) before its
    /// session is ended and its resources freed.
    #[arg(long, env = "DEADSFU_IDLE_TIMEOUT", default_value_t = 15)]
    pub idle_timeout: u64,
    /// Sessions in all, connected or not; beyond, new ones get 503 (default: sized from the
    /// memory available).
    #[arg(long, env = "DEADSFU_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Sessions not yet connected (ICE and DTLS under way), in all; beyond, 503.
    #[arg(long, env = "DEADSFU_MAX_PENDING_SESSIONS")]
    pub max_pending_sessions: Option<usize>,
    /// Sessions not yet connected from one client address (IPv6: its /64); beyond, 429.
    #[arg(long, env = "DEADSFU_MAX_PENDING_PER_IP", default_value_t = 20)]
    pub max_pending_per_ip: usize,
    /// New sessions per second from one client address (bursts of 2.5 times as many); beyond,
    /// 429.
    #[arg(long, env = "DEADSFU_NEW_SESSIONS_PER_IP", default_value_t = 20.0)]
    pub new_sessions_per_ip: f64,
    /// Seconds a new session has to connect (ICE and DTLS) before it is dropped.
    #[arg(long, env = "DEADSFU_CONNECT_TIMEOUT", default_value_t = 10)]
    pub connect_timeout: u64,
    #[command(flatten)]
    pub ftl: deadsfu_node::FtlArgs,
    /// Cluster identity (used when DEADSFU_CLUSTER_URL puts the node in cluster mode).
    #[command(flatten)]
    pub node: deadsfu_cluster::NodeArgs,
    /// Connections from these sources (CIDR, repeatable) must start with a PROXY protocol v2
    /// header, whose source address then stands for the client; others may not send one.
    #[arg(
        long = "proxy-protocol-from",
        env = "DEADSFU_PROXY_PROTOCOL_FROM",
        value_delimiter = ','
    )]
    pub proxy_protocol_from: Vec<deadsfu_server::Cidr>,
    /// Cluster mode: on SIGTERM, keep live sessions this many seconds (or until they end)
    /// while routing sends new ones elsewhere; 0 stops at once.
    #[arg(long, env = "DEADSFU_DRAIN_TIMEOUT", default_value_t = 0)]
    pub drain_timeout: u64,
    /// Cluster mode: the one public name of the cluster (e.g. deadsfu.com). A session request
    /// for it is sent with 307 to the node that serves the room.
    #[arg(long, env = "DEADSFU_SERVICE_DOMAIN")]
    pub service_domain: Option<String>,
    /// Cluster mode: this node's own base URL as clients reach it (default
    /// https://{hostname}:{https port}, without :443).
    #[arg(long, env = "DEADSFU_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Most open HTTP(S) connections over all listeners; more are closed at once
    /// (default: half the open-file limit, at most 65536).
    #[arg(long, env = "DEADSFU_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open HTTP(S) connections per client IP (IPv6: per /64; behind a trusted proxy, the
    /// PROXY v2 source).
    #[arg(long, env = "DEADSFU_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// Most open /api/rooms/events streams (503 beyond).
    #[arg(long, env = "DEADSFU_MAX_EVENT_STREAMS", default_value_t = 4096)]
    pub max_event_streams: usize,
    /// Most open /api/rooms/events streams per client IP (429 beyond).
    #[arg(long, env = "DEADSFU_MAX_EVENT_STREAMS_PER_IP", default_value_t = 32)]
    pub max_event_streams_per_ip: usize,
    /// Seconds a client has to send a request's headers (the first one counted from the
    /// connection's start).
    #[arg(long, env = "DEADSFU_HEADER_TIMEOUT", default_value_t = 10)]
    pub header_timeout: u64,
    /// Log format; filter with RUST_LOG (e.g. RUST_LOG=deadsfu=debug).
    #[arg(long, env = "DEADSFU_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
}

pub fn init_logging(format: LogFormat) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Logs go to stderr (stdout carries the start-up banner); colours only on a terminal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

/// Non-loopback addresses of this machine's interfaces: the default ICE host candidates.
fn interface_addresses() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .map(|i| i.ip())
        .filter(|ip| match ip {
            IpAddr::V4(_) => true,
            // Link-local IPv6 needs a scope id, which ICE candidates cannot carry.
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Every connection is a descriptor: the usual soft limit of 1024 is a modest flood.
    let open_files = match deadsfu_server::raise_open_file_limit() {
        Ok(limit) => {
            tracing::info!(open_files = limit, "open-file limit (RLIMIT_NOFILE)");
            Some(limit)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            None
        }
    };
    let http_limits = deadsfu_server::HttpAdmission::new(deadsfu_server::HttpLimits {
        max_connections: args.max_connections.unwrap_or_else(|| {
            // Half for HTTP; the rest for media, FTL, Redis and files.
            open_files.map_or(16_384, |n| (n / 2).clamp(64, 65_536) as usize)
        }),
        max_connections_per_ip: args.max_connections_per_ip.max(1),
        max_event_streams: args.max_event_streams,
        max_event_streams_per_ip: args.max_event_streams_per_ip,
        header_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
    });
    tracing::info!(
        max_connections = http_limits.limits().max_connections,
        max_connections_per_ip = http_limits.limits().max_connections_per_ip,
        max_event_streams = http_limits.limits().max_event_streams,
        max_event_streams_per_ip = http_limits.limits().max_event_streams_per_ip,
        "HTTP limits"
    );
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut ice_hosts = args.ice_candidate_host.clone();
    if ice_hosts.is_empty() {
        ice_hosts = interface_addresses();
    }
    // IPv6 media needs a dual-stack socket; the workers bind IPv4 for now.
    ice_hosts.retain(IpAddr::is_ipv4);
    if ice_hosts.is_empty() {
        anyhow::bail!(
            "no IPv4 address to advertise as an ICE candidate; pass --ice-candidate-host IP"
        );
    }
    let idle_clip = match args.idle_clip.as_str() {
        "builtin" => Some(Arc::new(deadsfu_media::IdleClip::builtin())),
        "none" => None,
        path => {
            let data =
                std::fs::read(path).with_context(|| format!("reading --idle-clip {path}"))?;
            let clip = deadsfu_media::IdleClip::from_annex_b(&data, 10)
                .with_context(|| format!("--idle-clip {path}"))?;
            Some(Arc::new(clip))
        }
    };
    let engine = MediaEngine::start(EngineConfig {
        idle_clip,
        gop_cache: args.gop_cache,
        udp_port: args.udp_port,
        workers,
        ice_hosts: ice_hosts.clone(),
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout.max(1)),
        connect_timeout: std::time::Duration::from_secs(args.connect_timeout.max(1)),
        admission: admission_config(&args),
        ..EngineConfig::default()
    })
    .context("starting the media workers")?;

    let mut ice_servers: Vec<String> = args
        .stun_server
        .iter()
        .map(|s| {
            if s.starts_with("stun:") || s.starts_with("stuns:") {
                s.clone()
            } else {
                format!("stun:{s}")
            }
        })
        .collect();
    ice_servers.extend(args.ice_server.iter().cloned());

    let http_addr: Option<SocketAddr> = match args.http.trim() {
        "" => None,
        a => Some(a.parse().with_context(|| format!("--http {a:?}"))?),
    };
    if http_addr.is_none() && args.https.is_none() {
        anyhow::bail!("--http \"\" turns plain HTTP off, so give --https ADDR");
    }
    deadsfu_node::certificates::check(&args.tls, args.https.is_some())?;
    let http_listener = match http_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding HTTP {a}"))?,
        ),
        None => None,
    };
    let https_listener = match args.https {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding HTTPS {a}"))?,
        ),
        None => None,
    };
    let http_local = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let https_local = https_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    // What the cluster records as this node's web port: HTTPS when on.
    let public_web = https_local.or(http_local).expect("one listener is on");

    // FTL on port 0 (tests): choose the port now, so the cluster records the real one.
    let mut ftl_args = args.ftl.clone();
    if let Ok(listen) = ftl_args.ftl_listen.trim().parse::<SocketAddr>()
        && listen.port() == 0
    {
        let port = std::net::TcpListener::bind(listen)
            .and_then(|l| l.local_addr())
            .with_context(|| format!("--ftl-listen {listen}"))?
            .port();
        ftl_args.ftl_listen = SocketAddr::new(listen.ip(), port).to_string();
    }
    let cluster = deadsfu_node::membership::join(
        &deadsfu_node::MembershipSettings {
            node: args.node.clone(),
            ftl_listen: ftl_args.ftl_listen.clone(),
            web: public_web,
            ice_hosts: ice_hosts.clone(),
            public_url: args.public_url.clone(),
            web_is_https: https_local.is_some(),
            proxy_protocol: !args.proxy_protocol_from.is_empty(),
        },
        &engine,
    )
    .await?;
    let node_name = match &cluster {
        Some(c) => c.node_id().to_string(),
        None => "standalone".to_string(),
    };
    let https = match https_local {
        Some(local) => Some(
            deadsfu_node::certificates::start(
                &args.tls,
                node_name,
                local,
                http_local.is_some(),
                cluster.as_ref(),
            )
            .await?,
        ),
        None => None,
    };
    let front_door: Option<Arc<dyn deadsfu_server::FrontDoor>> = cluster
        .as_ref()
        .map(|c| c.front_door(&engine, args.service_domain.clone()) as _);
    let state = AppState {
        engine: engine.clone(),
        tokens: deadsfu_server::AccessTokens {
            publish: args
                .publish_token
                .as_deref()
                .or(args.bearer_token.as_deref())
                .map(Arc::from),
            view: args
                .view_token
                .as_deref()
                .or(args.bearer_token.as_deref())
                .map(Arc::from),
        },
        ice_servers: ice_servers.into(),
        html: args.html.clone(),
        rooms: deadsfu_server::room_feed(engine.clone(), front_door.clone()),
        https: https.as_ref().map(|h| deadsfu_server::HttpsState {
            port: public_web.port(),
            resolver: h.resolver.clone(),
            store: Some(h.store.clone()),
            acme: h.node.acme.clone(),
        }),
        front_door,
        http_limits: http_limits.clone(),
        extra_metrics: Vec::new(),
    };
    let ftl = deadsfu_node::ftl_bridge::start(&ftl_args, &engine, cluster.clone()).await?;
    let mut state = state;
    if let Some((_, server, _)) = &ftl {
        state
            .extra_metrics
            .push(Arc::new(deadsfu_node::ftl_bridge::FtlMetrics(
                server.handle(),
            )));
    }
    print_urls(http_local, https_local, &ice_hosts, engine.udp_ports());

    // One shutdown signal for every listener; the cluster hears it first.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let draining = cluster.clone();
    let drain_timeout = std::time::Duration::from_secs(args.drain_timeout);
    let drain_engine = engine.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        // Tell routing first, so no new sessions are sent here while we close.
        if let Some(c) = draining {
            c.drain().await;
            // Live sessions go on until they end or the drain timeout passes; a second
            // signal stops at once.
            if !drain_timeout.is_zero() {
                tracing::info!(timeout = ?drain_timeout, "draining: new sessions go to other nodes, live ones continue");
                let sessions_end = async {
                    loop {
                        let (p, v) = drain_engine.session_counts();
                        if p + v == 0 {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(drain_timeout) => {}
                    _ = sessions_end => {}
                    _ = shutdown_signal() => {}
                }
            }
        }
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let ftl_task = match ftl {
        Some((addr, server, channels)) => {
            let host = if addr.ip().is_unspecified() {
                "localhost".to_string()
            } else {
                addr.ip().to_string()
            };
            println!(
                "  publish (FTL):   server {host}:{} , stream key CHANNEL-SECRET; channels {channels:?} go to rooms named after them",
                addr.port()
            );
            let stop = stopped();
            Some(tokio::spawn(async move { server.run(stop).await }))
        }
        None => None,
    };

    let app = deadsfu_server::router(state);
    let proxy = Arc::new(deadsfu_server::ProxyPolicy::new(
        args.proxy_protocol_from.clone(),
    ));
    let plain = http_listener.map(|l| {
        let app = app.clone();
        let stop = stopped();
        let proxy = proxy.clone();
        let limits = http_limits.clone();
        tokio::spawn(async move { deadsfu_server::serve(l, app, None, proxy, limits, stop).await })
    });
    let secure = match (https_listener, &https) {
        (Some(l), Some(h)) => {
            let app = app.clone();
            let stop = stopped();
            let acceptor = h.node.acceptor.clone();
            let proxy = proxy.clone();
            let limits = http_limits.clone();
            Some(tokio::spawn(async move {
                deadsfu_server::serve(l, app, Some(acceptor), proxy, limits, stop).await
            }))
        }
        _ => None,
    };
    for task in [plain, secure].into_iter().flatten() {
        task.await.context("HTTP server task")?;
    }
    drop(https);
    if let Some(t) = ftl_task {
        match t.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "FTL server"),
            Err(e) => tracing::warn!(error = %e, "FTL server task"),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("shutting down: closing sessions");
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    if let Some(c) = cluster {
        c.leave().await;
    }
    Ok(())
}

fn print_urls(
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    ice_hosts: &[IpAddr],
    udp_ports: &[u16],
) {
    let base_of = |scheme: &str, addr: SocketAddr, default_port: u16| {
        let host = if addr.ip().is_unspecified() {
            "localhost".to_string()
        } else {
            addr.ip().to_string()
        };
        if addr.port() == default_port {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{host}:{}", addr.port())
        }
    };
    let listening: Vec<String> = [
        http.map(|a| a.to_string()),
        https.map(|a| format!("{a} (https)")),
    ]
    .into_iter()
    .flatten()
    .collect();
    println!(
        "deadsfu {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        listening.join(", ")
    );
    let base = match (https, http) {
        (Some(a), _) => base_of("https", a, 443),
        (None, Some(a)) => base_of("http", a, 80),
        (None, None) => unreachable!("one listener is on"),
    };
    println!("  publish (WHIP):  {base}/whip/{{room}}     e.g. {base}/whip/mainroom");
    println!("  watch (WHEP):    {base}/whep/{{room}}     e.g. {base}/whep/mainroom");
    println!("  web player:      {base}/?room=mainroom      browser publisher: {base}/send");
    println!("  metrics:         {base}/metrics");
    println!(
        "  media: UDP ports {:?}, ICE candidates {:?}",
        udp_ports, ice_hosts
    );
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Session admission limits: the flags, else defaults sized from the memory available.
fn admission_config(args: &ServeArgs) -> deadsfu_rtc::AdmissionConfig {
    let mut config = match deadsfu_procstat::available_memory_bytes() {
        Some(bytes) => deadsfu_rtc::AdmissionConfig::for_memory(bytes),
        None => deadsfu_rtc::AdmissionConfig::default(),
    };
    if let Some(n) = args.max_sessions {
        config.max_sessions = n;
    }
    if let Some(n) = args.max_pending_sessions {
        config.max_pending = n;
    }
    config.max_pending_per_ip = args.max_pending_per_ip;
    config.new_sessions_per_ip_per_second = args.new_sessions_per_ip;
    config.new_sessions_per_ip_burst = (args.new_sessions_per_ip * 2.5).max(1.0);
    tracing::info!(
        max_sessions = config.max_sessions,
        max_pending = config.max_pending,
        max_pending_per_ip = config.max_pending_per_ip,
        new_sessions_per_ip = config.new_sessions_per_ip_per_second,
        "session admission limits"
    );
    config
}
