//! Errors as `application/problem+json` (RFC 9457).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use deadsfu_rtc::SessionError;

/// An HTTP error with a problem+json body.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            title,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut res = (self.status, body.to_string()).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

impl From<SessionError> for Problem {
    fn from(e: SessionError) -> Self {
        let (status, title) = match &e {
            SessionError::BadSdp(_) => (StatusCode::BAD_REQUEST, "Malformed SDP"),
            SessionError::Unsupported(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Offer cannot be served")
            }
            SessionError::RoomBusy(_) => (StatusCode::CONFLICT, "Room already has a publisher"),
            SessionError::NotFound => (StatusCode::NOT_FOUND, "No such session"),
            SessionError::RestartNeedsIfMatch => {
                (StatusCode::PRECONDITION_REQUIRED, "If-Match required")
            }
            SessionError::EtagMismatch => (StatusCode::PRECONDITION_FAILED, "ETag mismatch"),
            SessionError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Overloaded"),
            SessionError::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
        };
        Problem::new(status, title, e.to_string())
    }
}

pub(crate) async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "Not found", "no such resource")
}
