//! WHIP/WHEP over HTTP: POST the offer, PATCH trickled candidates, DELETE the session.

use reqwest::header;

use crate::ClientError;

/// A session created by POST.
#[derive(Debug, Clone)]
pub struct SessionResource {
    pub answer: String,
    /// Absolute URL of the session (from `Location`).
    pub url: String,
    pub etag: Option<String>,
}

#[derive(Clone)]
pub struct Signaling {
    http: reqwest::Client,
    token: Option<String>,
}

impl Signaling {
    /// Plain reqwest defaults: system DNS, the built-in web PKI roots.
    pub fn new(token: Option<String>) -> Self {
        Self::with_client(reqwest::Client::new(), token)
    }

    /// Uses `http` for every request, e.g. a client built with
    /// `reqwest::Client::builder().add_root_certificate(..).resolve(host, addr)` to reach an
    /// HTTPS endpoint signed by a test CA under a name that resolves only in the test.
    ///
    /// Redirects are whatever `http` does: reqwest's default follows up to 10 and drops
    /// `Authorization` when one leads to another origin.
    pub fn with_client(http: reqwest::Client, token: Option<String>) -> Self {
        Signaling { http, token }
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn post_offer(
        &self,
        url: &str,
        offer: String,
    ) -> Result<SessionResource, ClientError> {
        let res = self
            .auth(self.http.post(url))
            .header(header::CONTENT_TYPE, "application/sdp")
            .body(offer)
            .send()
            .await?;
        let status = res.status();
        let location = res
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let etag = res
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = res.text().await?;
        if status.as_u16() != 201 {
            return Err(ClientError::Status {
                status: status.as_u16(),
                body,
            });
        }
        let base = reqwest::Url::parse(url).map_err(|e| ClientError::Sdp(e.to_string()))?;
        let url = match location {
            Some(l) => base
                .join(&l)
                .map_err(|e| ClientError::Sdp(e.to_string()))?
                .to_string(),
            None => url.to_owned(),
        };
        Ok(SessionResource {
            answer: body,
            url,
            etag,
        })
    }

    pub async fn patch_candidates(
        &self,
        session: &SessionResource,
        ufrag: &str,
        pwd: &str,
        candidates: &[String],
    ) -> Result<u16, ClientError> {
        let mut frag = format!(
            "a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
        );
        for c in candidates {
            frag.push_str(&format!("a={c}\r\n"));
        }
        let mut req = self
            .auth(self.http.patch(&session.url))
            .header(header::CONTENT_TYPE, "application/trickle-ice-sdpfrag")
            .body(frag);
        if let Some(etag) = &session.etag {
            req = req.header(header::IF_MATCH, etag);
        }
        Ok(req.send().await?.status().as_u16())
    }

    pub async fn delete(&self, session_url: &str) -> Result<u16, ClientError> {
        Ok(self
            .auth(self.http.delete(session_url))
            .send()
            .await?
            .status()
            .as_u16())
    }
}
