//! A viewer's SDP answer written without str0m, for an offer of a shape answered before
//! (`answered_formats.rs`). str0m answers offers of one shape alike but for a session's own
//! values: its ICE credentials, SSRCs, CNAMEs and origin id, the mids the offer chose and the
//! worker's port in its candidates. The template is str0m's first answer to the shape with
//! those values marked; each later viewer of the shape gets it filled with fresh ones, and the
//! plan of its egress (formats, MID extension id) from the same first answer. This spares a
//! join's request str0m's parse of the offer, its peer and its answer (1,000 µs of 1,300 for
//! a str0m client's offer); the peer is built later from the kept offer as before
//! (`session_setup.rs`), and made to match the answer as it always was (ICE credentials,
//! SSRCs).

use std::fmt::Write;

use deadsfu_media::{Codec, MediaKind};
use str0m::IceCreds;
use str0m::media::{Mid, Pt};
use str0m::rtp::Ssrc;

use crate::egress::TrackPlan;

/// A session's own values in a template's answer.
pub(crate) struct Filled {
    pub answer: String,
    pub local: IceCreds,
    pub send_streams: Vec<(Mid, Ssrc, Option<Ssrc>)>,
    pub tracks: Vec<TrackPlan>,
    pub cname: String,
}

/// What a session of one offer shape was answered and sent with, its own values marked.
#[derive(Debug)]
pub(crate) struct AnswerTemplate {
    lines: Vec<Line>,
    /// How many SSRCs and CNAMEs a session needs.
    ssrcs: usize,
    cnames: usize,
    /// The egress's CNAME, as an index of the CNAMEs.
    cname: usize,
    tracks: Vec<PlannedTrack>,
    sends: Vec<PlannedSend>,
}

#[derive(Debug)]
enum Line {
    Text(Box<str>),
    /// `o=` with the session id between `head` and `tail`.
    Origin {
        head: Box<str>,
        tail: Box<str>,
    },
    /// `a=group:` with its mids, as places of the offer's sections.
    Group {
        head: Box<str>,
        places: Vec<usize>,
    },
    Mid(usize),
    Ufrag,
    Pwd,
    /// A host candidate: its port and ICE username fragment are the session's.
    Candidate {
        tokens: Vec<Box<str>>,
        port_at: usize,
        ufrag_at: Option<usize>,
    },
    /// `a=ssrc:` of one of the session's SSRCs, with a CNAME of the session or other text.
    Ssrc {
        ssrc: usize,
        cname: Option<usize>,
        rest: Box<str>,
    },
    /// `a=ssrc-group:` of the session's SSRCs.
    SsrcGroup {
        head: Box<str>,
        ssrcs: Vec<usize>,
    },
}

#[derive(Debug)]
struct PlannedTrack {
    kind: MediaKind,
    place: usize,
    ssrc: usize,
    pts: Vec<(Pt, Codec)>,
    mid_id: Option<u8>,
}

#[derive(Debug)]
struct PlannedSend {
    place: usize,
    ssrc: usize,
    rtx: Option<usize>,
}

/// What [`AnswerTemplate::learn`] reads: str0m's answer and what its peer was made with.
pub(crate) struct Answered<'a> {
    pub answer: &'a str,
    /// The mid of each section of the offer, in order.
    pub offer_mids: &'a [Option<&'a str>],
    pub local: &'a IceCreds,
    pub send_streams: &'a [(Mid, Ssrc, Option<Ssrc>)],
    pub tracks: &'a [TrackPlan],
    pub cname: &'a str,
}

impl AnswerTemplate {
    /// The template of an answer; None if it has a line whose session values this cannot
    /// tell apart (such shapes are answered by str0m every time).
    pub fn learn(a: &Answered) -> Option<AnswerTemplate> {
        let place_of = |mid: &str| a.offer_mids.iter().position(|m| *m == Some(mid));
        let mut ssrcs: Vec<u32> = Vec::new();
        for (_, ssrc, rtx) in a.send_streams {
            ssrcs.push(**ssrc);
            ssrcs.extend(rtx.map(|r| *r));
        }
        let ssrc_at = |value: &str| {
            let n: u32 = value.parse().ok()?;
            ssrcs.iter().position(|s| *s == n)
        };
        let mut cnames: Vec<&str> = Vec::new();
        let mut lines = Vec::new();
        for line in a.answer.split("\r\n").filter(|l| !l.is_empty()) {
            let parsed = if let Some(rest) = line.strip_prefix("o=") {
                let (user, rest) = rest.split_once(' ')?;
                let (_, tail) = rest.split_once(' ')?;
                Line::Origin {
                    head: format!("o={user} ").into(),
                    tail: format!(" {tail}").into(),
                }
            } else if let Some(rest) = line.strip_prefix("a=group:") {
                let mut tokens = rest.split(' ');
                let semantics = tokens.next()?;
                let places = tokens.map(place_of).collect::<Option<Vec<_>>>()?;
                Line::Group {
                    head: format!("a=group:{semantics}").into(),
                    places,
                }
            } else if let Some(mid) = line.strip_prefix("a=mid:") {
                Line::Mid(place_of(mid)?)
            } else if let Some(ufrag) = line.strip_prefix("a=ice-ufrag:") {
                (ufrag == a.local.ufrag).then_some(Line::Ufrag)?
            } else if let Some(pwd) = line.strip_prefix("a=ice-pwd:") {
                (pwd == a.local.pass).then_some(Line::Pwd)?
            } else if line.starts_with("a=candidate:") {
                let tokens: Vec<Box<str>> = line.split(' ').map(Box::from).collect();
                // candidate:<foundation> <component> <transport> <priority> <address> <port> typ
                if tokens.get(6).map(|t| &**t) != Some("typ") {
                    return None;
                }
                let ufrag_at = tokens.iter().position(|t| &**t == "ufrag").map(|i| i + 1);
                if let Some(at) = ufrag_at
                    && tokens.get(at).map(|t| &**t) != Some(a.local.ufrag.as_str())
                {
                    return None;
                }
                Line::Candidate {
                    tokens,
                    port_at: 5,
                    ufrag_at,
                }
            } else if let Some(rest) = line.strip_prefix("a=ssrc:") {
                let (value, rest) = rest.split_once(' ')?;
                let ssrc = ssrc_at(value)?;
                match rest.strip_prefix("cname:") {
                    Some(cname) => {
                        let at = cnames.iter().position(|c| *c == cname).unwrap_or_else(|| {
                            cnames.push(cname);
                            cnames.len() - 1
                        });
                        Line::Ssrc {
                            ssrc,
                            cname: Some(at),
                            rest: "".into(),
                        }
                    }
                    None => Line::Ssrc {
                        ssrc,
                        cname: None,
                        rest: rest.into(),
                    },
                }
            } else if let Some(rest) = line.strip_prefix("a=ssrc-group:") {
                let mut tokens = rest.split(' ');
                let semantics = tokens.next()?;
                let ssrcs = tokens.map(ssrc_at).collect::<Option<Vec<_>>>()?;
                Line::SsrcGroup {
                    head: format!("a=ssrc-group:{semantics}").into(),
                    ssrcs,
                }
            } else {
                Line::Text(line.into())
            };
            lines.push(parsed);
        }
        // No session value may hide in a line taken as it is.
        let values = ssrcs
            .iter()
            .map(|s| s.to_string())
            .chain(cnames.iter().map(|c| c.to_string()))
            .chain([a.local.ufrag.clone(), a.local.pass.clone()])
            .collect::<Vec<_>>();
        let hidden = lines.iter().any(|l| match l {
            Line::Text(text) | Line::Ssrc { rest: text, .. } => {
                values.iter().any(|v| text.contains(v.as_str()))
            }
            _ => false,
        });
        if hidden {
            return None;
        }
        let tracks = a
            .tracks
            .iter()
            .map(|t| {
                Some(PlannedTrack {
                    kind: t.kind,
                    place: place_of(&t.mid)?,
                    ssrc: ssrcs.iter().position(|s| *s == *t.ssrc)?,
                    pts: t.pts.clone(),
                    mid_id: t.mid_id,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let sends = a
            .send_streams
            .iter()
            .map(|(mid, ssrc, rtx)| {
                Some(PlannedSend {
                    place: place_of(mid)?,
                    ssrc: ssrcs.iter().position(|s| *s == **ssrc)?,
                    rtx: match rtx {
                        Some(r) => Some(ssrcs.iter().position(|s| *s == **r)?),
                        None => None,
                    },
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let cname = cnames.iter().position(|c| *c == a.cname)?;
        let template = AnswerTemplate {
            lines,
            ssrcs: ssrcs.len(),
            cnames: cnames.len(),
            cname,
            tracks,
            sends,
        };
        // Filled with the first session's own values, it must give its answer back.
        let origin = a
            .answer
            .split("\r\n")
            .find_map(|l| l.strip_prefix("o=")?.split(' ').nth(1)?.parse().ok())?;
        let own = Values {
            local: a.local.clone(),
            ssrcs: ssrcs.clone(),
            cnames: cnames.iter().map(|c| c.to_string()).collect(),
            origin,
        };
        let port = a.answer.split("\r\n").find_map(|l| {
            let tokens: Vec<&str> = l.strip_prefix("a=candidate:")?.split(' ').collect();
            tokens.get(5)?.parse().ok()
        });
        let again = template.render(a.offer_mids, port.unwrap_or(9), &own)?;
        (again == a.answer).then_some(template)
    }

    /// The answer, egress plan and send streams of a new session, for an offer whose sections
    /// have `offer_mids`, on the worker with `port`; None if the offer lacks a mid the
    /// template places (not of this shape, then).
    pub fn fill(&self, offer_mids: &[Option<&str>], port: u16) -> Option<Filled> {
        let mut ssrcs: Vec<u32> = Vec::with_capacity(self.ssrcs);
        while ssrcs.len() < self.ssrcs {
            let s: u32 = rand::random();
            if s != 0 && !ssrcs.contains(&s) {
                ssrcs.push(s);
            }
        }
        let values = Values {
            local: IceCreds::new(),
            ssrcs,
            cnames: (0..self.cnames).map(|_| random_token(20)).collect(),
            origin: rand::random::<u64>() >> 1,
        };
        let answer = self.render(offer_mids, port, &values)?;
        let mid_at = |place: usize| offer_mids.get(place).copied().flatten().map(Mid::from);
        let ssrc = |i: usize| Ssrc::from(values.ssrcs[i]);
        let send_streams = self
            .sends
            .iter()
            .map(|s| Some((mid_at(s.place)?, ssrc(s.ssrc), s.rtx.map(ssrc))))
            .collect::<Option<Vec<_>>>()?;
        let tracks = self
            .tracks
            .iter()
            .map(|t| {
                Some(TrackPlan {
                    kind: t.kind,
                    mid: mid_at(t.place)?,
                    ssrc: ssrc(t.ssrc),
                    pts: t.pts.clone(),
                    mid_id: t.mid_id,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Filled {
            answer,
            cname: values.cnames[self.cname].clone(),
            local: values.local,
            send_streams,
            tracks,
        })
    }

    /// The answer with a session's `values`.
    fn render(&self, offer_mids: &[Option<&str>], port: u16, values: &Values) -> Option<String> {
        let mid_at = |place: usize| offer_mids.get(place).copied().flatten();
        let mut out = String::with_capacity(4096);
        for line in &self.lines {
            match line {
                Line::Text(text) => out.push_str(text),
                Line::Origin { head, tail } => {
                    let _ = write!(out, "{head}{}{tail}", values.origin);
                }
                Line::Group { head, places } => {
                    out.push_str(head);
                    for place in places {
                        out.push(' ');
                        out.push_str(mid_at(*place)?);
                    }
                }
                Line::Mid(place) => {
                    out.push_str("a=mid:");
                    out.push_str(mid_at(*place)?);
                }
                Line::Ufrag => {
                    out.push_str("a=ice-ufrag:");
                    out.push_str(&values.local.ufrag);
                }
                Line::Pwd => {
                    out.push_str("a=ice-pwd:");
                    out.push_str(&values.local.pass);
                }
                Line::Candidate {
                    tokens,
                    port_at,
                    ufrag_at,
                } => {
                    for (i, token) in tokens.iter().enumerate() {
                        if i > 0 {
                            out.push(' ');
                        }
                        if i == *port_at {
                            let _ = write!(out, "{port}");
                        } else if Some(i) == *ufrag_at {
                            out.push_str(&values.local.ufrag);
                        } else {
                            out.push_str(token);
                        }
                    }
                }
                Line::Ssrc { ssrc, cname, rest } => {
                    let _ = write!(out, "a=ssrc:{} ", values.ssrcs[*ssrc]);
                    match cname {
                        Some(c) => {
                            out.push_str("cname:");
                            out.push_str(&values.cnames[*c]);
                        }
                        None => out.push_str(rest),
                    }
                }
                Line::SsrcGroup { head, ssrcs } => {
                    out.push_str(head);
                    for s in ssrcs {
                        let _ = write!(out, " {}", values.ssrcs[*s]);
                    }
                }
            }
            out.push_str("\r\n");
        }
        Some(out)
    }
}

struct Values {
    local: IceCreds,
    ssrcs: Vec<u32>,
    cnames: Vec<String>,
    /// The session id of the `o=` line.
    origin: u64,
}

/// Letters and digits at random, as str0m makes its CNAMEs.
fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
#[path = "answer_template_tests.rs"]
mod tests;
