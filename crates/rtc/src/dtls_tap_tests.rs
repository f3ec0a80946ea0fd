//! Tests of `dtls_tap.rs`.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// A DTLS connection that reports itself connected, then waits; notes being dropped.
#[derive(Debug)]
struct FakeDtls {
    outputs: Vec<&'static str>,
    dropped: Arc<AtomicBool>,
    later: Instant,
}

impl Drop for FakeDtls {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

impl DtlsInstance for FakeDtls {
    fn set_active(&mut self, _: bool) {}
    fn handle_packet(&mut self, _: &[u8]) -> Result<(), DtlsImplError> {
        Ok(())
    }
    fn poll_output<'a>(&mut self, _: &'a mut [u8]) -> DtlsOutput<'a> {
        match self.outputs.pop() {
            Some("connected") => DtlsOutput::Connected,
            Some(_) => DtlsOutput::ApplicationData(b"sctp"),
            None => DtlsOutput::Timeout(self.later),
        }
    }
    fn handle_timeout(&mut self, _: Instant) -> Result<(), DtlsImplError> {
        Ok(())
    }
    fn send_application_data(&mut self, _: &[u8]) -> Result<(), DtlsImplError> {
        Ok(())
    }
    fn is_active(&self) -> bool {
        false
    }
    fn protocol_version(&self) -> Option<ProtocolVersion> {
        None
    }
    fn close(&mut self) -> Result<(), DtlsImplError> {
        Ok(())
    }
}

fn tap(outputs: Vec<&'static str>, t0: Instant) -> (TapInstance, Arc<AtomicBool>) {
    let dropped = Arc::new(AtomicBool::new(false));
    let fake = FakeDtls {
        outputs,
        dropped: dropped.clone(),
        later: t0 + Duration::from_secs(3600),
    };
    let tap = TapInstance {
        inner: Some(Box::new(fake)),
        unbuilt: None,
        active_set: false,
        active: false,
        version: None,
        now: t0,
        connected: false,
        connected_at: None,
        carries_data: false,
    };
    (tap, dropped)
}

fn timeout_of(tap: &mut TapInstance) -> Instant {
    let mut buf = [0u8; 64];
    loop {
        if let DtlsOutput::Timeout(t) = tap.poll_output(&mut buf) {
            return t;
        }
    }
}

/// Counts the connections it builds.
#[derive(Debug, Default)]
struct CountingProvider {
    built: std::sync::atomic::AtomicUsize,
}

impl DtlsProvider for CountingProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        None
    }
    fn new_dtls(
        &self,
        _: &DtlsCert,
        now: Instant,
        _: DtlsVersion,
        _: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        self.built.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeDtls {
            outputs: Vec::new(),
            dropped: Arc::default(),
            later: now + Duration::from_secs(3600),
        }))
    }
    fn is_test(&self) -> bool {
        true
    }
}

fn unbuilt(provider: &'static CountingProvider, t0: Instant) -> Box<dyn DtlsInstance> {
    let tap = TapProvider {
        inner: provider,
        lazy: true,
    };
    let cert = DtlsCert {
        certificate: vec![1],
        private_key: vec![2],
    };
    tap.new_dtls(&cert, t0, DtlsVersion::Dtls12, None).unwrap()
}

#[test]
fn a_passive_connection_is_built_at_the_peers_first_record() {
    static PROVIDER: std::sync::LazyLock<CountingProvider> =
        std::sync::LazyLock::new(CountingProvider::default);
    let t0 = Instant::now();
    let mut dtls = unbuilt(&PROVIDER, t0);
    dtls.set_active(false);
    dtls.handle_timeout(t0 + Duration::from_millis(10)).unwrap();
    // str0m's nudge at start and its polls build nothing.
    dtls.handle_packet(&[]).unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(dtls.poll_output(&mut buf), DtlsOutput::Timeout(_)));
    assert!(!dtls.is_active());
    assert!(matches!(
        dtls.send_application_data(b"x"),
        Err(DtlsImplError::HandshakePending)
    ));
    assert_eq!(PROVIDER.built.load(Ordering::SeqCst), 0);
    dtls.handle_packet(b"client hello").unwrap();
    assert_eq!(PROVIDER.built.load(Ordering::SeqCst), 1);
    dtls.handle_packet(b"more").unwrap();
    assert_eq!(PROVIDER.built.load(Ordering::SeqCst), 1, "built once");
}

/// An active one when str0m first polls it (the peer that only writes an answer is never
/// polled, so never builds one).
#[test]
fn an_active_connection_is_built_when_first_polled() {
    static PROVIDER: std::sync::LazyLock<CountingProvider> =
        std::sync::LazyLock::new(CountingProvider::default);
    let t0 = Instant::now();
    let mut dtls = unbuilt(&PROVIDER, t0);
    dtls.set_active(true);
    dtls.handle_timeout(t0).unwrap();
    dtls.handle_packet(&[]).unwrap();
    assert_eq!(PROVIDER.built.load(Ordering::SeqCst), 0);
    let mut buf = [0u8; 64];
    let _ = dtls.poll_output(&mut buf);
    assert_eq!(PROVIDER.built.load(Ordering::SeqCst), 1);
    let _ = dtls.poll_output(&mut buf);
    assert_eq!(PROVIDER.built.load(Ordering::SeqCst), 1, "built once");
}

#[test]
fn retires_the_connection_after_the_grace_period() {
    let t0 = Instant::now();
    let (mut tap, dropped) = tap(vec!["connected"], t0);
    // Connected: str0m is asked for the time at once.
    assert_eq!(timeout_of(&mut tap), t0);
    let t1 = t0 + Duration::from_millis(50);
    tap.handle_timeout(t1).unwrap();
    assert_eq!(timeout_of(&mut tap), t1 + RETIRE_AFTER);
    tap.handle_timeout(t1 + RETIRE_AFTER - Duration::from_millis(1))
        .unwrap();
    assert!(
        !dropped.load(Ordering::SeqCst),
        "kept during the grace period"
    );
    tap.handle_timeout(t1 + RETIRE_AFTER).unwrap();
    assert!(dropped.load(Ordering::SeqCst), "retired after it");
    // Late records are ignored; the session's view of DTLS stays connected.
    assert!(tap.handle_packet(b"late record").is_ok());
    assert!(timeout_of(&mut tap) > t1 + RETIRE_AFTER + Duration::from_secs(3600));
    assert!(!tap.is_closed());
}

#[test]
fn keeps_a_connection_that_carries_a_data_channel() {
    let t0 = Instant::now();
    let (mut tap, dropped) = tap(vec!["data", "connected"], t0);
    assert_eq!(timeout_of(&mut tap), t0 + Duration::from_secs(3600));
    tap.handle_timeout(t0 + RETIRE_AFTER * 10).unwrap();
    assert!(!dropped.load(Ordering::SeqCst));
}
