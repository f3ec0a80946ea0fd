//! Picks the certificate for a TLS handshake by SNI.
//!
//! Three sources, in order of precedence: certificate files (`--tls-cert`), ACME (this node's
//! `--acme-domain` names), and the shared store (names other nodes obtained). Each source is
//! an immutable map swapped whole when it changes, so a handshake takes no lock. A name that
//! no source covers gets no certificate, which rustls turns into a TLS alert: a wrong
//! certificate is never served.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;

use crate::pem_pair::ServedCert;

/// Where a served certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertSource {
    Files,
    Acme,
    Store,
}

const SOURCES: [CertSource; 3] = [CertSource::Files, CertSource::Acme, CertSource::Store];

/// One certificate as `/healthz` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    /// The name it is served for (as configured or stored: may be `*.example.com`).
    pub name: String,
    pub source: CertSource,
    /// notAfter, RFC 3339 UTC.
    pub not_after: String,
    pub not_after_unix: i64,
    pub issuer: String,
    pub fingerprint: String,
}

type NameMap = BTreeMap<String, ServedCert>;

/// The SNI resolver of the HTTPS listener. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct CertResolver {
    layers: [ArcSwap<NameMap>; 3],
}

impl Default for CertResolver {
    fn default() -> Self {
        Self {
            layers: std::array::from_fn(|_| ArcSwap::from_pointee(NameMap::new())),
        }
    }
}

fn layer_index(source: CertSource) -> usize {
    match source {
        CertSource::Files => 0,
        CertSource::Acme => 1,
        CertSource::Store => 2,
    }
}

impl CertResolver {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Serves `cert` for `name` (exact, or `*.suffix`) from `source`.
    pub fn insert(&self, source: CertSource, name: &str, cert: ServedCert) {
        let name = name.to_ascii_lowercase();
        self.layers[layer_index(source)].rcu(|map| {
            let mut map = NameMap::clone(map);
            map.insert(name.clone(), cert.clone());
            map
        });
    }

    /// Serves `cert` for every name it carries.
    pub fn insert_for_its_names(&self, source: CertSource, cert: &ServedCert) {
        let names = cert.names.clone();
        self.layers[layer_index(source)].rcu(|map| {
            let mut map = NameMap::clone(map);
            for name in &names {
                map.insert(name.clone(), cert.clone());
            }
            map
        });
    }

    /// Replaces everything `source` serves.
    pub fn replace(&self, source: CertSource, certs: Vec<(String, ServedCert)>) {
        let map: NameMap = certs
            .into_iter()
            .map(|(n, c)| (n.to_ascii_lowercase(), c))
            .collect();
        self.layers[layer_index(source)].store(Arc::new(map));
    }

    /// What `source` serves now, by name.
    pub fn source_entries(&self, source: CertSource) -> Vec<(String, ServedCert)> {
        self.layers[layer_index(source)]
            .load()
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect()
    }

    /// The certificate for `sni`, if any source covers it.
    pub fn lookup(&self, sni: &str) -> Option<ServedCert> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        for source in SOURCES {
            let map = self.layers[layer_index(source)].load();
            if let Some(cert) = map.get(&sni) {
                return Some(cert.clone());
            }
            // A wildcard covers exactly one label: `*.example.com` serves `a.example.com`,
            // not `example.com` nor `a.b.example.com`.
            if let Some((_, parent)) = sni.split_once('.')
                && let Some(cert) = map.get(&format!("*.{parent}"))
            {
                return Some(cert.clone());
            }
        }
        None
    }

    /// A connection without SNI (an IP address in the URL) gets the first file certificate,
    /// the one an operator set up by hand; ACME and store certificates are only for names.
    fn without_sni(&self) -> Option<Arc<CertifiedKey>> {
        let map = self.layers[layer_index(CertSource::Files)].load();
        map.values().next().map(|c| c.certified.clone())
    }

    /// Every served certificate, for `/healthz`.
    pub fn status(&self) -> Vec<CertStatus> {
        let mut out = Vec::new();
        for source in SOURCES {
            for (name, cert) in self.layers[layer_index(source)].load().iter() {
                out.push(CertStatus {
                    name: name.clone(),
                    source,
                    not_after: rfc3339(cert.not_after),
                    not_after_unix: cert.not_after,
                    issuer: cert.issuer.clone(),
                    fingerprint: cert.fingerprint.clone(),
                });
            }
        }
        out
    }
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(sni) => self.lookup(sni).map(|c| c.certified),
            None => self.without_sni(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> ServedCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let c = params.self_signed(&key).unwrap();
        ServedCert::from_pem(&c.pem(), &key.serialize_pem()).unwrap()
    }

    #[test]
    fn exact_and_wildcard_names() {
        let r = CertResolver::default();
        let exact = cert(&["a.example.com"]);
        let wild = cert(&["*.example.com"]);
        r.insert_for_its_names(CertSource::Acme, &exact);
        r.insert_for_its_names(CertSource::Store, &wild);
        assert_eq!(
            r.lookup("A.example.com.").unwrap().fingerprint,
            exact.fingerprint
        );
        assert_eq!(
            r.lookup("b.example.com").unwrap().fingerprint,
            wild.fingerprint
        );
        assert!(r.lookup("example.com").is_none());
        assert!(r.lookup("x.b.example.com").is_none());
        assert!(r.lookup("other.test").is_none());
    }

    #[test]
    fn files_win_over_acme_over_store() {
        let r = CertResolver::default();
        let (f, a, s) = (cert(&["n.test"]), cert(&["n.test"]), cert(&["n.test"]));
        r.insert_for_its_names(CertSource::Store, &s);
        assert_eq!(r.lookup("n.test").unwrap().fingerprint, s.fingerprint);
        r.insert_for_its_names(CertSource::Acme, &a);
        assert_eq!(r.lookup("n.test").unwrap().fingerprint, a.fingerprint);
        r.insert_for_its_names(CertSource::Files, &f);
        assert_eq!(r.lookup("n.test").unwrap().fingerprint, f.fingerprint);
        r.replace(CertSource::Files, Vec::new());
        assert_eq!(r.lookup("n.test").unwrap().fingerprint, a.fingerprint);
        assert_eq!(r.status().len(), 2);
    }
}
