//! Declares `cfg(fuzzing)` (set by cargo-fuzz), under which the write log's
//! record decoder does not reject records for bad checksums, so the fuzzer
//! can reach the parser behind them.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
}
