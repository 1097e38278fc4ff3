# rocm-llama's checks before llama.cpp's CMake configures a GPU backend, each a no-op unless
# its backend is on: HIP (hip-preflight.cmake) and Vulkan (vulkan-preflight.cmake). Wiring:
# `.cargo/config.toml` sets CMAKE_PROJECT_INCLUDE_BEFORE to this file; llama-cpp-sys-2
# forwards every CMAKE_* variable to llama.cpp's CMake, which includes it before its first
# project() call. Cargo runs rocm-llama's own build.rs only after llama-cpp-sys-2's build
# script (the `links = "llama"` ordering), too late to stop a failing build early.
include("${CMAKE_CURRENT_LIST_DIR}/hip-preflight.cmake")
include("${CMAKE_CURRENT_LIST_DIR}/vulkan-preflight.cmake")
