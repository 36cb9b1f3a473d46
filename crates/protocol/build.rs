//! Declares `cfg(fuzzing)` (set by cargo-fuzz), under which the decoder
//! does not reject frames for bad checksums, so the fuzzer can reach the
//! header parsers and zstd behind them.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
}
