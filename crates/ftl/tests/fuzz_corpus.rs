//! Runs the fuzz targets' entry functions over their seed corpora (and simple mutations of
//! them), so the normal test suite exercises them without cargo-fuzz.

use std::path::Path;

/// The seeds of `target`: (hand-written, bytes), hand-written first.
fn corpus(target: &str) -> Vec<(bool, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seeds: Vec<(bool, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            // The fuzzer names what it keeps by its SHA-1; the hand-written seeds have names.
            let fuzzer = name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit());
            (fuzzer, std::fs::read(path).unwrap())
        })
        .collect();
    assert!(!seeds.is_empty(), "empty corpus {}", dir.display());
    seeds.sort();
    seeds
        .into_iter()
        .map(|(fuzzer, seed)| (!fuzzer, seed))
        .collect()
}

/// Deterministic cheap mutations: every truncation point and single-byte flips.
fn mutations(seed: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let truncations = (0..seed.len()).map(|len| seed[..len].to_vec());
    let flips = (0..seed.len()).flat_map(move |at| {
        [0x01u8, 0x80, 0xff].into_iter().map(move |mask| {
            let mut mutated = seed.to_vec();
            mutated[at] ^= mask;
            mutated
        })
    });
    truncations.chain(flips)
}

#[test]
fn server_session_seeds_reach_deep_states() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/server_session");
    let happy = deadsfu_ftl::fuzz::server_session(&std::fs::read(dir.join("happy")).unwrap());
    assert!(happy.started && happy.ended, "{happy:?}");
    assert_eq!(happy.media, 3, "{happy:?}");
    let terminate =
        deadsfu_ftl::fuzz::server_session(&std::fs::read(dir.join("terminate")).unwrap());
    assert!(terminate.started && terminate.ended, "{terminate:?}");
}

#[test]
fn server_session_corpus() {
    for (hand_written, seed) in corpus("server_session") {
        deadsfu_ftl::fuzz::server_session(&seed);
        // The fuzzer's own finds run as they are; the hand-written seeds also mutated.
        if !hand_written {
            continue;
        }
        for mutated in mutations(&seed) {
            deadsfu_ftl::fuzz::server_session(&mutated);
        }
    }
}

#[test]
fn udp_datagram_corpus() {
    for (hand_written, seed) in corpus("udp_datagram") {
        deadsfu_ftl::fuzz::udp_datagram(&seed);
        if !hand_written {
            continue;
        }
        for mutated in mutations(&seed) {
            deadsfu_ftl::fuzz::udp_datagram(&mutated);
        }
    }
}
