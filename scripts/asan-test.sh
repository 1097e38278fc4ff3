#!/usr/bin/env bash
# The test suite (and the random drivers) against llama.cpp built with AddressSanitizer.
# llama-cpp-sys-2 forwards CMAKE_* variables, so llama.cpp's C and C++ get -fsanitize=address
# through CMAKE_C_FLAGS/CMAKE_CXX_FLAGS; the final links add the ASan runtime. Rust code is
# not instrumented (that needs a nightly compiler), but its heap goes through the same
# intercepted malloc, so llama.cpp overrunning a buffer Rust handed it is caught.
# Leak detection is off: llama.cpp's process-wide backend state is never freed by design
# (leaks are covered by the engine's RSS test).
#
#   bash scripts/asan-test.sh [cargo test arguments...]     (target dir: target/asan)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ROCM_LLAMA_TEST_MODEL="$(bash scripts/test-model.sh)"
export ROCM_LLAMA_TEST_MODEL
export CARGO_TARGET_DIR="$PWD/target/asan"
export CMAKE_C_FLAGS="-fsanitize=address -fno-omit-frame-pointer"
export CMAKE_CXX_FLAGS="-fsanitize=address -fno-omit-frame-pointer"
# Rust links with -nodefaultlibs, so the ASan runtime is named explicitly.
export RUSTFLAGS="-C link-arg=-fsanitize=address -C link-arg=-lasan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:print_summary=1:verify_asan_link_order=0"
cargo test --release --features async --locked "$@"
