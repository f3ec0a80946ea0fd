//! `deadsfu cluster cert ...`: the operator's view of the shared certificate store, and
//! importing certificates bought elsewhere (admin bundle).

use std::collections::BTreeMap;

use deadsfu_tls::{Backoff, CertStore, ServedCert, StoredCert};

use crate::cert_crypto::ClusterKey;
use crate::cert_store::{CertSummary, RedisCertStore, scan_family};
use crate::redis_conn::RedisConn;

/// Upper bound on keys read per family by `cert ls`.
const MAX_KEYS_PER_FAMILY: usize = 10_000;
/// Longest `last error` shown on one line.
const MAX_ERROR_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum CertAdminError {
    #[error("the certificate and key are not a usable pair: {0}")]
    BadPair(#[from] deadsfu_tls::CertError),
    #[error("the certificate does not cover {domain:?}; its names are: {names}")]
    NotCovered { domain: String, names: String },
    #[error("bad domain {0:?}")]
    BadDomain(String),
    #[error(transparent)]
    Store(#[from] deadsfu_tls::StoreError),
}

/// One line of `cert ls`: a domain with a stored certificate, a lock or a backoff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertListing {
    pub domain: String,
    /// `None` when only a lock or a backoff exists; `Some(Err)` when the record is unreadable.
    pub cert: Option<Result<CertSummary, ()>>,
    /// The owner token holding `acme:lock:{domain}`.
    pub lock_holder: Option<String>,
    /// From `acme:backoff:{domain}`.
    pub backoff: Option<Backoff>,
}

/// Reads certificates, locks and backoffs, one entry per domain, sorted by domain. Needs no
/// cluster key: only public fields are read.
pub async fn read_cert_listing(conn: &RedisConn) -> Result<Vec<CertListing>, CertAdminError> {
    let keys = conn.keys();
    let mut manager = conn.manager();
    let mut by_domain: BTreeMap<String, CertListing> = BTreeMap::new();
    let read = async {
        let certs = scan_family(&mut manager, keys, "cert:", MAX_KEYS_PER_FAMILY).await?;
        let locks = scan_family(&mut manager, keys, "acme:lock:", MAX_KEYS_PER_FAMILY).await?;
        let backoffs =
            scan_family(&mut manager, keys, "acme:backoff:", MAX_KEYS_PER_FAMILY).await?;
        Ok::<_, deadsfu_tls::StoreError>((certs, locks, backoffs))
    };
    let (certs, locks, backoffs) = tokio::time::timeout(crate::cert_store::LIST_TIMEOUT, read)
        .await
        .map_err(|_| {
            deadsfu_tls::StoreError::Unavailable("Redis did not answer in time".into())
        })??;
    for (key, json) in certs {
        if let Some(domain) = keys.strip("cert:", &key) {
            entry(&mut by_domain, domain).cert = Some(CertSummary::from_json(&json).ok_or(()));
        }
    }
    for (key, holder) in locks {
        if let Some(domain) = keys.strip("acme:lock:", &key) {
            entry(&mut by_domain, domain).lock_holder = Some(holder);
        }
    }
    for (key, json) in backoffs {
        if let Some(domain) = keys.strip("acme:backoff:", &key) {
            match serde_json::from_str::<Backoff>(&json) {
                Ok(backoff) => entry(&mut by_domain, domain).backoff = Some(backoff),
                Err(_) => tracing::debug!(%domain, "unreadable backoff record skipped"),
            }
        }
    }
    Ok(by_domain.into_values().collect())
}

fn entry<'a>(map: &'a mut BTreeMap<String, CertListing>, domain: &str) -> &'a mut CertListing {
    map.entry(domain.to_string())
        .or_insert_with(|| CertListing {
            domain: domain.to_string(),
            ..Default::default()
        })
}

/// The `cert ls` table: a header, then per domain its not-after (RFC 3339 UTC), whole days
/// left (negative once expired), issuer, lock holder and last error (`-` when none).
pub fn render_cert_listing(rows: &[CertListing], now_unix: i64) -> String {
    let mut table = vec![
        [
            "DOMAIN",
            "NOT AFTER",
            "DAYS",
            "ISSUER",
            "LOCK",
            "LAST ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for row in rows {
        table.push(listing_line(row, now_unix));
    }
    crate::status::table(&table)
}

/// The cells of one `cert ls` line.
pub fn listing_line(row: &CertListing, now_unix: i64) -> Vec<String> {
    let dash = || "-".to_string();
    let (not_after, days, issuer) = match &row.cert {
        Some(Ok(cert)) => (
            rfc3339_utc(cert.not_after),
            (cert.not_after - now_unix).div_euclid(86_400).to_string(),
            one_line(&cert.issuer, MAX_ERROR_CHARS),
        ),
        Some(Err(())) => ("unreadable".to_string(), dash(), dash()),
        None => (dash(), dash(), dash()),
    };
    let lock = row
        .lock_holder
        .as_deref()
        .map(|h| one_line(h, 80))
        .unwrap_or_else(dash);
    let last_error = row
        .backoff
        .as_ref()
        .filter(|b| !b.last_error.is_empty())
        .map(|b| one_line(&b.last_error, MAX_ERROR_CHARS))
        .unwrap_or_else(dash);
    vec![
        one_line(&row.domain, 253),
        not_after,
        days,
        issuer,
        lock,
        last_error,
    ]
}

/// Text from Redis made safe for one terminal line: control characters replaced, long text
/// cut.
fn one_line(text: &str, max_chars: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max_chars)
        .collect();
    if text.chars().count() > max_chars {
        out.push('…');
    }
    if out.is_empty() { "-".into() } else { out }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Whether a certificate naming `names` serves `domain`: an exact name, or a `*.` wildcard
/// standing for exactly one leftmost label. Case and a trailing dot are ignored.
pub fn names_cover(names: &[String], domain: &str) -> bool {
    let domain = normalise_domain(domain);
    names.iter().any(|name| {
        let name = normalise_domain(name);
        if name == domain {
            return true;
        }
        match (name.strip_prefix("*."), domain.split_once('.')) {
            (Some(suffix), Some((label, rest))) => {
                !label.is_empty() && label != "*" && !suffix.is_empty() && rest == suffix
            }
            _ => false,
        }
    })
}

/// Lowercase, without a trailing dot.
pub fn normalise_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn valid_domain(domain: &str) -> bool {
    (1..=253).contains(&domain.len())
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.*_".contains(c))
        && !domain.starts_with('.')
        && !domain.contains("..")
}

/// `cert import`: checks the pair and that it covers `domain`, then stores it sealed with
/// `key` (which announces it to every node). Returns what was stored.
pub async fn import_cert(
    conn: RedisConn,
    key: ClusterKey,
    domain: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<StoredCert, CertAdminError> {
    let domain = normalise_domain(domain);
    if !valid_domain(&domain) {
        return Err(CertAdminError::BadDomain(domain));
    }
    let served = ServedCert::from_pem(chain_pem, key_pem)?;
    if !names_cover(&served.names, &domain) {
        return Err(CertAdminError::NotCovered {
            domain,
            names: served.names.join(", "),
        });
    }
    let store = RedisCertStore::new(conn, Some(key));
    store.store_cert(&domain, &served.stored).await?;
    tracing::info!(%domain, fingerprint = %served.fingerprint, "certificate imported");
    Ok(served.stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_and_wildcard_names_cover() {
        let n = names(&["example.com", "*.example.com"]);
        assert!(names_cover(&n, "example.com"));
        assert!(names_cover(&n, "EXAMPLE.com."));
        assert!(names_cover(&n, "a.example.com"));
        assert!(!names_cover(&n, "a.b.example.com"));
        assert!(!names_cover(&n, "example.org"));
        assert!(!names_cover(&n, "badexample.com"));
        assert!(!names_cover(&n, "*"));
        // A wildcard does not cover its own parent.
        assert!(!names_cover(&names(&["*.example.com"]), "example.com"));
        // A wildcard domain is covered by the same wildcard, not by a name under it.
        assert!(names_cover(&names(&["*.example.com"]), "*.example.com"));
        assert!(!names_cover(&names(&["a.example.com"]), "*.example.com"));
        assert!(!names_cover(&names(&["*."]), "a."));
        assert!(!names_cover(&[], "example.com"));
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_767_225_599), "2025-12-31T23:59:59Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn listing_lines() {
        let now = 1_767_225_600; // 2026-01-01T00:00:00Z
        let rows = vec![
            CertListing {
                domain: "a.example.com".into(),
                cert: Some(Ok(CertSummary {
                    not_after: now + 89 * 86_400 + 3600,
                    not_before: now - 86_400,
                    issuer: "R11".into(),
                })),
                lock_holder: None,
                backoff: None,
            },
            CertListing {
                domain: "b.example.com".into(),
                cert: None,
                lock_holder: Some("sfu-2/5f3a".into()),
                backoff: Some(Backoff {
                    failures: 2,
                    next_attempt_unix_ms: 0,
                    last_error: "rate limited:\ntoo many orders".into(),
                }),
            },
            CertListing {
                domain: "c.example.com".into(),
                cert: Some(Ok(CertSummary {
                    not_after: now - 3600,
                    not_before: now - 90 * 86_400,
                    issuer: "Other CA".into(),
                })),
                ..Default::default()
            },
            CertListing {
                domain: "d.example.com".into(),
                cert: Some(Err(())),
                ..Default::default()
            },
        ];
        assert_eq!(
            listing_line(&rows[0], now),
            [
                "a.example.com",
                "2026-03-31T01:00:00Z",
                "89",
                "R11",
                "-",
                "-"
            ]
        );
        assert_eq!(
            listing_line(&rows[1], now),
            [
                "b.example.com",
                "-",
                "-",
                "-",
                "sfu-2/5f3a",
                "rate limited: too many orders"
            ]
        );
        assert_eq!(listing_line(&rows[2], now)[2], "-1");
        assert_eq!(listing_line(&rows[3], now)[1], "unreadable");
        let text = render_cert_listing(&rows, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("DOMAIN"));
        assert!(lines[1].starts_with("a.example.com  2026-03-31T01:00:00Z  89"));
        assert!(lines[2].ends_with("sfu-2/5f3a  rate limited: too many orders"));
    }

    #[test]
    fn long_or_hostile_text_stays_on_one_line() {
        let row = CertListing {
            domain: "x".into(),
            backoff: Some(Backoff {
                last_error: format!("\x1b[2J{}", "e".repeat(500)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cell = &listing_line(&row, 0)[5];
        assert!(!cell.contains('\x1b'));
        assert_eq!(cell.chars().count(), MAX_ERROR_CHARS + 1);
    }

    #[test]
    fn domain_validation() {
        for good in ["example.com", "*.example.com", "a-b.c_d.test"] {
            assert!(valid_domain(good), "{good}");
        }
        for bad in ["", ".a", "a..b", "a b", "a/b", "a:b"] {
            assert!(!valid_domain(bad), "{bad}");
        }
    }
}
