//! Tests of `answer_template.rs`.

use std::time::Instant;

use super::*;
use crate::fuzz::str0m_viewer_offer as str0m_offer;
use crate::session::Session;
use crate::session_setup::prepare_session;
use crate::session_setup::tests::{
    assert_peer_keeps_answer, chromium_offer as chromium, test_shared as shared, viewer_request,
};
use crate::shared::Shared;

/// Chromium's offer with its own ICE credentials, origin and mids (as another tab's).
fn chromium_offer(n: u32) -> String {
    chromium()
        .replace("nAy0", &format!("u{n:03}"))
        .replace("5515343324470364038", &format!("{}", 1000 + n))
        .replace(
            "a=group:BUNDLE 0 1\r\n",
            &format!("a=group:BUNDLE a{n} v{n}\r\n"),
        )
        .replace("a=mid:0\r\n", &format!("a=mid:a{n}\r\n"))
        .replace("a=mid:1\r\n", &format!("a=mid:v{n}\r\n"))
}

/// A viewer's session for `offer`, on the worker with `port`; whether it was answered from a
/// template.
fn viewer(shared: &Shared, offer: &str, port: u16) -> (Session, String, bool) {
    let req = viewer_request(shared, offer);
    let templated = req.offer.template().is_some();
    let (session, answer) = prepare_session(shared, port, req, Instant::now()).unwrap();
    (session, answer, templated)
}

/// An answer with its session's values replaced by their order of appearance, so that two
/// answers compare by their shape and by how they use their values. (Stream and track ids,
/// `msid`, are kept from the template's first answer: they are scoped to a peer connection;
/// the fingerprint is the process's.)
fn values_numbered(answer: &str) -> String {
    let mut seen: Vec<String> = Vec::new();
    let mut number = |v: &str| {
        let at = seen.iter().position(|s| s == v).unwrap_or_else(|| {
            seen.push(v.to_string());
            seen.len() - 1
        });
        format!("<{at}>")
    };
    let mut out = String::new();
    for line in answer.split("\r\n") {
        let line = if let Some(rest) = line.strip_prefix("o=") {
            let f: Vec<&str> = rest.split(' ').collect();
            format!("o={} <id> {}", f[0], f[2..].join(" "))
        } else if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            format!("a=ice-ufrag:{}", number(v))
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            format!("a=ice-pwd:{}", number(v))
        } else if line.starts_with("a=msid") || line.starts_with("a=fingerprint:") {
            "<msid or fingerprint>".to_string()
        } else if let Some(rest) = line.strip_prefix("a=ssrc:") {
            let (ssrc, attr) = rest.split_once(' ').unwrap();
            let attr = match attr.strip_prefix("cname:") {
                Some(c) => format!("cname:{}", number(c)),
                None if attr.starts_with("msid:") => "msid".to_string(),
                None => attr.to_string(),
            };
            format!("a=ssrc:{} {attr}", number(ssrc))
        } else if let Some(rest) = line.strip_prefix("a=ssrc-group:") {
            let mut t = rest.split(' ');
            let head = t.next().unwrap().to_string();
            t.fold(format!("a=ssrc-group:{head}"), |acc, s| {
                format!("{acc} {}", number(s))
            })
        } else if line.starts_with("a=candidate:") {
            let mut t: Vec<String> = line.split(' ').map(str::to_string).collect();
            t[5] = "<port>".into();
            if let Some(at) = t.iter().position(|x| x == "ufrag") {
                t[at + 1] = number(&t[at + 1].clone());
            }
            t.join(" ")
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn answered_from_template_as_str0m_would(offers: &[String]) {
    let shared = shared();
    let (first, first_answer, templated) = viewer(&shared, &offers[0], 5000);
    assert!(
        !templated,
        "the first offer of a shape is answered by str0m"
    );
    assert_peer_keeps_answer(&shared, first, &first_answer);
    for offer in &offers[1..] {
        let (session, answer, templated) = viewer(&shared, offer, 5002);
        assert!(
            templated,
            "the next offers of the shape are answered from its template"
        );
        let (_, by_str0m, _) = viewer(&self::shared(), offer, 5002);
        assert_eq!(values_numbered(&answer), values_numbered(&by_str0m));
        assert_ne!(answer, first_answer);
        assert!(answer.contains(" 127.0.0.1 5002 typ host") || !answer.contains("a=candidate"));
        assert_peer_keeps_answer(&shared, session, &answer);
    }
    assert_eq!(shared.offer_shapes.counts(), (0, offers.len() as u64 - 1));
}

#[test]
fn a_browsers_viewers_are_answered_from_the_template_as_str0m_would() {
    answered_from_template_as_str0m_would(&[
        chromium_offer(1),
        chromium_offer(2),
        chromium_offer(3),
    ]);
}

#[test]
fn a_str0m_clients_viewers_are_answered_from_the_template_as_str0m_would() {
    answered_from_template_as_str0m_would(&[str0m_offer(), str0m_offer(), str0m_offer()]);
}

#[test]
fn each_session_gets_values_of_its_own() {
    let shared = shared();
    let offer = str0m_offer();
    viewer(&shared, &offer, 5000);
    let (a, answer_a, _) = viewer(&shared, &offer, 5000);
    let (b, answer_b, _) = viewer(&shared, &offer, 5000);
    assert_ne!(a.local_ufrag, b.local_ufrag);
    let ssrcs = |answer: &str| -> Vec<String> {
        answer
            .lines()
            .filter_map(|l| l.strip_prefix("a=ssrc:"))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    };
    let (sa, sb) = (ssrcs(&answer_a), ssrcs(&answer_b));
    assert!(!sa.is_empty() && sa.iter().all(|s| !sb.contains(s)));
}

#[test]
fn an_answer_with_a_session_value_where_it_is_not_looked_for_is_not_a_template() {
    let local = IceCreds {
        ufrag: "Ufrag1234".into(),
        pass: "Password123456789012345".into(),
    };
    let answer = "v=0\r\no=- 42 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
        a=ice-ufrag:Ufrag1234\r\na=ice-pwd:Password123456789012345\r\na=mid:0\r\na=sendonly\r\n\
        a=ssrc:1234 cname:abc\r\n";
    let tracks = [TrackPlan {
        kind: MediaKind::Video,
        mid: Mid::from("0"),
        ssrc: Ssrc::from(1234),
        pts: vec![],
        mid_id: None,
    }];
    let send_streams = [(Mid::from("0"), Ssrc::from(1234), None)];
    let answered = |answer| Answered {
        answer,
        offer_mids: &[Some("0")],
        local: &local,
        send_streams: &send_streams,
        tracks: &tracks,
        cname: "abc",
    };
    assert!(AnswerTemplate::learn(&answered(answer)).is_some());
    let hidden = format!("{answer}a=x-label:Ufrag1234\r\n");
    assert!(AnswerTemplate::learn(&answered(&hidden)).is_none());
    let unknown_ssrc = format!("{answer}a=ssrc:999 cname:abc\r\n");
    assert!(AnswerTemplate::learn(&answered(&unknown_ssrc)).is_none());
    let unknown_mid = answer.replace("a=mid:0", "a=mid:7");
    assert!(AnswerTemplate::learn(&answered(&unknown_mid)).is_none());
}

#[test]
fn an_offer_of_a_known_shape_without_a_fingerprint_is_left_to_str0m() {
    let shared = shared();
    viewer(&shared, &chromium_offer(1), 5000);
    let unsigned: String = chromium_offer(2)
        .lines()
        .filter(|l| !l.starts_with("a=fingerprint:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let answer = |shared: &Shared| {
        let req = viewer_request(shared, &unsigned);
        prepare_session(shared, 5000, req, Instant::now()).map(|(_, answer)| answer)
    };
    let known = answer(&shared);
    assert_eq!(shared.offer_shapes.counts().1, 0, "not from the template");
    // As where its shape is new.
    assert_eq!(known.is_ok(), answer(&self::shared()).is_ok());
}
