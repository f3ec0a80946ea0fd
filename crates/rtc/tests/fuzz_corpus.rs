//! The fuzz targets' entry points over their committed seed corpora (and simple mutations of
//! them), so the suite catches a regression without cargo-fuzz.

use std::path::Path;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    // Hand-written seeds first, then the fuzzer's (named by their SHA-1).
    paths.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        (
            name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit()),
            name,
        )
    });
    let mut seeds: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds for {target}");
    // Each seed cut short at every length and with each byte flipped: cheap, and it reaches
    // the error paths the seeds themselves avoid.
    let mut mutated = Vec::new();
    // (The hand-written seeds and the first of the fuzzer's; the rest run as they are.)
    for s in seeds.iter().take(24) {
        for n in 0..s.len().min(200) {
            mutated.push(s[..n].to_vec());
            let mut m = s.clone();
            m[n] ^= 0xff;
            mutated.push(m);
        }
    }
    seeds.extend(mutated);
    seeds
}

#[test]
fn worker_core_corpus() {
    for seed in corpus("worker_core") {
        deadsfu_rtc::fuzz::worker_core(&seed);
    }
}

#[test]
fn offer_summary_corpus() {
    for seed in corpus("offer_summary") {
        deadsfu_rtc::fuzz::offer_summary(&seed);
    }
}

#[test]
fn stun_demux_corpus() {
    for seed in corpus("stun_demux") {
        deadsfu_rtc::fuzz::stun_demux(&seed);
    }
}

#[test]
fn viewer_nacks_corpus() {
    for seed in corpus("viewer_nacks") {
        deadsfu_rtc::fuzz::viewer_nacks(&seed);
    }
}

#[test]
fn dtls_passive_corpus() {
    for seed in corpus("dtls_passive") {
        deadsfu_rtc::fuzz::dtls_passive(&seed);
    }
}
