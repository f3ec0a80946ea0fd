//! What an SDP answer kept of an offer (the payload types of each media section), and what
//! knowing it saves. str0m's SDP parser is a large part of a join's CPU (two fifths), and its
//! cost grows with the payload types offered, many of which the answer refuses: Chromium
//! offers 43 to a viewer, who is answered with 21 (its offer parses in 1,276 µs whole, 779 cut).
//!
//! - [`keep_formats`] cuts an offer down to what its answer kept; answering the cut offer gives
//!   the same answer. A publisher waiting for its first check keeps its offer cut so
//!   (`session_setup.rs`), and its peer is later built from that (a viewer's is built without
//!   SDP).
//! - [`OfferShapes`] remembers what was kept per offer shape: offers from one browser build or
//!   one client library differ only in their identity lines (ICE credentials, fingerprint,
//!   candidates, SSRCs, mids), and are answered alike. After the first of a shape, the next
//!   ones are cut before str0m parses them at all, and a viewer's is answered from the shape's
//!   template (`answer_template.rs`) with only its identity lines checked; in a join storm that
//!   is nearly all of them. Each answer str0m writes is checked against what was expected, and
//!   a shape answered otherwise is forgotten.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use str0m::change::SdpOffer;

use crate::answer_template::AnswerTemplate;
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

fn not_sdp() -> SessionError {
    SessionError::BadSdp("the offer is not valid SDP".into())
}

/// Checks the values of an offer's lines that its shape leaves out (and of its ports and mids,
/// which it abstracts), where str0m's parser would refuse them: the rest of an offer of a known
/// shape is the same text that parsed before. That is the origin line (second, and only there:
/// `o=<username> <sess-id> <sess-version> ...`, the session id a 64-bit number), the media
/// lines' ports, `c=` and `a=mid:` values (none empty). str0m takes any other attribute it
/// cannot read as one it ignores, and what a viewer's join uses of them (ICE credentials,
/// fingerprint, candidates) is read again where it is used (`session_setup.rs`), which falls
/// back to str0m's answer, and its error, for a value that does not read. Cheaper than
/// str0m's parser by two orders (its combinators cost some 7 µs a line).
fn check_identity_lines(offer: &str) -> Result<(), SessionError> {
    let bad = |what: &str| SessionError::BadSdp(format!("the offer's {what} is not valid SDP"));
    let mut origins = 0;
    for (n, line) in offer.lines().map(|l| l.trim_end_matches('\r')).enumerate() {
        if let Some(origin) = line.strip_prefix("o=") {
            origins += 1;
            let mut fields = origin.splitn(3, ' ');
            let user = fields.next().unwrap_or("");
            let id = fields.next().unwrap_or("");
            let rest = fields.next().unwrap_or("");
            let id_ok = !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_digit())
                && id.parse::<u64>().is_ok();
            if n != 1 || user.is_empty() || !id_ok || rest.is_empty() {
                return Err(bad("origin line (o=)"));
            }
        } else if let Some(m) = line.strip_prefix("m=") {
            if m.split(' ').nth(1).is_none_or(str::is_empty) {
                return Err(bad("media line (m=)"));
            }
        } else if line == "c=" {
            return Err(bad("connection line (c=)"));
        } else if line == "a=mid:" {
            return Err(bad("a=mid"));
        }
    }
    if origins != 1 {
        return Err(bad("origin line (o=)"));
    }
    Ok(())
}

/// What is known of an offer shape: what its answer kept, and for viewers the answer itself
/// as a template (`answer_template.rs`).
#[derive(Debug)]
pub(crate) struct KnownShape {
    formats: AnsweredFormats,
    template: Option<AnswerTemplate>,
}

/// An offer to be answered: parsed whole, parsed cut to what offers of its shape were
/// answered with, or not parsed at all where a viewer's answer has a template.
pub(crate) struct OfferToAnswer {
    parsed: Option<SdpOffer>,
    pub seen: ShapeSeen,
}

impl OfferToAnswer {
    /// The template to answer a viewer with, if the shape has one.
    pub fn template(&self) -> Option<&AnswerTemplate> {
        self.seen.expected.as_ref()?.0.template.as_ref()
    }

    /// The offer parsed for str0m: as [`OfferShapes::parse`] did, or cut now.
    pub fn take_parsed(&mut self) -> Result<SdpOffer, SessionError> {
        if let Some(parsed) = self.parsed.take() {
            return Ok(parsed);
        }
        let cut = self.seen.expected.as_ref().map(|(_, cut)| cut.as_str());
        SdpOffer::from_sdp_string(cut.unwrap_or_default()).map_err(|e| {
            tracing::debug!(error = %e, "SDP offer not parsed");
            not_sdp()
        })
    }

    /// Whether the answer should be learnt as its shape's template.
    pub fn shape_is_new(&self) -> bool {
        self.seen.shape.is_some() && self.seen.expected.is_none()
    }
}

/// What [`OfferShapes::answered`] needs to learn from, or check, the answer.
pub(crate) struct ShapeSeen {
    /// None for an offer too long to remember.
    shape: Option<OfferShape>,
    /// For a shape answered before: what is known of it, and the offer cut to its formats.
    expected: Option<(Arc<KnownShape>, String)>,
}

/// What the answers of recent offer shapes kept (see the module's comment).
#[derive(Default)]
pub(crate) struct OfferShapes {
    known: Mutex<HashMap<OfferShape, Arc<KnownShape>>>,
    cut: AtomicU64,
    templated: AtomicU64,
}

impl OfferShapes {
    /// Counts a viewer answered from its shape's template.
    pub fn count_templated(&self) {
        self.templated.fetch_add(1, Ordering::Relaxed);
    }

    /// Offers parsed cut, and viewers' offers answered from a template, so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.cut.load(Ordering::Relaxed),
            self.templated.load(Ordering::Relaxed),
        )
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<OfferShape, Arc<KnownShape>>> {
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
            let cut = keep_formats(offer, &known.formats);
            if kind == SessionKind::Viewer && known.template.is_some() {
                // The rest of it parsed when its shape was learnt.
                check_identity_lines(offer)?;
                return Ok(OfferToAnswer {
                    parsed: None,
                    seen: ShapeSeen {
                        shape,
                        expected: Some((known, cut)),
                    },
                });
            }
            // A kept line that does not parse (an identity line: the rest parsed before) is
            // reported from the whole offer, below.
            if let Ok(parsed) = SdpOffer::from_sdp_string(&cut) {
                self.cut.fetch_add(1, Ordering::Relaxed);
                return Ok(OfferToAnswer {
                    parsed: Some(parsed),
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
            not_sdp()
        })?;
        Ok(OfferToAnswer {
            parsed: Some(parsed),
            seen: ShapeSeen {
                shape,
                expected: None,
            },
        })
    }

    /// Learns (or checks) what `answer` kept of `offer`, parsed as `seen` says, and a new
    /// shape's `template`; returns the offer cut to it.
    pub fn answered(
        &self,
        offer: &str,
        seen: ShapeSeen,
        answer: &str,
        template: Option<AnswerTemplate>,
    ) -> String {
        let answered = AnsweredFormats::of_answer(answer);
        let Some(shape) = seen.shape else {
            return keep_formats(offer, &answered);
        };
        match seen.expected {
            Some((expected, cut)) if expected.formats == answered => cut,
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
                let formats = answered;
                known.insert(shape, Arc::new(KnownShape { formats, template }));
                cut
            }
        }
    }
}

#[cfg(test)]
#[path = "answered_formats_tests.rs"]
mod tests;
