//! A thin layer under hyper on HTTP/1 connections that follows the request framing itself:
//!
//! - A request with both `Transfer-Encoding` and `Content-Length` is ambiguous (the classic
//!   request-smuggling shape). hyper drops the `Content-Length` before the application could
//!   see it, so the check happens here, on the raw bytes: the request is never handed to
//!   hyper; a stand-in request ([`AMBIGUOUS_FRAMING_PATH`], `Connection: close`) is, and the
//!   accept loop answers it with 400. Nothing after it on the connection is read.
//! - The first request head must arrive within a deadline from the start of the connection.
//!   hyper's own header timeout only starts once it reads a head, not while its HTTP/1-or-2
//!   detection waits for the first bytes; later heads on a kept-alive connection are hyper's
//!   (it starts its timer after each response, which this layer cannot see).
//!
//! Head bytes are held back until the head is complete and checked; body bytes pass as they
//! come, counted (`Content-Length`) or followed through the chunked coding. HTTP/2 (preface),
//! upgrades and `CONNECT` switch the layer to pass-through, as does anything it cannot parse
//! (hyper then answers the error itself).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The path of the stand-in request that replaces an ambiguous one.
pub(crate) const AMBIGUOUS_FRAMING_PATH: &str = "/.well-known/deadsfu/ambiguous-framing";
const STAND_IN: &[u8] =
    b"GET /.well-known/deadsfu/ambiguous-framing HTTP/1.1\r\nhost: deadsfu\r\nconnection: close\r\n\r\n";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest request head followed; a longer one is passed to hyper as it is (which refuses it).
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;
const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Reading a chunk-size line.
    Size,
    /// Chunk data left, then its CRLF.
    Data(u64),
    /// The CRLF (or bare LF) after chunk data.
    DataEnd,
    /// Trailer lines until an empty one.
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first bytes: HTTP/2 preface or HTTP/1.
    Detect,
    Head,
    Length(u64),
    Chunked(Chunked),
    PassThrough,
    /// An ambiguous request was found: the stand-in request, then end of input.
    Rejected {
        stand_in_sent: usize,
    },
}

/// The connection IO under hyper; see the module docs.
pub(crate) struct FramingGuard<IO> {
    io: IO,
    state: State,
    /// Bytes read and not yet handed on; `checked` of them may be handed on.
    held: Vec<u8>,
    checked: usize,
    eof: bool,
    /// Set once the first request head is complete: the deadline no longer applies.
    first_head_done: bool,
    /// Deadline of the first request head.
    head_deadline: Pin<Box<Sleep>>,
    /// Set when the stand-in was issued, so that only it is answered with 400.
    rejected: Arc<AtomicBool>,
}

impl<IO> FramingGuard<IO> {
    /// `rejected` is set once an ambiguous request was replaced by the stand-in.
    pub(crate) fn new(io: IO, head_timeout: Duration, rejected: Arc<AtomicBool>) -> Self {
        Self {
            io,
            state: State::Detect,
            held: Vec::new(),
            checked: 0,
            eof: false,
            first_head_done: false,
            head_deadline: Box::pin(tokio::time::sleep(head_timeout)),
            rejected,
        }
    }

    fn awaiting_first_head(&self) -> bool {
        !self.first_head_done && matches!(self.state, State::Detect | State::Head)
    }

    fn start_head(&mut self) {
        self.state = State::Head;
    }

    /// Reads and drops whatever the client still sends; ready (end of input) only when the
    /// client closes.
    fn discard_rest(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        IO: AsyncRead + Unpin,
    {
        loop {
            let mut chunk = [0u8; 4096];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut chunk_buf))?;
            if chunk_buf.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Follows the framing over the unchecked held bytes, advancing `checked`.
    fn scan(&mut self) {
        loop {
            let rest = &self.held[self.checked..];
            if rest.is_empty() && !matches!(self.state, State::Detect) {
                return;
            }
            match self.state {
                State::Detect => {
                    let n = rest.len().min(H2_PREFACE.len());
                    if rest[..n] != H2_PREFACE[..n] {
                        self.state = State::Head;
                    } else if n == H2_PREFACE.len() {
                        self.state = State::PassThrough;
                    } else {
                        return;
                    }
                }
                State::Head => {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut request = httparse::Request::new(&mut headers);
                    match request.parse(rest) {
                        Ok(httparse::Status::Partial) if rest.len() <= MAX_HEAD => return,
                        Ok(httparse::Status::Complete(len)) => {
                            let next = framing_of(&request);
                            match next {
                                Some(State::Rejected { .. }) => {
                                    // Hand on what came before, then the stand-in.
                                    self.held.truncate(self.checked);
                                    self.state = State::Rejected { stand_in_sent: 0 };
                                    self.rejected.store(true, Ordering::Relaxed);
                                    return;
                                }
                                Some(state) => {
                                    self.first_head_done = true;
                                    self.checked += len;
                                    if state == State::Head {
                                        self.start_head();
                                    } else {
                                        self.state = state;
                                    }
                                }
                                None => self.state = State::PassThrough,
                            }
                        }
                        // Too long, or not HTTP/1 as httparse reads it: hyper decides.
                        _ => self.state = State::PassThrough,
                    }
                }
                State::Length(left) => {
                    let take = left.min(rest.len() as u64);
                    self.checked += take as usize;
                    if take == left {
                        self.start_head();
                    } else {
                        self.state = State::Length(left - take);
                    }
                }
                State::Chunked(chunked) => {
                    if !self.scan_chunked(chunked) {
                        return;
                    }
                }
                State::PassThrough | State::Rejected { .. } => {
                    self.checked = self.held.len();
                    return;
                }
            }
        }
    }

    /// Follows the chunked coding one step; `false` when it needs more bytes.
    fn scan_chunked(&mut self, chunked: Chunked) -> bool {
        let rest = &self.held[self.checked..];
        match chunked {
            Chunked::Data(left) => {
                let take = left.min(rest.len() as u64);
                self.checked += take as usize;
                self.state = State::Chunked(if take == left {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left - take)
                });
            }
            Chunked::Size | Chunked::DataEnd | Chunked::Trailers => {
                let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                    if rest.len() > MAX_LINE {
                        self.state = State::PassThrough;
                        return true;
                    }
                    // Wait for the rest of the line.
                    return false;
                };
                let line = &rest[..end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let next = match chunked {
                    Chunked::Size => match chunk_size(line) {
                        Some(0) => Some(Chunked::Trailers),
                        Some(n) => Some(Chunked::Data(n)),
                        None => None,
                    },
                    Chunked::DataEnd => line.is_empty().then_some(Chunked::Size),
                    Chunked::Trailers if line.is_empty() => {
                        self.checked += end + 1;
                        self.start_head();
                        return true;
                    }
                    Chunked::Trailers => Some(Chunked::Trailers),
                    Chunked::Data(_) => unreachable!(),
                };
                self.checked += end + 1;
                self.state = next.map_or(State::PassThrough, State::Chunked);
            }
        }
        true
    }
}

/// What follows a complete request head: its body's framing, `Head` for none,
/// `Rejected` for an ambiguous one, `None` to stop following (upgrades, CONNECT, a framing
/// hyper refuses anyway).
fn framing_of(request: &httparse::Request<'_, '_>) -> Option<State> {
    let mut transfer_encoding = false;
    let mut content_length = None;
    let mut upgrade = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if header.name.eq_ignore_ascii_case("content-length") {
            content_length = Some(header.value);
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Some(State::Rejected { stand_in_sent: 0 });
    }
    if upgrade || request.method == Some("CONNECT") {
        return None;
    }
    if transfer_encoding {
        // hyper refuses anything but a final `chunked` (400), so only that is followed.
        return Some(State::Chunked(Chunked::Size));
    }
    match content_length {
        None => Some(State::Head),
        Some(value) => {
            let n: u64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
            Some(if n == 0 {
                State::Head
            } else {
                State::Length(n)
            })
        }
    }
}

fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|&b| b == b';').next()?;
    let digits = std::str::from_utf8(digits).ok()?.trim_matches([' ', '\t']);
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let State::Rejected { stand_in_sent } = this.state
                && this.checked == 0
            {
                if stand_in_sent < STAND_IN.len() {
                    let n = (STAND_IN.len() - stand_in_sent).min(buf.remaining());
                    buf.put_slice(&STAND_IN[stand_in_sent..stand_in_sent + n]);
                    this.state = State::Rejected {
                        stand_in_sent: stand_in_sent + n,
                    };
                    return Poll::Ready(Ok(()));
                }
                // After the stand-in, the client's bytes are dropped unread by hyper: an end
                // of input here would make hyper close before it answers the stand-in.
                return this.discard_rest(cx);
            }
            if this.checked > 0 {
                let n = this.checked.min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.drain(..n);
                this.checked -= n;
                return Poll::Ready(Ok(()));
            }
            if this.state == State::PassThrough && this.held.is_empty() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if this.eof {
                // Cut short inside a head: hand on what there is, then the end.
                let n = this.held.len().min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut chunk_buf) {
                Poll::Ready(Ok(())) => {
                    let got = chunk_buf.filled();
                    if got.is_empty() {
                        this.eof = true;
                    } else {
                        this.held.extend_from_slice(got);
                        this.scan();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if this.awaiting_first_head() {
                        ready!(this.head_deadline.as_mut().poll(cx));
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not received in time",
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Hands out its bytes `step` at a time, then the end.
    struct Trickle {
        bytes: Vec<u8>,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = this.step.min(this.bytes.len()).min(buf.remaining());
            buf.put_slice(&this.bytes[..n]);
            this.bytes.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    async fn through_guard(input: &[u8], step: usize) -> (Vec<u8>, bool) {
        let rejected = Arc::new(AtomicBool::new(false));
        let mut guard = FramingGuard::new(
            Trickle {
                bytes: input.to_vec(),
                step,
            },
            Duration::from_secs(5),
            rejected.clone(),
        );
        let mut out = Vec::new();
        guard.read_to_end(&mut out).await.unwrap();
        (out, rejected.load(Ordering::Relaxed))
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    /// A body that looks like an ambiguous head: it must be followed as a body, not parsed.
    const POST_LENGTH: &[u8] = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 62\r\n\r\n\
        GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
    const POST_CHUNKED: &[u8] =
        b"POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n1A\r\nGET / HTTP/1.1\r\nContent-Le\r\n0\r\nX-Trailer: 1\r\n\r\n";
    const AMBIGUOUS: &[u8] = b"POST /z HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\
        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";

    #[tokio::test]
    async fn well_framed_requests_pass_unchanged_at_any_read_size() {
        let input = [GET, POST_LENGTH, POST_CHUNKED, GET].concat();
        for step in [1, 2, 7, 100, 8192] {
            let (out, rejected) = through_guard(&input, step).await;
            assert_eq!(out, input, "step {step}");
            assert!(!rejected, "step {step}");
        }
    }

    #[tokio::test]
    async fn ambiguous_request_is_replaced_by_the_stand_in_and_nothing_after_it_is_read() {
        let input = [GET, POST_CHUNKED, AMBIGUOUS, GET].concat();
        for step in [1, 3, 8192] {
            let (out, rejected) = through_guard(&input, step).await;
            assert_eq!(out, [GET, POST_CHUNKED, STAND_IN].concat(), "step {step}");
            assert!(rejected);
        }
        // Either order of the two headers.
        let swapped =
            b"POST /z HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n";
        let (out, rejected) = through_guard(swapped, 5).await;
        assert_eq!(out, STAND_IN);
        assert!(rejected);
    }

    #[tokio::test]
    async fn http2_preface_and_upgrades_pass_through() {
        let h2 = [
            H2_PREFACE,
            b"\x00\x00\x00\x04\x00\x00\x00\x00\x00".as_slice(),
        ]
        .concat();
        assert_eq!(through_guard(&h2, 3).await, (h2.clone(), false));
        let upgrade = [
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n".as_slice(),
            b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]
        .concat();
        assert_eq!(through_guard(&upgrade, 4).await, (upgrade.clone(), false));
    }

    #[tokio::test]
    async fn first_head_has_a_deadline() {
        let (client, server) = tokio::io::duplex(1024);
        let mut guard = FramingGuard::new(
            server,
            Duration::from_millis(50),
            Arc::new(AtomicBool::new(false)),
        );
        let mut out = [0u8; 64];
        let error = guard.read(&mut out).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }
}
