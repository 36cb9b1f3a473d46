//! Declares `cfg(fuzzing)` (set by cargo-fuzz), under which the sealed-object
//! decoder skips its header checksum and key-id checks so that random bytes
//! reach the chunk decoding (fuzz/fuzz_targets/sealed_decoder.rs).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
}
