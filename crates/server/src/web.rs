//! The web pages: `/` (player) and `/send` (browser publisher), plus their scripts and styles
//! under `/web/`. Built in by default (`--html internal`), served from a directory
//! (`--html DIR`), or not at all (`--html none`).

use std::path::{Component, Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::problem::Problem;

/// Where the pages come from.
#[derive(Debug, Clone)]
pub enum HtmlSource {
    /// The pages built into the binary.
    Internal,
    /// No pages: `/` and `/send` answer 404.
    None,
    /// Files of a directory (same names as the built-in ones: index.html, send.html...).
    Dir(PathBuf),
}

impl std::str::FromStr for HtmlSource {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "internal" => HtmlSource::Internal,
            "none" => HtmlSource::None,
            dir => HtmlSource::Dir(PathBuf::from(dir)),
        })
    }
}

#[derive(rust_embed::RustEmbed)]
#[folder = "web/"]
struct Builtin;

pub(crate) async fn index(State(state): State<AppState>) -> Response {
    serve(&state, "index.html").await
}

pub(crate) async fn send(State(state): State<AppState>) -> Response {
    serve(&state, "send.html").await
}

pub(crate) async fn asset(
    State(state): State<AppState>,
    UrlPath(file): UrlPath<String>,
) -> Response {
    serve(&state, &file).await
}

async fn serve(state: &AppState, file: &str) -> Response {
    let Some(rel) = safe_relative(file) else {
        return not_found();
    };
    let body: Option<Vec<u8>> = match &state.html {
        HtmlSource::None => None,
        HtmlSource::Internal => Builtin::get(&rel.to_string_lossy()).map(|f| f.data.into_owned()),
        HtmlSource::Dir(dir) => tokio::fs::read(dir.join(&rel)).await.ok(),
    };
    match body {
        Some(bytes) => {
            let mut res = (StatusCode::OK, bytes).into_response();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(&rel)),
            );
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            res
        }
        None => not_found(),
    }
}

fn not_found() -> Response {
    Problem::new(StatusCode::NOT_FOUND, "Not found", "no such page").into_response()
}

/// A relative path with plain components only (no `..`, no root), or `None`.
fn safe_relative(file: &str) -> Option<PathBuf> {
    let path = Path::new(file);
    if file.is_empty() || file.len() > 200 {
        return None;
    }
    path.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| path.to_path_buf())
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_out_of_the_folder() {
        assert!(safe_relative("player.js").is_some());
        assert!(safe_relative("img/logo.svg").is_some());
        assert!(safe_relative("../secret").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert!(safe_relative("a/../../b").is_none());
        assert!(safe_relative("").is_none());
    }
}
