//! Opening viewers: a WHEP POST (the viewer offers), or Janus's HTTP API with its streaming
//! plugin (Janus offers, the viewer answers).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use deadsfu_client::signaling::Signaling;
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::config::DtlsCert;
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

use crate::viewer::NewViewer;
use crate::wire::PayloadTypes;

/// How to close a viewer's session on the server at the end.
#[derive(Debug, Clone)]
pub enum Teardown {
    /// DELETE this WHEP session URL.
    Whep(String),
    /// Destroy this Janus session (`{base}/{session}`).
    Janus(String),
}

/// One DTLS certificate for every viewer of the process: making one per viewer would cost
/// the load generator about half a millisecond of CPU per viewer (as browsers, which keep
/// theirs, do not pay).
pub(crate) fn viewer_cert() -> Option<DtlsCert> {
    static CERT: OnceLock<Option<DtlsCert>> = OnceLock::new();
    CERT.get_or_init(|| {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    })
    .clone()
}

fn viewer_rtc() -> anyhow::Result<(Rtc, std::net::UdpSocket)> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let local: SocketAddr = socket.local_addr()?;
    let mut builder = Rtc::builder();
    if let Some(cert) = viewer_cert() {
        builder = builder.set_dtls_cert(cert);
    }
    let mut rtc = builder
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_h264(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    Ok((rtc, socket))
}

/// POSTs a recvonly audio+video offer to a WHEP endpoint.
pub async fn whep(
    signaling: &Signaling,
    url: &str,
    full: bool,
) -> anyhow::Result<(NewViewer, Teardown)> {
    let (mut rtc, socket) = viewer_rtc()?;
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().context("nothing to offer")?;
    let started = Instant::now();
    let session = signaling.post_offer(url, offer.to_sdp_string()).await?;
    let pts = PayloadTypes::from_sdp(&session.answer);
    let answer = SdpAnswer::from_sdp_string(&session.answer)?;
    rtc.sdp_api().accept_answer(pending, answer)?;
    Ok((
        NewViewer {
            rtc,
            socket,
            pts,
            full,
            started,
        },
        Teardown::Whep(session.url),
    ))
}

/// A Janus HTTP API endpoint (`http://host:8088/janus`) and the streaming mountpoint to watch.
#[derive(Debug, Clone)]
pub struct Janus {
    pub base: String,
    pub mountpoint: u64,
    http: reqwest::Client,
}

impl Janus {
    pub fn new(base: &str, mountpoint: u64) -> Self {
        Janus {
            base: base.trim_end_matches('/').to_owned(),
            mountpoint,
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, mut body: Value) -> anyhow::Result<Value> {
        body["transaction"] = json!(format!("{:016x}", rand::random::<u64>()));
        let url = format!("{}{}", self.base, path);
        let reply: Value = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        if reply["janus"] == "error" {
            bail!("Janus {url}: {}", reply["error"]);
        }
        Ok(reply)
    }

    /// Waits (long poll) for an event of `session` that carries a JSEP offer.
    async fn wait_offer(&self, session: u64) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let url = format!("{}/{session}?maxev=10", self.base);
            let reply: Value = tokio::time::timeout_at(deadline, async {
                self.http.get(&url).send().await?.json::<Value>().await
            })
            .await
            .map_err(|_| anyhow!("no offer from Janus within 20 s"))??;
            let events = match reply {
                Value::Array(v) => v,
                v => vec![v],
            };
            for e in events {
                if let Some(sdp) = e["jsep"]["sdp"].as_str() {
                    return Ok(sdp.to_owned());
                }
                if e["plugindata"]["data"]["error"].is_string() {
                    bail!("Janus streaming: {}", e["plugindata"]["data"]["error"]);
                }
            }
        }
    }

    /// Creates a session, attaches the streaming plugin, asks to watch, and answers Janus's
    /// offer.
    pub async fn viewer(&self, full: bool) -> anyhow::Result<(NewViewer, Teardown)> {
        let started = Instant::now();
        let created = self.post("", json!({"janus": "create"})).await?;
        let session = created["data"]["id"].as_u64().context("no session id")?;
        let attached = self
            .post(
                &format!("/{session}"),
                json!({"janus": "attach", "plugin": "janus.plugin.streaming"}),
            )
            .await?;
        let handle = attached["data"]["id"].as_u64().context("no handle id")?;
        self.post(
            &format!("/{session}/{handle}"),
            json!({"janus": "message", "body": {"request": "watch", "id": self.mountpoint}}),
        )
        .await?;
        let offer_sdp = self.wait_offer(session).await?;
        let (mut rtc, socket) = viewer_rtc()?;
        let pts = PayloadTypes::from_sdp(&offer_sdp);
        let offer = SdpOffer::from_sdp_string(&offer_sdp)?;
        let answer = rtc.sdp_api().accept_offer(offer)?;
        self.post(
            &format!("/{session}/{handle}"),
            json!({
                "janus": "message",
                "body": {"request": "start"},
                "jsep": {"type": "answer", "sdp": answer.to_sdp_string()},
            }),
        )
        .await?;
        Ok((
            NewViewer {
                rtc,
                socket,
                pts,
                full,
                started,
            },
            Teardown::Janus(format!("{}/{session}", self.base)),
        ))
    }

    pub async fn destroy(&self, session_url: &str) -> anyhow::Result<()> {
        let path = session_url
            .strip_prefix(&self.base)
            .unwrap_or(session_url)
            .to_owned();
        self.post(&path, json!({"janus": "destroy"})).await?;
        Ok(())
    }
}
