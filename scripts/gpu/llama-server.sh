# Sourced by scripts/gpu/serve-compare.sh and scripts/gpu/serve-prefix.sh: llama.cpp's CUDA libraries with
# llama-server (through scripts/gpu/setup.sh), its path in $LS, and wait_ready PORT (until a server's
# /v1/models answers, at most 5 minutes).
# Two adaptations of the tree before the build (checked on CPU 2026-12-02, where llama-server
# then built and answered scripts/gpu/loadgen.py): llama-server embeds its web UI, which the
# benchmark does not need, so the asset step gets placeholder files of the names it checks for
# (no network here to fetch or build the real ones); and the sdist's server-mcp.cpp opens its
# MCP config file with a helper the pinned `common` does not have, so that one line opens it
# with std::ifstream directly.
prepare_server_tree() {
    sed -i 's/std::ifstream f = fs_open_ifstream(params.mcp_servers_config, std::ios::in);/std::ifstream f(params.mcp_servers_config, std::ios::in);/' \
        "$BUILD.src/llama.cpp/tools/server/server-mcp.cpp"
    local d="$BUILD.src/llama.cpp/tools/ui/dist"
    mkdir -p "$d"
    echo '<!doctype html><title>llama-server</title><p>web UI not built (benchmark build)</p>' > "$d/index.html"
    for f in manifest.webmanifest build.json version.json; do echo '{}' > "$d/$f"; done
    for f in sw.js bundle.0.js bundle.0.css workbox-0.js; do : > "$d/$f"; done
}
TOOLS="llama-server ${EXTRA_TOOLS:-}" CMAKE_EXTRA="-DLLAMA_BUILD_SERVER=ON" PRE_BUILD=prepare_server_tree
source scripts/gpu/setup.sh
LS="$(tool llama-server)"

wait_ready() {
    for _ in $(seq 600); do
        python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$1/v1/models').status != 200)" \
            2>/dev/null && return 0
        sleep 0.5
    done
    return 1
}
