#!/usr/bin/env bash
# The test suite (and the random drivers) against llama.cpp built with AddressSanitizer.
# llama-cpp-sys-2 forwards CMAKE_* variables, so llama.cpp's C and C++ get -fsanitize=address
# through CMAKE_C_FLAGS/CMAKE_CXX_FLAGS; the final links add the ASan runtime. Rust code is
# not instrumented (that needs a nightly compiler), but its heap goes through the same
# intercepted malloc, so llama.cpp overrunning a buffer Rust handed it is caught.
# Leak detection is off: llama.cpp's process-wide backend state is never freed by design
# (leaks are covered by the engine's RSS test).
#
# ASan keeps freed memory in quarantine (256 MB), which grows the process like a leak would, so
# the engine's RSS test runs separately with the quarantine off. The random drivers run for
# ROCM_LLAMA_FUZZ_SECS (default here 120 s per target).
#
#   bash scripts/test/asan.sh            (target dir: target/asan; log lines "SUMMARY: AddressSanitizer" mean a finding)
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/dev/setup.sh
ROCM_LLAMA_TEST_MODEL="$(bash scripts/test/model.sh)"
export ROCM_LLAMA_TEST_MODEL
export CARGO_TARGET_DIR="$PWD/target/asan"
export CMAKE_C_FLAGS="-fsanitize=address -fno-omit-frame-pointer"
export CMAKE_CXX_FLAGS="-fsanitize=address -fno-omit-frame-pointer"
# Rust links with -nodefaultlibs, so the ASan runtime is named explicitly.
export RUSTFLAGS="-C link-arg=-fsanitize=address -C link-arg=-lasan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:print_summary=1:verify_asan_link_order=0"
# The runtime must come first among the libraries (the link cannot put it there), so the test
# binaries run with it preloaded; processes they start inherit it.
asan_so="$(gcc -print-file-name=libasan.so)"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="env LD_PRELOAD=$asan_so"
export ROCM_LLAMA_FUZZ_SECS="${ROCM_LLAMA_FUZZ_SECS:-120}"
rss_test=a_thousand_short_requests_leave_no_cells_and_no_growth
status=0
# The control first: ASan must report an overflow deliberately made inside llama.cpp.
cargo test --release --features async --locked --test hostile asan_control -- --ignored || status=$?
cargo test --release --features async --locked --no-fail-fast -- --skip "$rss_test" || status=$?
ASAN_OPTIONS="$ASAN_OPTIONS:quarantine_size_mb=0" \
    cargo test --release --features async --locked --test engine "$rss_test" || status=$?
exit "$status"
