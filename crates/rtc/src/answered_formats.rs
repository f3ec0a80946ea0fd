//! What an SDP answer kept of an offer (the payload types of each media section), and what
//! knowing it saves. str0m's SDP parser is a large part of a join's CPU (two fifths), and its
//! cost grows with the payload types offered, many of which the answer refuses: Chromium
//! offers 43 to a viewer, who is answered with 21 (its offer parses in 1,276 µs whole, 779 cut).
//!
//! - [`keep_formats`] cuts an offer down to what its answer kept; answering the cut offer gives
//!   the same answer. A session waiting for its first check keeps its offer cut so
//!   (`session_setup.rs`), and its peer is later built from that.
//! - [`OfferShapes`] remembers what was kept per offer shape: offers from one browser build or
//!   one client library differ only in their identity lines (ICE credentials, fingerprint,
//!   candidates, SSRCs), and are answered alike. After the first of a shape, the next ones are
//!   cut before str0m parses them at all; in a join storm that is nearly all of them. Each
//!   answer is checked against what was expected, and a shape answered otherwise is forgotten.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use str0m::change::SdpOffer;

use crate::error::SessionError;
use crate::sdp::VideoFamily;
use crate::session::SessionKind;

/// Shapes remembered at most; a new one past this displaces one of the others.
const MAX_SHAPES: usize = 64;
/// Offers longer than this are not remembered (a browser's is about 6 KB): so the shapes
/// take at most 1 MiB.
const MAX_REMEMBERED_OFFER: usize = 16 * 1024;

/// Each media section of an answer, in order (as the offer's: RFC 3264, 6): the formats of its
/// `m=` line if accepted, None if refused (port 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AnsweredFormats(Vec<Option<Vec<Box<str>>>>);

impl AnsweredFormats {
    pub fn of_answer(answer: &str) -> AnsweredFormats {
        let sections = sections(answer)
            .into_iter()
            .skip(1)
            .map(|section| {
                let m = section.first()?.strip_prefix("m=")?;
                let mut fields = m.split(' ');
                if fields.nth(1)? == "0" {
                    return None;
                }
                Some(fields.skip(1).map(Box::from).collect())
            })
            .collect();
        AnsweredFormats(sections)
    }
}

/// The offer with, in each media section the answer accepted, only the payload types the
/// answer kept (its `m=` format list, `a=rtpmap`, `a=fmtp` and `a=rtcp-fb` lines for the
/// others left out); other sections and lines as they were.
pub(crate) fn keep_formats(offer: &str, answered: &AnsweredFormats) -> String {
    let mut out = String::with_capacity(offer.len());
    for (n, section) in sections(offer).into_iter().enumerate() {
        // Section 0 is the session's part.
        let kept = n
            .checked_sub(1)
            .and_then(|media| answered.0.get(media)?.as_deref());
        let Some(kept) = kept.filter(|kept| !kept.is_empty()) else {
            for line in &section {
                out.push_str(line);
                out.push_str("\r\n");
            }
            continue;
        };
        let is_kept = |pt: &str| kept.iter().any(|k| &**k == pt);
        for line in &section {
            if let Some(m) = line.strip_prefix("m=") {
                let mut fields = m.split(' ');
                let head: Vec<&str> = fields.by_ref().take(3).collect();
                out.push_str("m=");
                out.push_str(&head.join(" "));
                for f in fields.filter(|f| is_kept(f)) {
                    out.push(' ');
                    out.push_str(f);
                }
                out.push_str("\r\n");
                continue;
            }
            let format_of = ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"]
                .iter()
                .find_map(|p| line.strip_prefix(p))
                .and_then(|rest| rest.split(' ').next());
            if let Some(pt) = format_of
                && pt != "*"
                && !is_kept(pt)
            {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out
}

/// The lines of `sdp`, cut into the session part and its media sections.
fn sections(sdp: &str) -> Vec<Vec<&str>> {
    let mut sections = vec![Vec::new()];
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            continue;
        }
        if line.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(section) = sections.last_mut() {
            section.push(line);
        }
    }
    sections
}

/// An offer without what differs between clients of one kind (and what cannot change the
/// answer's formats): its origin, addresses and ports, ICE credentials and candidates,
/// fingerprint, stream ids and SSRCs. Everything else, in order, with the session's kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct OfferShape {
    kind: SessionKind,
    video_family: Option<VideoFamily>,
    lines: Box<str>,
}

/// Lines that differ between clients and do not bear on the payload types answered.
const IDENTITY_LINES: [&str; 12] = [
    "o=",
    "a=msid-semantic:",
    "c=",
    "a=ice-ufrag:",
    "a=ice-pwd:",
    "a=fingerprint:",
    "a=candidate:",
    "a=end-of-candidates",
    "a=rtcp:",
    "a=msid:",
    "a=ssrc:",
    "a=ssrc-group:",
];

impl OfferShape {
    pub(crate) fn of(
        kind: SessionKind,
        video_family: Option<VideoFamily>,
        offer: &str,
    ) -> OfferShape {
        let lines = || offer.lines().map(|l| l.trim_end_matches('\r'));
        // Mids as their sections' places: some clients (str0m's) make them up at random.
        let mids: Vec<&str> = lines()
            .filter_map(|l| l.strip_prefix("a=mid:"))
            .map(str::trim)
            .collect();
        let place_of = |mid: &str| mids.iter().position(|m| *m == mid);
        let mut shape = String::with_capacity(offer.len());
        for line in lines() {
            if IDENTITY_LINES.iter().any(|p| line.starts_with(p)) {
                continue;
            }
            if let Some(m) = line.strip_prefix("m=") {
                // The port: 9 from browsers, a real one from clients that do not trickle.
                let mut fields = m.splitn(3, ' ');
                shape.push_str("m=");
                shape.push_str(fields.next().unwrap_or(""));
                fields.next();
                shape.push_str(" * ");
                shape.push_str(fields.next().unwrap_or(""));
            } else if let Some(mid) = line.strip_prefix("a=mid:") {
                let place = place_of(mid.trim()).unwrap_or(usize::MAX);
                let _ = write!(shape, "a=mid:#{place}");
            } else if let Some(group) = line.strip_prefix("a=group:") {
                shape.push_str("a=group:");
                let mut tokens = group.split(' ');
                shape.push_str(tokens.next().unwrap_or(""));
                for token in tokens {
                    match place_of(token) {
                        Some(place) => {
                            let _ = write!(shape, " #{place}");
                        }
                        None => {
                            shape.push(' ');
                            shape.push_str(token);
                        }
                    }
                }
            } else {
                shape.push_str(line);
            }
            shape.push('\n');
        }
        OfferShape {
            kind,
            video_family,
            lines: shape.into(),
        }
    }
}

/// An offer parsed to be answered, and how: whole, or cut to what offers of its shape were
/// answered with.
pub(crate) struct OfferToAnswer {
    pub parsed: SdpOffer,
    pub seen: ShapeSeen,
}

/// What [`OfferShapes::answered`] needs to learn from, or check, the answer.
pub(crate) struct ShapeSeen {
    /// None for an offer too long to remember.
    shape: Option<OfferShape>,
    /// For a shape answered before: what its answer kept, and the offer cut to it (parsed).
    expected: Option<(Arc<AnsweredFormats>, String)>,
}

/// What the answers of recent offer shapes kept (see the module's comment).
#[derive(Default)]
pub(crate) struct OfferShapes {
    known: Mutex<HashMap<OfferShape, Arc<AnsweredFormats>>>,
}

impl OfferShapes {
    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<OfferShape, Arc<AnsweredFormats>>> {
        // The map stays whole whatever panicked while it was held.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Parses `offer` for a session of `kind`: cut to the formats offers of its shape were
    /// answered with, if one was, else whole.
    pub fn parse(
        &self,
        kind: SessionKind,
        video_family: Option<VideoFamily>,
        offer: &str,
    ) -> Result<OfferToAnswer, SessionError> {
        let shape = (offer.len() <= MAX_REMEMBERED_OFFER)
            .then(|| OfferShape::of(kind, video_family, offer));
        let known = shape.as_ref().and_then(|s| self.known().get(s).cloned());
        if let Some(known) = known {
            let cut = keep_formats(offer, &known);
            // A kept line that does not parse (an identity line: the rest parsed before) is
            // reported from the whole offer, below.
            if let Ok(parsed) = SdpOffer::from_sdp_string(&cut) {
                return Ok(OfferToAnswer {
                    parsed,
                    seen: ShapeSeen {
                        shape,
                        expected: Some((known, cut)),
                    },
                });
            }
        }
        let parsed = SdpOffer::from_sdp_string(offer).map_err(|e| {
            // The parser's message can quote its own internals: log it, answer plainly.
            tracing::debug!(error = %e, "SDP offer not parsed");
            SessionError::BadSdp("the offer is not valid SDP".into())
        })?;
        Ok(OfferToAnswer {
            parsed,
            seen: ShapeSeen {
                shape,
                expected: None,
            },
        })
    }

    /// Learns (or checks) what `answer` kept of `offer`, parsed as `seen` says; returns the
    /// offer cut to it.
    pub fn answered(&self, offer: &str, seen: ShapeSeen, answer: &str) -> String {
        let answered = AnsweredFormats::of_answer(answer);
        let Some(shape) = seen.shape else {
            return keep_formats(offer, &answered);
        };
        match seen.expected {
            Some((expected, cut)) if *expected == answered => cut,
            Some(_) => {
                // Not expected of str0m; the answer stands (it is one to a part of the offer),
                // and the next offer of this shape is parsed whole.
                static SAID: AtomicBool = AtomicBool::new(false);
                if !SAID.swap(true, Ordering::Relaxed) {
                    tracing::warn!("an offer's shape was answered differently than before");
                }
                self.known().remove(&shape);
                keep_formats(offer, &answered)
            }
            None => {
                let cut = keep_formats(offer, &answered);
                let mut known = self.known();
                if known.len() >= MAX_SHAPES && !known.contains_key(&shape) {
                    let displaced = known.keys().next().cloned();
                    if let Some(displaced) = displaced {
                        known.remove(&displaced);
                    }
                }
                known.insert(shape, Arc::new(answered));
                cut
            }
        }
    }
}

#[cfg(test)]
#[path = "answered_formats_tests.rs"]
mod tests;
