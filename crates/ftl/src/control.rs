//! The FTL control-connection codec: turns a TCP byte stream into lines and lines into
//! commands (client to server) or replies (server to client).
//!
//! FTL clients end every command with `\r\n\r\n`; servers answer with one line ending in a
//! bare `\n`. Both sides therefore split on `\n`, drop every `\r` and skip blank lines, which
//! also accepts clients that send a bare `\n`. A command may be split across reads and several
//! may arrive in one read, so the reader buffers; both the line length and the buffered bytes
//! are bounded so a peer cannot make us hold unbounded data.

use std::fmt;

/// The longest control line accepted. ftl-sdk's own command buffer is 2 KiB, and the longest
/// line it sends (CONNECT with a 128-digit HMAC) is under 160 bytes.
pub const MAX_LINE_LEN: usize = 2048;

/// The most bytes buffered but not yet consumed as lines.
pub const MAX_BUFFERED: usize = 16 * 1024;

/// Why the control stream could not be split into lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A line (or the unterminated tail of the buffer) is longer than the limit.
    #[error("control line longer than {limit} bytes")]
    TooLong { limit: usize },
    /// More bytes arrived than may be buffered without being consumed.
    #[error("more than {limit} unconsumed control bytes buffered")]
    BufferFull { limit: usize },
    /// A line is not UTF-8 text.
    #[error("control line is not UTF-8 text")]
    NotText,
}

/// Splits a control byte stream into trimmed, non-empty lines.
#[derive(Debug)]
pub struct LineReader {
    buffer: Vec<u8>,
    max_line: usize,
    max_buffered: usize,
    /// Bytes at the start of `buffer` already searched for `\n`, so repeated short reads of a
    /// long line do not rescan it.
    scanned: usize,
}

impl Default for LineReader {
    fn default() -> Self {
        Self::new(MAX_LINE_LEN, MAX_BUFFERED)
    }
}

impl LineReader {
    /// A reader with explicit bounds (`max_line` <= `max_buffered` is sensible).
    pub fn new(max_line: usize, max_buffered: usize) -> Self {
        Self {
            buffer: Vec::new(),
            max_line,
            max_buffered,
            scanned: 0,
        }
    }

    /// Appends received bytes. Fails, without keeping them, when the buffer would exceed its
    /// bound.
    pub fn push(&mut self, data: &[u8]) -> Result<(), LineError> {
        if self.buffer.len() + data.len() > self.max_buffered {
            return Err(LineError::BufferFull {
                limit: self.max_buffered,
            });
        }
        self.buffer.extend_from_slice(data);
        Ok(())
    }

    /// Bytes held that do not yet form a complete line.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete, non-blank line with every `\r` removed and surrounding whitespace
    /// trimmed, or `None` when more bytes are needed.
    pub fn next_line(&mut self) -> Result<Option<String>, LineError> {
        loop {
            let Some(newline) = self.buffer[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| i + self.scanned)
            else {
                self.scanned = self.buffer.len();
                // An unterminated tail longer than a line can never become a valid line.
                if self.buffer.len() > self.max_line {
                    return Err(LineError::TooLong {
                        limit: self.max_line,
                    });
                }
                return Ok(None);
            };
            let raw: Vec<u8> = self.buffer.drain(..=newline).collect();
            self.scanned = 0;
            let cleaned: Vec<u8> = raw[..raw.len() - 1]
                .iter()
                .copied()
                .filter(|&b| b != b'\r')
                .collect();
            if cleaned.len() > self.max_line {
                return Err(LineError::TooLong {
                    limit: self.max_line,
                });
            }
            let text = String::from_utf8(cleaned).map_err(|_| LineError::NotText)?;
            let trimmed = text.trim();
            if trimmed.is_empty() {
                continue;
            }
            return Ok(Some(trimmed.to_owned()));
        }
    }
}

/// A command a client sends on the control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HMAC`: asks for the nonce.
    Hmac,
    /// `CONNECT <channel-id> $<hmac hex>`.
    Connect { channel_id: u32, hmac: Vec<u8> },
    /// `Key: Value` stream metadata, split at the first `:`, both sides trimmed.
    Attribute { key: String, value: String },
    /// `.`: end of metadata, asks for the UDP port.
    Dot,
    /// `PING <channel-id>`: keepalive (the argument is not checked).
    Ping,
    /// `DISCONNECT` (older clients add arguments).
    Disconnect,
}

/// Why a control line is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("CONNECT needs `CONNECT <channel-id> $<hmac>`")]
    ConnectSyntax,
    #[error("CONNECT channel id is not a decimal u32")]
    ChannelId,
    #[error("CONNECT HMAC is not hex")]
    HmacHex,
    #[error("unknown command")]
    Unknown,
}

impl Command {
    /// Parses one line as produced by [`LineReader::next_line`]. Command words are compared
    /// case-insensitively, to be liberal in what is accepted.
    pub fn parse(line: &str) -> Result<Command, CommandError> {
        let line = line.trim();
        if line == "." {
            return Ok(Command::Dot);
        }
        let (word, rest) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((word, rest)) => (word, rest.trim()),
            None => (line, ""),
        };
        if word.eq_ignore_ascii_case("HMAC") && rest.is_empty() {
            return Ok(Command::Hmac);
        }
        if word.eq_ignore_ascii_case("CONNECT") {
            return parse_connect(rest);
        }
        if word.eq_ignore_ascii_case("PING") {
            return Ok(Command::Ping);
        }
        if word.eq_ignore_ascii_case("DISCONNECT") {
            return Ok(Command::Disconnect);
        }
        // Values may contain ':' themselves (vendor strings), so split at the first one only.
        if let Some((key, value)) = line.split_once(':') {
            let key = key.trim();
            if !key.is_empty() && !key.contains(|c: char| c.is_ascii_whitespace()) {
                return Ok(Command::Attribute {
                    key: key.to_owned(),
                    value: value.trim().to_owned(),
                });
            }
        }
        Err(CommandError::Unknown)
    }
}

fn parse_connect(rest: &str) -> Result<Command, CommandError> {
    let mut parts = rest.split_ascii_whitespace();
    let (Some(channel), Some(hmac), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(CommandError::ConnectSyntax);
    };
    if !channel.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::ChannelId);
    }
    let channel_id: u32 = channel.parse().map_err(|_| CommandError::ChannelId)?;
    let hmac = hmac.strip_prefix('$').ok_or(CommandError::ConnectSyntax)?;
    let hmac = crate::hmac::decode_hex(hmac).map_err(|_| CommandError::HmacHex)?;
    Ok(Command::Connect { channel_id, hmac })
}

/// Reply codes of the FTL control protocol, as ftl-sdk understands them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    Ok = 200,
    Ping = 201,
    BadRequest = 400,
    Unauthorized = 401,
    OldVersion = 402,
    AudioSsrcCollision = 403,
    VideoSsrcCollision = 404,
    InvalidStreamKey = 405,
    ChannelInUse = 406,
    RegionUnsupported = 407,
    NoMediaTimeout = 408,
    GameBlocked = 409,
    ServerTerminated = 410,
    InternalError = 500,
}

impl ReplyCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code for a number, if FTL defines it.
    pub fn from_code(code: u16) -> Option<ReplyCode> {
        use ReplyCode::*;
        Some(match code {
            200 => Ok,
            201 => Ping,
            400 => BadRequest,
            401 => Unauthorized,
            402 => OldVersion,
            403 => AudioSsrcCollision,
            404 => VideoSsrcCollision,
            405 => InvalidStreamKey,
            406 => ChannelInUse,
            407 => RegionUnsupported,
            408 => NoMediaTimeout,
            409 => GameBlocked,
            410 => ServerTerminated,
            500 => InternalError,
            _ => return None,
        })
    }

    /// The reply line for this code alone: `"<code>\n"`.
    pub fn line(self) -> Vec<u8> {
        format!("{}\n", self.code()).into_bytes()
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// The nonce reply. It must end in a bare `\n`: ftl-sdk strips `"200 "` and exactly one
/// trailing byte, then requires an even number of hex digits.
pub fn nonce_reply(nonce: &[u8]) -> Vec<u8> {
    format!("200 {}\n", crate::hmac::encode_hex(nonce)).into_bytes()
}

/// The reply to `.`, in the shape ftl-sdk's port parser expects.
pub fn port_reply(udp_port: u16) -> Vec<u8> {
    format!("200 hi. Use UDP port {udp_port}\n").into_bytes()
}

/// A server reply line as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The rest of the line after the code and one space (may be empty).
    pub text: String,
}

impl Reply {
    /// Parses `"<code>[ <text>]"`; `None` when the line does not start with three digits.
    pub fn parse(line: &str) -> Option<Reply> {
        let line = line.trim();
        let code = line.get(..3)?;
        if !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let rest = &line[3..];
        if !rest.is_empty() && !rest.starts_with(' ') {
            return None;
        }
        Some(Reply {
            code: code.parse().ok()?,
            text: rest.trim().to_owned(),
        })
    }

    /// The UDP port of a `200 hi. Use UDP port N` reply, read the way ftl-sdk does: the text
    /// after the first `.` must be ` Use UDP port N`.
    pub fn udp_port(&self) -> Option<u16> {
        let (_, after_dot) = self.text.split_once('.')?;
        after_dot
            .trim()
            .strip_prefix("Use UDP port")?
            .trim()
            .parse()
            .ok()
    }
}

/// Formats a client command the way ftl-sdk does: the text followed by `\r\n\r\n`.
pub fn client_command(text: &str) -> Vec<u8> {
    format!("{text}\r\n\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(reader: &mut LineReader) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            out.push(line);
        }
        out
    }

    #[test]
    fn splits_crlfcrlf_commands_merged_in_one_read() {
        let mut reader = LineReader::default();
        reader
            .push(b"HMAC\r\n\r\nCONNECT 1 $00\r\n\r\nVideo: true\r\n\r\n")
            .unwrap();
        assert_eq!(lines(&mut reader), ["HMAC", "CONNECT 1 $00", "Video: true"]);
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn joins_a_command_split_across_reads() {
        let mut reader = LineReader::default();
        for chunk in [&b"CON"[..], b"NECT 12", b"3 $ab\r", b"\n", b"\r\n"] {
            reader.push(chunk).unwrap();
        }
        assert_eq!(lines(&mut reader), ["CONNECT 123 $ab"]);
        // Byte by byte, too.
        for &b in b"PING 5\r\n\r\n.\n" {
            reader.push(&[b]).unwrap();
        }
        assert_eq!(lines(&mut reader), ["PING 5", "."]);
    }

    #[test]
    fn accepts_bare_newlines_and_stray_carriage_returns() {
        let mut reader = LineReader::default();
        reader.push(b"HMAC\n\n\r\r\nPI\rNG 1\n").unwrap();
        assert_eq!(lines(&mut reader), ["HMAC", "PING 1"]);
    }

    #[test]
    fn rejects_over_long_lines_terminated_or_not() {
        let mut reader = LineReader::new(16, 1024);
        reader.push(&[b'a'; 17]).unwrap();
        assert_eq!(reader.next_line(), Err(LineError::TooLong { limit: 16 }));

        let mut reader = LineReader::new(16, 1024);
        reader.push(b"aaaaaaaaaaaaaaaaaaaa\n").unwrap();
        assert_eq!(reader.next_line(), Err(LineError::TooLong { limit: 16 }));

        // Exactly the limit is fine.
        let mut reader = LineReader::new(16, 1024);
        reader.push(b"aaaaaaaaaaaaaaaa\r\n\r\n").unwrap();
        assert_eq!(reader.next_line().unwrap().unwrap().len(), 16);
    }

    #[test]
    fn bounds_buffered_bytes() {
        let mut reader = LineReader::new(16, 32);
        reader.push(&[b'\n'; 32]).unwrap();
        assert_eq!(reader.push(b"x"), Err(LineError::BufferFull { limit: 32 }));
        assert_eq!(reader.next_line(), Ok(None));
        reader.push(b"x").unwrap();
    }

    #[test]
    fn rejects_non_utf8() {
        let mut reader = LineReader::default();
        reader.push(b"\xff\xfe\n").unwrap();
        assert_eq!(reader.next_line(), Err(LineError::NotText));
    }

    #[test]
    fn parses_commands() {
        assert_eq!(Command::parse("HMAC"), Ok(Command::Hmac));
        assert_eq!(Command::parse("hmac"), Ok(Command::Hmac));
        assert_eq!(Command::parse("."), Ok(Command::Dot));
        assert_eq!(Command::parse("PING 123"), Ok(Command::Ping));
        assert_eq!(Command::parse("DISCONNECT"), Ok(Command::Disconnect));
        assert_eq!(Command::parse("DISCONNECT 123"), Ok(Command::Disconnect));
        assert_eq!(
            Command::parse("CONNECT 123 $aBcD"),
            Ok(Command::Connect {
                channel_id: 123,
                hmac: vec![0xab, 0xcd]
            })
        );
    }

    #[test]
    fn rejects_malformed_connect() {
        assert_eq!(Command::parse("CONNECT"), Err(CommandError::ConnectSyntax));
        assert_eq!(
            Command::parse("CONNECT 1 abcd"),
            Err(CommandError::ConnectSyntax)
        );
        assert_eq!(
            Command::parse("CONNECT 1 $ab extra"),
            Err(CommandError::ConnectSyntax)
        );
        assert_eq!(
            Command::parse("CONNECT -1 $ab"),
            Err(CommandError::ChannelId)
        );
        assert_eq!(
            Command::parse("CONNECT 99999999999 $ab"),
            Err(CommandError::ChannelId)
        );
        assert_eq!(Command::parse("CONNECT 1 $abc"), Err(CommandError::HmacHex));
        assert_eq!(Command::parse("CONNECT 1 $zz"), Err(CommandError::HmacHex));
    }

    #[test]
    fn parses_attributes_splitting_at_the_first_colon() {
        assert_eq!(
            Command::parse("VendorName: OBS Studio: 29.1"),
            Ok(Command::Attribute {
                key: "VendorName".into(),
                value: "OBS Studio: 29.1".into()
            })
        );
        assert_eq!(
            Command::parse("Video:TRUE"),
            Ok(Command::Attribute {
                key: "Video".into(),
                value: "TRUE".into()
            })
        );
        assert_eq!(Command::parse("what is this"), Err(CommandError::Unknown));
        assert_eq!(Command::parse(": empty key"), Err(CommandError::Unknown));
    }

    #[test]
    fn formats_replies_with_bare_newlines() {
        assert_eq!(nonce_reply(&[0x01, 0xab]), b"200 01ab\n");
        assert_eq!(port_reply(8085), b"200 hi. Use UDP port 8085\n");
        assert_eq!(ReplyCode::ChannelInUse.line(), b"406\n");
        assert_eq!(client_command("HMAC"), b"HMAC\r\n\r\n");
        for code in [
            200, 201, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 500,
        ] {
            assert_eq!(ReplyCode::from_code(code).unwrap().code(), code);
        }
        assert_eq!(ReplyCode::from_code(299), None);
    }

    #[test]
    fn parses_replies_and_the_udp_port() {
        let reply = Reply::parse("200 hi. Use UDP port 8085").unwrap();
        assert_eq!(reply.code, 200);
        assert_eq!(reply.udp_port(), Some(8085));
        assert_eq!(Reply::parse("201").unwrap().text, "");
        assert_eq!(Reply::parse("200").unwrap().udp_port(), None);
        assert_eq!(Reply::parse("20x"), None);
        assert_eq!(Reply::parse("2001"), None);
        assert_eq!(Reply::parse(""), None);
    }
}
