//! Reading SDP and sdpfrag request bodies: content type checked, size bounded.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};

use crate::problem::Problem;

/// Largest SDP or fragment we read. Real offers are a few KiB; simulcast ones under 16 KiB.
pub(crate) const MAX_BODY: usize = 64 * 1024;

pub(crate) fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

/// Checks the content type, then reads at most [`MAX_BODY`] bytes of UTF-8.
pub(crate) async fn read(
    headers: &HeaderMap,
    body: Body,
    expected: &str,
) -> Result<String, Problem> {
    if !content_type_is(headers, expected) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Wrong content type",
            format!("the body must be {expected}"),
        ));
    }
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Body too large",
            format!("at most {MAX_BODY} bytes"),
        )
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY)
    {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| too_large())?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "Malformed SDP", "not UTF-8"))
}
