//! The join URL: `DEADSFU_CLUSTER_URL`, or the file named by `DEADSFU_CLUSTER_URL_FILE`
//! (the Docker/Kubernetes secret form). Read from the environment only, never from a flag,
//! since flags show in `ps`. The URL carries the access token, so it is never logged and no
//! error quotes it.

use std::fmt;
use std::io::Read;

use crate::secret::Secret;

pub const URL_ENV: &str = "DEADSFU_CLUSTER_URL";
pub const URL_FILE_ENV: &str = "DEADSFU_CLUSTER_URL_FILE";

/// Largest URL file read.
const MAX_URL_FILE_BYTES: u64 = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JoinUrlError {
    #[error("both {URL_ENV} and {URL_FILE_ENV} are set; set one")]
    BothSet,
    #[error("cannot read the file named by {URL_FILE_ENV}: {0}")]
    File(std::io::Error),
    #[error("{URL_FILE_ENV} names a file larger than {MAX_URL_FILE_BYTES} bytes")]
    FileTooLarge,
    #[error("the cluster URL is not a valid URL")]
    NotAUrl,
    #[error("the cluster URL must use https")]
    NotHttps,
    #[error("the cluster URL fragment must be #sha256=<64 hex digits>")]
    BadPin,
}

/// A parsed join URL: where to fetch the bundle, and the optional certificate pin.
#[derive(Clone)]
pub struct JoinUrl {
    /// The URL without its fragment (the fragment is never sent anyway).
    fetch_url: Secret,
    /// `host:port`, safe to log.
    authority: String,
    pin: Option<[u8; 32]>,
}

impl fmt::Debug for JoinUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinUrl")
            .field("authority", &self.authority)
            .field("pinned", &self.pin.is_some())
            .finish_non_exhaustive()
    }
}

impl JoinUrl {
    /// Cluster mode is on when this returns `Some`.
    pub fn from_env() -> Result<Option<Self>, JoinUrlError> {
        let direct = std::env::var(URL_ENV).ok().filter(|v| !v.trim().is_empty());
        let file = std::env::var_os(URL_FILE_ENV).filter(|v| !v.is_empty());
        match (direct, file) {
            (Some(_), Some(_)) => Err(JoinUrlError::BothSet),
            (Some(url), None) => Self::parse(&url).map(Some),
            (None, Some(path)) => {
                let file = std::fs::File::open(path).map_err(JoinUrlError::File)?;
                let mut text = String::new();
                file.take(MAX_URL_FILE_BYTES + 1)
                    .read_to_string(&mut text)
                    .map_err(JoinUrlError::File)?;
                if text.len() as u64 > MAX_URL_FILE_BYTES {
                    return Err(JoinUrlError::FileTooLarge);
                }
                Self::parse(&text).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    pub fn parse(text: &str) -> Result<Self, JoinUrlError> {
        // url's parse errors do not echo the input, but keep our own wording anyway.
        let mut url = url::Url::parse(text.trim()).map_err(|_| JoinUrlError::NotAUrl)?;
        if url.scheme() != "https" {
            return Err(JoinUrlError::NotHttps);
        }
        let host = url.host_str().ok_or(JoinUrlError::NotAUrl)?.to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let pin = match url.fragment() {
            None | Some("") => None,
            Some(fragment) => {
                let hex_pin = fragment
                    .strip_prefix("sha256=")
                    .ok_or(JoinUrlError::BadPin)?;
                let bytes = hex::decode(hex_pin).map_err(|_| JoinUrlError::BadPin)?;
                Some(<[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| JoinUrlError::BadPin)?)
            }
        };
        url.set_fragment(None);
        Ok(Self {
            fetch_url: Secret::new(url.to_string()),
            authority: format!("{host}:{port}"),
            pin,
        })
    }

    pub fn fetch_url(&self) -> &Secret {
        &self.fetch_url
    }

    /// `host:port` of the bootstrap server: the only part of the URL that may be logged.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    pub fn pin(&self) -> Option<&[u8; 32]> {
        self.pin.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pin_and_strips_fragment() {
        let pin = "ab".repeat(32);
        let url = JoinUrl::parse(&format!(
            "https://127.0.0.1:8443/bundle?access_token=tok#sha256={pin}"
        ))
        .unwrap();
        assert_eq!(url.pin().unwrap()[0], 0xab);
        assert_eq!(url.authority(), "127.0.0.1:8443");
        assert!(!url.fetch_url().expose().contains('#'));
        assert!(!format!("{url:?}").contains("tok"));
    }

    #[test]
    fn refuses_http_and_bad_pins() {
        assert!(matches!(
            JoinUrl::parse("http://h/b?access_token=t"),
            Err(JoinUrlError::NotHttps)
        ));
        assert!(matches!(
            JoinUrl::parse("https://h/b?access_token=t#sha256=abc"),
            Err(JoinUrlError::BadPin)
        ));
        assert!(matches!(
            JoinUrl::parse("https://h/b?access_token=t#md5=abc"),
            Err(JoinUrlError::BadPin)
        ));
    }
}
