//! Real ClientHellos recorded as fixtures (Chromium 156 with its post-quantum key share, about
//! 2 KB, and rustls), read whole in pieces of every size; and the fuzz target's entry point
//! over its seed corpus and cheap mutations of it.

use std::path::Path;

use deadsfu_proxy::client_hello::{HelloProgress, HelloReader, fuzz};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

#[test]
fn chromium_post_quantum_hello_in_every_piece_size() {
    let hello = fixture("chromium156_hello.bin");
    assert!(hello.len() > 1800, "{} bytes", hello.len());
    for piece in [1, 2, 3, 100, 536, 1460, hello.len()] {
        let mut r = HelloReader::new();
        let mut last = HelloProgress::NeedMore;
        for chunk in hello.chunks(piece) {
            last = r.push(chunk);
        }
        match last {
            HelloProgress::Hello(info) => {
                assert_eq!(info.sni.as_deref(), Some("svc.test"));
                assert!(info.offers_alpn(b"h2") && info.offers_alpn(b"http/1.1"));
            }
            other => panic!("pieces of {piece}: {other:?}"),
        }
        assert_eq!(r.buffered(), &hello[..]);
    }
}

#[test]
fn rustls_hello() {
    let hello = fixture("rustls_hello.bin");
    match HelloReader::new().push(&hello) {
        HelloProgress::Hello(info) => assert_eq!(info.sni.as_deref(), Some("sfu-a.test")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fuzz_entry_over_the_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/client_hello");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let seed = std::fs::read(entry.unwrap().path()).unwrap();
        fuzz(&seed);
        for cut in (0..seed.len()).step_by(7) {
            fuzz(&seed[..cut]);
            let mut flipped = seed.clone();
            flipped[cut] ^= 0xff;
            fuzz(&flipped);
        }
        n += 1;
    }
    assert!(n >= 2, "corpus has {n} seeds");
}
