# rocm-llama's Vulkan preflight: checks the Vulkan headers, glslc, SPIR-V headers and the
# loader's link library before llama.cpp's CMake reaches ggml-vulkan, and stops with one
# message naming what is missing and what to install. Run through build_support/preflight.cmake
# (CMAKE_PROJECT_INCLUDE_BEFORE in .cargo/config.toml). Does nothing unless GGML_VULKAN is on.
# Also runs in script mode for the tests:
#   cmake -DGGML_VULKAN=ON -P build_support/vulkan-preflight.cmake
# Looks where FindVulkan looks: $VULKAN_SDK first, then the system.
#
# Why the header check: the pinned llama.cpp's ggml-vulkan uses VK_EXT_layer_settings, which
# Debian 12's headers (1.3.239) lack; the compile would fail minutes in with "'LayerSettingEXT'
# is not a member of 'vk'". Debian 13's headers (1.4.309) have it.

if(NOT GGML_VULKAN)
    return()
endif()
include_guard(GLOBAL)

set(_rv_sdk "")
if(DEFINED ENV{VULKAN_SDK} AND NOT "$ENV{VULKAN_SDK}" STREQUAL "")
    file(TO_CMAKE_PATH "$ENV{VULKAN_SDK}" _rv_sdk)
endif()
set(_rv_roots "")
if(_rv_sdk)
    list(APPEND _rv_roots "${_rv_sdk}")
endif()
# The system's prefixes (the tests stage fake ones through ROCM_LLAMA_VULKAN_SYSTEM_ROOTS).
if(NOT DEFINED ROCM_LLAMA_VULKAN_SYSTEM_ROOTS)
    set(ROCM_LLAMA_VULKAN_SYSTEM_ROOTS /usr /usr/local)
endif()
list(APPEND _rv_roots ${ROCM_LLAMA_VULKAN_SYSTEM_ROOTS})

set(_rv_fix_debian12 "On Debian 12, `bash scripts/vulkan/sdk.sh` (in rocm-llama's repository) \
makes a VULKAN_SDK folder from Debian 13's headers and glslc without installing them; \
Debian 13 and later: apt-get install libvulkan-dev glslc spirv-headers; or set VULKAN_SDK to LunarG's Vulkan SDK.")

# Headers.
set(_rv_include "")
foreach(_rv_r IN LISTS _rv_roots)
    if(EXISTS "${_rv_r}/include/vulkan/vulkan_core.h")
        set(_rv_include "${_rv_r}/include")
        break()
    endif()
endforeach()
if(NOT _rv_include)
    message(FATAL_ERROR "rocm-llama: --features vulkan needs the Vulkan headers (vulkan/vulkan_core.h), \
found in none of: ${_rv_roots}. Debian/Ubuntu: apt-get install libvulkan-dev; Fedora: vulkan-headers \
vulkan-loader-devel; Arch: vulkan-headers; or set VULKAN_SDK. ${_rv_fix_debian12}")
endif()
file(STRINGS "${_rv_include}/vulkan/vulkan_core.h" _rv_version_line REGEX "^#define VK_HEADER_VERSION [0-9]+")
string(REGEX REPLACE "^#define VK_HEADER_VERSION ([0-9]+).*" "\\1" _rv_header_version "${_rv_version_line}")
file(STRINGS "${_rv_include}/vulkan/vulkan_core.h" _rv_layer_settings REGEX "VK_EXT_layer_settings")
if(NOT _rv_layer_settings)
    message(FATAL_ERROR "rocm-llama: the Vulkan headers in ${_rv_include} (header version \
${_rv_header_version}) are too old for the pinned llama.cpp, whose Vulkan backend uses \
VK_EXT_layer_settings (Debian 12's libvulkan-dev 1.3.239 lacks it, Debian 13's 1.4.309 has it). \
${_rv_fix_debian12}")
endif()
if(NOT EXISTS "${_rv_include}/vulkan/vulkan.hpp")
    message(FATAL_ERROR "rocm-llama: ${_rv_include}/vulkan has the C headers but not the C++ ones \
(vulkan.hpp) that ggml-vulkan is written against: install libvulkan-dev (Debian/Ubuntu) or \
vulkan-headers, or set VULKAN_SDK.")
endif()

# glslc, the shader compiler ggml-vulkan's build runs on every shader.
set(_rv_glslc "")
foreach(_rv_r IN LISTS _rv_roots)
    if(EXISTS "${_rv_r}/bin/glslc")
        set(_rv_glslc "${_rv_r}/bin/glslc")
        break()
    endif()
endforeach()
if(NOT _rv_glslc AND NOT ROCM_LLAMA_VULKAN_SYSTEM_ROOTS STREQUAL "")
    find_program(_rv_glslc_found glslc)
    if(_rv_glslc_found)
        set(_rv_glslc "${_rv_glslc_found}")
    endif()
endif()
if(NOT _rv_glslc)
    message(FATAL_ERROR "rocm-llama: --features vulkan needs glslc (the shader compiler), found neither \
under VULKAN_SDK nor on PATH. Debian/Ubuntu: apt-get install glslc; Fedora: glslc; Arch: shaderc. \
${_rv_fix_debian12}")
endif()

# SPIR-V headers, which ggml-vulkan finds with find_package(SPIRV-Headers CONFIG).
set(_rv_spirv "")
set(_rv_spirv_dirs "")
foreach(_rv_r IN LISTS _rv_roots CMAKE_PREFIX_PATH)
    file(GLOB _rv_multiarch LIST_DIRECTORIES true "${_rv_r}/lib/*/cmake/SPIRV-Headers")
    list(APPEND _rv_spirv_dirs "${_rv_r}/share/cmake/SPIRV-Headers" "${_rv_r}/lib/cmake/SPIRV-Headers" ${_rv_multiarch})
endforeach()
foreach(_rv_d IN LISTS _rv_spirv_dirs)
    if(EXISTS "${_rv_d}/SPIRV-HeadersConfig.cmake" OR EXISTS "${_rv_d}/spirv-headers-config.cmake")
        set(_rv_spirv "${_rv_d}")
        break()
    endif()
endforeach()
if(NOT _rv_spirv)
    message(FATAL_ERROR "rocm-llama: --features vulkan needs the SPIR-V headers' CMake package \
(SPIRV-HeadersConfig.cmake), found in none of the usual places. Debian/Ubuntu: apt-get install \
spirv-headers; Fedora: spirv-headers-devel; Arch: spirv-headers. ${_rv_fix_debian12}")
endif()

# The loader's link library (libvulkan.so, from libvulkan-dev; the binary then needs
# libvulkan.so.1 wherever it runs).
set(_rv_lib "")
set(_rv_lib_candidates "")
foreach(_rv_r IN LISTS _rv_roots)
    file(GLOB _rv_found "${_rv_r}/lib/libvulkan.so" "${_rv_r}/lib/*/libvulkan.so" "${_rv_r}/lib64/libvulkan.so")
    list(APPEND _rv_lib_candidates ${_rv_found})
endforeach()
foreach(_rv_l IN LISTS _rv_lib_candidates)
    if(EXISTS "${_rv_l}")
        set(_rv_lib "${_rv_l}")
        break()
    endif()
endforeach()
if(NOT _rv_lib)
    message(FATAL_ERROR "rocm-llama: --features vulkan links the Vulkan loader, but no libvulkan.so was \
found (under VULKAN_SDK/lib or the system's library folders). Debian/Ubuntu: apt-get install \
libvulkan-dev; Fedora: vulkan-loader-devel; Arch: vulkan-icd-loader.")
endif()

message(STATUS "rocm-llama: Vulkan headers ${_rv_include} (version ${_rv_header_version}), glslc ${_rv_glslc}, \
SPIR-V headers ${_rv_spirv}, loader ${_rv_lib}")
