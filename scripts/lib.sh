# Shared set-up steps for scripts/test and scripts/demo (sourced, not run).
# Each step checks first, acts only when needed, and fails with a clear message.

die() { echo "imshift setup: $*" >&2; exit 1; }

# .venv with imshift installed (editable) and the given extras.
ensure_venv() {
    local extras="$1"
    local py="${PYTHON:-python3}"
    command -v "$py" >/dev/null || die "$py not found: install Python 3.11 or newer"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "Python 3.11 or newer is needed ($("$py" --version 2>&1) found); set PYTHON=/path/to/python3.11"
    if [ ! -x .venv/bin/python ]; then
        "$py" -m venv .venv || die "could not create .venv (on Debian: apt-get install python3-venv)"
    fi
    local spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec" \
        || die "pip could not install imshift and its dependencies"
}

# Install a Debian package when its command is missing (we may be root on a fresh machine).
ensure_command() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "imshift setup: installing $pkg" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg"; } >/dev/null \
            || die "apt-get could not install $pkg"
    fi
    command -v "$cmd" >/dev/null || die "$cmd is needed: install $pkg"
}

# A Redis on 127.0.0.1:6379 (the default) or at $IMSHIFT_TEST_REDIS_URL's port.
ensure_redis() {
    ensure_command redis-server redis-server
    ensure_command redis-cli redis-tools
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0
    echo "imshift setup: starting redis-server on 127.0.0.1:6379" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp --logfile /tmp/imshift-redis.log >/dev/null || die "redis-server would not start"
    for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "redis-server did not answer on 127.0.0.1:6379 (see /tmp/imshift-redis.log)"
}

# A PostgreSQL on 127.0.0.1:5432 that lets the current user create databases.
ensure_postgres() {
    ensure_command pg_isready postgresql-client
    pg_isready -h 127.0.0.1 -p 5432 -q && return 0
    if ! command -v pg_ctlcluster >/dev/null; then
        ensure_command pg_ctlcluster postgresql
    fi
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    [ -n "$version" ] || die "no PostgreSQL cluster found under /etc/postgresql"
    echo "imshift setup: starting PostgreSQL $version" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 \
        || pg_ctlcluster "$version" main start || die "PostgreSQL $version would not start"
    for _ in $(seq 50); do pg_isready -h 127.0.0.1 -p 5432 -q && return 0; sleep 0.2; done
    die "PostgreSQL did not answer on 127.0.0.1:5432"
}

# Debian's chromium, for the browser test of the live page (Playwright drives
# it at /usr/bin/chromium: `playwright install` needs a download).
ensure_chromium() {
    [ -x /usr/bin/chromium ] && return 0
    ensure_command chromium chromium
    [ -x /usr/bin/chromium ] || die "the page test needs /usr/bin/chromium: apt-get install chromium"
}
