#!/bin/bash
# The many-core table (issue 14) on the device machine: 16 cores, Python 3.12, no Twisted, no
# HAProxy, nothing to fetch there.  Two steps:
#
#   here, in the checkout's root (downloads the py3.12 wheels into .whl/ and copies this machine's
#   HAProxy with its libraries and loader into .haproxy/; both are git-ignored via .git/info/exclude):
#       bash benchmarks/device_workers.sh prepare
#
#   there, as one device run with carry [".whl", ".haproxy"] (about 15 MiB) and timeout_s 540:
#       bash benchmarks/device_workers.sh run
#
# `run` installs the wheels into /tmp/site, puts this checkout on PYTHONPATH (twisted/plugins
# holds the splice plugin), and runs `python -m benchmarks.workers_scale` with 1, 2, 4 and 8
# workers beside HAProxy with as many threads; the table lands in $OUT/workers-scale.md (and
# the output in $OUT/workers-scale.log) for docs/performance.md.  It takes about 4 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS="twisted==26.10.0 zope.interface==8.7 automat==25.4.16 constantly==23.10.4 hyperlink==21.0.0
incremental==24.11.0 pyopenssl==26.4.0 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
service-identity==26.1.0 pyasn1 pyasn1-modules typing-extensions==4.16.0 attrs==26.1.0 idna==3.20
prometheus-client==0.26.0"

prepare() {
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    grep -qx '/.haproxy/' .git/info/exclude 2>/dev/null || echo /.haproxy/ >> .git/info/exclude
    rm -rf .whl .haproxy
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS
    local hap
    hap=$(command -v haproxy || true)
    if [ -n "$hap" ]; then
        mkdir -p .haproxy
        cp "$hap" .haproxy/haproxy.bin
        # every library it links, and the loader: run there with exactly these
        ldd "$hap" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do cp -L "$lib" .haproxy/; done
        cat > .haproxy/haproxy <<'EOF'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
exec "$here"/ld-linux-x86-64.so.2 --library-path "$here" "$here"/haproxy.bin "$@"
EOF
        chmod +x .haproxy/haproxy
        .haproxy/haproxy -v | head -1
    else
        echo "no haproxy here: the table will have splice's rows only (apt-get install haproxy first)"
    fi
    du -sh .whl .haproxy 2>/dev/null || true
}

run() {
    local out=${OUT:-/tmp/workers-scale}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1
    [ -x .haproxy/haproxy ] && export PATH="$PWD/.haproxy:$PATH"
    ulimit -n "$(ulimit -Hn)" || true
    python3 -m twisted --version >/dev/null
    { nproc; uname -r; python3 --version; } | tr '\n' ' '; echo
    python3 -m benchmarks.workers_scale --counts "${COUNTS:-1,2,4,8}" --seconds 3 --repeat "${REPEAT:-3}" --loads 6 --origins 4 \
        --markdown "$out/workers-scale.md" 2>&1 | tee "$out/workers-scale.log"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash benchmarks/device_workers.sh prepare|run" >&2; exit 2 ;;
esac
