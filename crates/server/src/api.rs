//! `/api`: the rooms of this node as JSON, and the same as a live server-sent-event stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deadsfu_rtc::MediaEngine;
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

use crate::front_door::{ClusterRoom, FrontDoor};
use crate::limits::HttpRefusal;
use crate::problem::Problem;
use crate::{AppState, auth};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomInfo {
    pub name: String,
    pub live: bool,
    pub codec: Option<&'static str>,
    pub viewers: usize,
    pub bitrate_bps: u64,
    /// Cluster mode: the node that owns the room, and where to create its sessions. The web
    /// player moves a waiting viewer there when the room goes live on another node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoomsSnapshot {
    pub rooms: Vec<RoomInfo>,
}

/// How often the room list (and its bitrates) is refreshed.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Starts sampling the engine's rooms once a second; subscribers see each changed snapshot.
/// In cluster mode (`cluster` set) the list is the cluster's: every room of every node, with
/// its owner; details (viewers, bitrate) are this node's.
pub fn room_feed(
    engine: MediaEngine,
    cluster: Option<Arc<dyn FrontDoor>>,
) -> watch::Receiver<RoomsSnapshot> {
    let (tx, rx) = watch::channel(RoomsSnapshot::default());
    tokio::spawn(async move {
        let mut last: HashMap<String, (u64, Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let mut next = HashMap::new();
            let rooms = engine
                .rooms()
                .into_iter()
                .map(|r| {
                    let bitrate_bps = match last.get(&r.name) {
                        Some((bytes, at)) if r.live => {
                            let secs = now.duration_since(*at).as_secs_f64().max(0.001);
                            // Rounded to kbit/s so that jitter alone does not make an event.
                            let bps =
                                (r.bytes_in.saturating_sub(*bytes) as f64 * 8.0 / secs) as u64;
                            bps / 1000 * 1000
                        }
                        _ => 0,
                    };
                    next.insert(r.name.clone(), (r.bytes_in, now));
                    RoomInfo {
                        name: r.name,
                        live: r.live,
                        codec: r.codec,
                        viewers: r.viewers,
                        bitrate_bps,
                        owner: None,
                        owner_url: None,
                    }
                })
                .collect::<Vec<_>>();
            last = next;
            let mut rooms = rooms;
            if let Some(cluster) = &cluster
                && let Some(owned) = cluster.cluster_rooms().await
            {
                merge_cluster_rooms(&mut rooms, owned);
            }
            tx.send_if_modified(|cur| {
                let snapshot = RoomsSnapshot { rooms };
                if *cur == snapshot {
                    false
                } else {
                    *cur = snapshot;
                    true
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// Adds the owner of every room of the cluster; rooms of other nodes join the list.
fn merge_cluster_rooms(rooms: &mut Vec<RoomInfo>, owned: Vec<ClusterRoom>) {
    for c in owned {
        match rooms.iter_mut().find(|r| r.name == c.name) {
            Some(r) => {
                r.live |= c.live;
                r.owner = Some(c.owner);
                r.owner_url = Some(c.owner_url);
            }
            None => rooms.push(RoomInfo {
                name: c.name,
                live: c.live,
                codec: None,
                viewers: 0,
                bitrate_bps: 0,
                owner: Some(c.owner),
                owner_url: Some(c.owner_url),
            }),
        }
    }
    rooms.sort_by(|a, b| a.name.cmp(&b.name));
}

pub(crate) async fn rooms(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Problem> {
    auth::check(&state, &headers, &uri, crate::front_door::SessionRole::View)?;
    let snapshot = state.rooms.borrow().clone();
    Ok(Json(snapshot).into_response())
}

/// The live room list as server-sent events. Each stream holds a place in the event-stream
/// limits (total: 503, per client IP: 429) for as long as it is open.
pub(crate) async fn room_events(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    auth::check(&state, &headers, &uri, crate::front_door::SessionRole::View)?;
    let permit = match state.http_limits.admit_event_stream(client.ip()) {
        Ok(permit) => permit,
        Err(HttpRefusal::EventStreamsPerIp) => {
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many event streams",
                "this client has too many room event streams open",
            ));
        }
        Err(_) => {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many event streams",
                "the server has too many room event streams open",
            ));
        }
    };
    let stream = WatchStream::new(state.rooms.clone()).map(move |snapshot| {
        // The place is given back when the stream (and so this closure) is dropped.
        let _held = &permit;
        Ok(Event::default()
            .event("rooms")
            .data(serde_json::to_string(&snapshot).unwrap_or_default()))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
