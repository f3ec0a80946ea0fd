//! Fetches a node's bundle from the bootstrap server: HTTPS, bounded in size and time,
//! errors free of the URL and token.

use std::time::Duration;

use crate::bundle::{Bundle, BundleError, MAX_BUNDLE_BYTES};
use crate::join_url::JoinUrl;
use crate::pinned_tls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("bundle fetch from {authority} failed: {reason}")]
    Request { authority: String, reason: String },
    #[error("bootstrap server {authority} refused the access token (HTTP 401)")]
    Unauthorized { authority: String },
    #[error("bootstrap server {authority} answered HTTP {status}")]
    Status { authority: String, status: u16 },
    #[error("bundle from {authority} is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge { authority: String },
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

pub async fn fetch_bundle(url: &JoinUrl) -> Result<Bundle, FetchError> {
    let authority = url.authority().to_string();
    let tls = match url.pin() {
        Some(pin) => pinned_tls::pinned_config(*pin),
        None => pinned_tls::system_roots_config(),
    }
    .map_err(|e| FetchError::Tls(e.to_string()))?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TOTAL_TIMEOUT)
        .build()
        .map_err(|e| FetchError::Tls(e.without_url().to_string()))?;
    let request_error = |e: reqwest::Error| FetchError::Request {
        authority: authority.clone(),
        reason: error_chain(&e.without_url()),
    };
    let mut response = client
        .get(url.fetch_url().expose())
        .send()
        .await
        .map_err(request_error)?;
    match response.status().as_u16() {
        200 => {}
        401 => return Err(FetchError::Unauthorized { authority }),
        status => return Err(FetchError::Status { authority, status }),
    }
    if response
        .content_length()
        .is_some_and(|len| len > MAX_BUNDLE_BYTES as u64)
    {
        return Err(FetchError::TooLarge { authority });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        if body.len() + chunk.len() > MAX_BUNDLE_BYTES {
            return Err(FetchError::TooLarge { authority });
        }
        body.extend_from_slice(&chunk);
    }
    let bundle = Bundle::from_zip(&body)?;
    tracing::info!(bootstrap = %authority, name = %bundle.settings.name, role = %bundle.settings.role, "cluster bundle fetched");
    Ok(bundle)
}

/// The error with its causes (rustls's reason sits a few levels down).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
