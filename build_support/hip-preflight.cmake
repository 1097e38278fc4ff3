# rocm-llama's HIP preflight: checks ROCm, its HIP version and the HIP compiler before
# llama.cpp's CMake gets to `enable_language(HIP)`, and stops with one message that names
# what is missing and how to fix it.
#
# Wiring: `.cargo/config.toml` sets CMAKE_PROJECT_INCLUDE_BEFORE to this file; llama-cpp-sys-2
# forwards every CMAKE_* variable to llama.cpp's CMake, which includes the file before its
# first project() call. Cargo runs rocm-llama's own build.rs only after llama-cpp-sys-2's
# build script (the `links = "llama"` ordering), too late to stop a failing build early.
# Does nothing unless GGML_HIP is on. Also runs in script mode for the tests:
#   cmake -DGGML_HIP=ON -P build_support/hip-preflight.cmake
# The same search order as build_support/rocm.rs (ROCM_PATH, HIP_PATH and its parent,
# /opt/rocm, /usr), which records the version for `rocm-llama info`.

if(NOT GGML_HIP)
    return()
endif()
include_guard(GLOBAL)

set(_rl_min_major 6)
set(_rl_min_minor 1)

# Candidate roots.
set(_rl_roots "")
foreach(_rl_var ROCM_PATH HIP_PATH)
    if(DEFINED ENV{${_rl_var}} AND NOT "$ENV{${_rl_var}}" STREQUAL "")
        file(TO_CMAKE_PATH "$ENV{${_rl_var}}" _rl_p)
        list(APPEND _rl_roots "${_rl_p}")
        get_filename_component(_rl_name "${_rl_p}" NAME)
        if(_rl_name STREQUAL "hip")
            get_filename_component(_rl_parent "${_rl_p}" DIRECTORY)
            list(APPEND _rl_roots "${_rl_parent}")
        endif()
    endif()
endforeach()
list(APPEND _rl_roots /opt/rocm /usr)
list(REMOVE_DUPLICATES _rl_roots)

# The first root with a HIP version.
set(_rl_root "")
foreach(_rl_r IN LISTS _rl_roots)
    set(_rl_major "")
    set(_rl_minor "")
    if(EXISTS "${_rl_r}/include/hip/hip_version.h")
        file(STRINGS "${_rl_r}/include/hip/hip_version.h" _rl_lines REGEX "^#define HIP_VERSION_(MAJOR|MINOR) ")
        foreach(_rl_l IN LISTS _rl_lines)
            if(_rl_l MATCHES "^#define HIP_VERSION_MAJOR +([0-9]+)")
                set(_rl_major "${CMAKE_MATCH_1}")
            elseif(_rl_l MATCHES "^#define HIP_VERSION_MINOR +([0-9]+)")
                set(_rl_minor "${CMAKE_MATCH_1}")
            endif()
        endforeach()
        set(_rl_source "${_rl_r}/include/hip/hip_version.h")
    endif()
    if(_rl_major STREQUAL "" AND EXISTS "${_rl_r}/.info/version")
        file(READ "${_rl_r}/.info/version" _rl_text)
        if(_rl_text MATCHES "^([0-9]+)\\.([0-9]+)")
            set(_rl_major "${CMAKE_MATCH_1}")
            set(_rl_minor "${CMAKE_MATCH_2}")
            set(_rl_source "${_rl_r}/.info/version")
        endif()
    endif()
    if(NOT _rl_major STREQUAL "" AND NOT _rl_minor STREQUAL "")
        set(_rl_root "${_rl_r}")
        break()
    endif()
endforeach()

string(REPLACE ";" ", " _rl_tried "${_rl_roots}")
if(_rl_root STREQUAL "")
    message(FATAL_ERROR
        "rocm-llama: `--features hip` needs ROCm >= ${_rl_min_major}.${_rl_min_minor}, but no ROCm was found "
        "(looked for include/hip/hip_version.h or .info/version under: ${_rl_tried}). "
        "Install ROCm (AMD's `rocm-hip-sdk`, or Debian/Ubuntu's `hipcc libamdhip64-dev libhipblas-dev "
        "librocblas-dev`) and point ROCM_PATH (AMD's layout, e.g. /opt/rocm) or HIP_PATH (a distribution's, /usr) at it.")
endif()
if(_rl_major LESS _rl_min_major OR (_rl_major EQUAL _rl_min_major AND _rl_minor LESS _rl_min_minor))
    message(FATAL_ERROR
        "rocm-llama: ROCm at ${_rl_root} has HIP ${_rl_major}.${_rl_minor} (read from ${_rl_source}), but "
        "llama.cpp's HIP backend needs HIP >= ${_rl_min_major}.${_rl_min_minor}. Install ROCm 6.1 or newer and "
        "point ROCM_PATH at it, or build without `--features hip`.")
endif()

# The HIP compiler: ROCm's clang++ (AMD's layout: <rocm>/llvm/bin or <rocm>/lib/llvm/bin; a
# distribution's: the folder `hipconfig --hipclangpath` names, e.g. /usr/lib/llvm-21/bin).
set(_rl_compiler "")
set(_rl_looked "")
if(DEFINED CMAKE_HIP_COMPILER AND NOT CMAKE_HIP_COMPILER STREQUAL "")
    set(_rl_given "${CMAKE_HIP_COMPILER}")
elseif(DEFINED ENV{HIPCXX} AND NOT "$ENV{HIPCXX}" STREQUAL "")
    set(_rl_given "$ENV{HIPCXX}")
endif()
if(DEFINED _rl_given AND NOT IS_ABSOLUTE "${_rl_given}")
    find_program(_rl_given_path "${_rl_given}" NO_CACHE)
    if(_rl_given_path)
        set(_rl_given "${_rl_given_path}")
    endif()
endif()
if(DEFINED _rl_given)
    if(NOT EXISTS "${_rl_given}" OR IS_DIRECTORY "${_rl_given}")
        message(FATAL_ERROR
            "rocm-llama: the HIP compiler `${_rl_given}` (CMAKE_HIP_COMPILER or HIPCXX) does not exist. "
            "Point it at ROCm's clang++ (e.g. /opt/rocm/lib/llvm/bin/clang++, or /usr/lib/llvm-21/bin/clang++ "
            "with Debian/Ubuntu's hipcc) or unset it.")
    endif()
    set(_rl_compiler "${_rl_given}")
else()
    foreach(_rl_c "${_rl_root}/llvm/bin/clang++" "${_rl_root}/lib/llvm/bin/clang++")
        list(APPEND _rl_looked "${_rl_c}")
        if(EXISTS "${_rl_c}")
            set(_rl_compiler "${_rl_c}")
            break()
        endif()
    endforeach()
    if(_rl_compiler STREQUAL "")
        # The ROCm root's bin folder, then PATH (not CMake's own system folders, so the
        # search is the same in script mode and in a project).
        find_program(_rl_hipconfig hipconfig HINTS "${_rl_root}/bin" PATHS ENV PATH NO_DEFAULT_PATH NO_CACHE)
        if(_rl_hipconfig)
            execute_process(COMMAND "${_rl_hipconfig}" --hipclangpath
                OUTPUT_VARIABLE _rl_clang_dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
            list(APPEND _rl_looked "${_rl_clang_dir}/clang++ (hipconfig --hipclangpath)")
            if(NOT _rl_clang_dir STREQUAL "" AND EXISTS "${_rl_clang_dir}/clang++")
                set(_rl_compiler "${_rl_clang_dir}/clang++")
            endif()
        else()
            list(APPEND _rl_looked "hipconfig (not found)")
        endif()
    endif()
    if(_rl_compiler STREQUAL "")
        string(REPLACE ";" ", " _rl_looked_text "${_rl_looked}")
        message(FATAL_ERROR
            "rocm-llama: ROCm ${_rl_major}.${_rl_minor} is at ${_rl_root}, but no HIP compiler (ROCm's clang++) "
            "was found (looked at: ${_rl_looked_text}). Install it (AMD's `rocm-llvm`, or Debian/Ubuntu's `hipcc`, "
            "which brings its clang) or set CMAKE_HIP_COMPILER to its clang++.")
    endif()
    # Hand the compiler found to llama.cpp's enable_language(HIP) (a cache entry, as -D would).
    if(NOT CMAKE_SCRIPT_MODE_FILE)
        set(CMAKE_HIP_COMPILER "${_rl_compiler}" CACHE FILEPATH "HIP compiler (found by rocm-llama's preflight)")
    endif()
endif()

# clang reads ROCM_PATH as the place of the device libraries (<ROCM_PATH>/amdgcn/bitcode).
# A distribution's ROCm keeps them inside clang's own folder instead, so ROCM_PATH=/usr
# there breaks every HIP compile with "cannot find ROCm device library".
if(DEFINED ENV{ROCM_PATH} AND NOT "$ENV{ROCM_PATH}" STREQUAL "" AND NOT DEFINED ENV{HIP_DEVICE_LIB_PATH})
    file(GLOB _rl_bitcode "$ENV{ROCM_PATH}/amdgcn/bitcode/ocml.bc" "$ENV{ROCM_PATH}/lib/llvm/lib/clang/*/lib/amdgcn/bitcode/ocml.bc")
    if(NOT _rl_bitcode)
        message(FATAL_ERROR
            "rocm-llama: ROCM_PATH=$ENV{ROCM_PATH} holds no device libraries (amdgcn/bitcode/ocml.bc), and clang "
            "looks for them there whenever ROCM_PATH is set. With a distribution's ROCm (Debian/Ubuntu packages "
            "under /usr) unset ROCM_PATH and set HIP_PATH=/usr; otherwise set HIP_DEVICE_LIB_PATH to the folder "
            "holding ocml.bc.")
    endif()
endif()

message(STATUS "rocm-llama: ROCm ${_rl_major}.${_rl_minor} at ${_rl_root}, HIP compiler ${_rl_compiler}")
