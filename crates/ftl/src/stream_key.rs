//! Stream keys as users type them into OBS: `<channel-id>-<secret>`.

use std::fmt;
use std::str::FromStr;

/// A channel's stream secret. Its `Debug` output is redacted so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelSecret(Vec<u8>);

impl ChannelSecret {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    /// The secret's bytes, the HMAC key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ChannelSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelSecret(..)")
    }
}

/// A parsed stream key: the channel id and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct StreamKey {
    pub channel_id: u32,
    pub secret: ChannelSecret,
}

impl fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamKey")
            .field("channel_id", &self.channel_id)
            .finish_non_exhaustive()
    }
}

/// Why a stream key could not be read. The key itself is never included, since it is secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamKeyError {
    #[error("stream key has no `-`, `_` or `,` between channel id and secret")]
    NoSeparator,
    #[error("stream key's channel id is not a decimal number that fits in 32 bits")]
    BadChannelId,
    #[error("stream key's secret is empty")]
    EmptySecret,
}

impl StreamKey {
    /// Reads a key the way ftl-sdk does: an optional leading `re_` is dropped, then the key is
    /// split at the first `-`, `,` or `_` into a decimal channel id and the secret. Surrounding
    /// whitespace (pasted keys) is ignored.
    pub fn parse(key: &str) -> Result<StreamKey, StreamKeyError> {
        let key = key.trim();
        let key = key.strip_prefix("re_").unwrap_or(key);
        let (channel, secret) = key
            .split_once(['-', ',', '_'])
            .ok_or(StreamKeyError::NoSeparator)?;
        if channel.is_empty() || !channel.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StreamKeyError::BadChannelId);
        }
        let channel_id = channel.parse().map_err(|_| StreamKeyError::BadChannelId)?;
        if secret.is_empty() {
            return Err(StreamKeyError::EmptySecret);
        }
        Ok(StreamKey {
            channel_id,
            secret: ChannelSecret::new(secret.as_bytes()),
        })
    }

    /// The SSRC ftl-sdk uses for video: channel id + 1.
    pub fn video_ssrc(&self) -> u32 {
        self.channel_id.wrapping_add(1)
    }

    /// The SSRC ftl-sdk uses for audio: the channel id.
    pub fn audio_ssrc(&self) -> u32 {
        self.channel_id
    }
}

impl FromStr for StreamKey {
    type Err = StreamKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StreamKey::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(key: &str) -> (u32, Vec<u8>) {
        let key = StreamKey::parse(key).unwrap();
        (key.channel_id, key.secret.as_bytes().to_vec())
    }

    #[test]
    fn splits_at_each_separator() {
        assert_eq!(
            parsed("123456789-aBcDeFgHiJkLmNoPqRsTuVwXyZ123456"),
            (123456789, b"aBcDeFgHiJkLmNoPqRsTuVwXyZ123456".to_vec())
        );
        assert_eq!(parsed("42_secret"), (42, b"secret".to_vec()));
        assert_eq!(parsed("42,secret"), (42, b"secret".to_vec()));
    }

    #[test]
    fn splits_at_the_first_separator_only() {
        assert_eq!(parsed("42-se-cr_et,x"), (42, b"se-cr_et,x".to_vec()));
        assert_eq!(parsed("42_se-cret"), (42, b"se-cret".to_vec()));
    }

    #[test]
    fn strips_re_prefix_and_whitespace() {
        assert_eq!(parsed("re_77-abc"), (77, b"abc".to_vec()));
        assert_eq!(parsed(" 77-abc\n"), (77, b"abc".to_vec()));
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(StreamKey::parse("12345"), Err(StreamKeyError::NoSeparator));
        assert_eq!(
            StreamKey::parse("abc-def"),
            Err(StreamKeyError::BadChannelId)
        );
        assert_eq!(StreamKey::parse("-def"), Err(StreamKeyError::BadChannelId));
        assert_eq!(
            StreamKey::parse("+1-def"),
            Err(StreamKeyError::BadChannelId)
        );
        assert_eq!(
            StreamKey::parse("4294967296-def"),
            Err(StreamKeyError::BadChannelId)
        );
        assert_eq!(StreamKey::parse("1-"), Err(StreamKeyError::EmptySecret));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let key = StreamKey::parse("9-hunter2").unwrap();
        let shown = format!("{key:?} {:?}", key.secret);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains('9'));
    }

    #[test]
    fn ssrcs_follow_ftl_sdk() {
        let key = StreamKey::parse("100-x").unwrap();
        assert_eq!(key.video_ssrc(), 101);
        assert_eq!(key.audio_ssrc(), 100);
    }
}
