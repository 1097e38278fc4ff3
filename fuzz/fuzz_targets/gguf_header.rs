//! Any bytes through the GGUF header reader: it must return Ok or Err, never panic, and never
//! allocate beyond what the input could hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rocm_llama::gguf::{GgufFile, ReadOptions};

fuzz_target!(|data: &[u8]| {
    let _ = GgufFile::from_bytes(data, ReadOptions::default());
    let _ = GgufFile::from_bytes(data, ReadOptions { max_array_len: 1 << 20, check_tensor_bounds: false });
});
