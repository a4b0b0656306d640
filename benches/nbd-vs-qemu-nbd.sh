#!/usr/bin/env bash
# nbd-server (aioctx IOThreads) against qemu-nbd --aio=io_uring: the same qemu-img bench client, the same
# file, the same socket kind. Prints IOPS side by side and the ratio (aioctx / qemu-nbd, > 1: aioctx is
# faster), for 4 KiB sequential reads and writes at depth 1 and 64, on a Unix socket, on TCP, and on TCP
# with TLS (both servers given the same x509 credentials, made here with openssl, and verifying the
# client's certificate; qemu-img bench cannot take TLS credentials and libnbd refuses fio's, so nbdcopy
# is the client of those rows: one connection, DEPTH requests in flight, 4 KiB requests, no zero
# detection or extents, reading the whole of a COUNT x 4 KiB export into null: or writing a file over it). Then a sparse copy: `nbdcopy` of a 1 GiB export with 10% data (1 MiB written
# every 10 MiB) to a local file, from each server: the copy's time and the bytes it allocated.
#
#   benches/nbd-vs-qemu-nbd.sh [unix|tcp|tls|sparse|all]...      (default: all)
#
# Environment: COUNT (requests per run, default 75000), SIZE (file size, default 1G), RUNS (runs per
# cell and server, alternating between the servers; the median is kept, default 5), POLL_OFF=1 adds a
# column for nbd-server with busy-polling off, POLL_OFF=2 a second such server as a control: how far
# two identical servers differ on this machine is the noise any on/off ratio has to clear. POLL_MAX_NS
# sets the polling nbd-server's --poll-max-ns (default: the IOThread default).
set -euo pipefail

kinds=("${@:-all}")
count=${COUNT:-75000}
size=${SIZE:-1G}
runs=${RUNS:-5}
root=$(cd "$(dirname "$0")/.." && pwd)

for tool in qemu-img qemu-nbd nbdcopy openssl; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (scripts/test installs it)" >&2; exit 1; }
done

cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p examples --example nbd-server
server_bin="$root/target/release/examples/nbd-server"

work=$(mktemp -d /tmp/nbd-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

image="$work/disk.img"
# A fully written file, so neither server reads holes.
dd if=/dev/zero of="$image" bs=1M count=$(( $(numfmt --from=iec "$size") / 1048576 )) status=none
sync "$image"

# make_creds DIR: a CA, a server certificate for 127.0.0.1 and a client certificate, laid out as QEMU's
# tls-creds-x509 expects: DIR/server (ca-cert, server-cert, server-key) and DIR/client (ca-cert,
# client-cert, client-key).
make_creds() {
    local dir=$1
    mkdir -p "$dir/server" "$dir/client"
    (
        cd "$dir"
        printf '[req]\ndistinguished_name = dn\n[dn]\n[v3]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n' >ca.cnf
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem -days 2 \
            -subj "/CN=nbd bench CA" -extensions v3 -config ca.cnf 2>/dev/null
        for leaf in server client; do
            if [ "$leaf" = server ]; then
                printf 'extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:127.0.0.1\n' >"$leaf.ext"
            else
                printf 'extendedKeyUsage = clientAuth\n' >"$leaf.ext"
            fi
            openssl req -newkey rsa:2048 -nodes -keyout "$leaf-key.pem" -out "$leaf.csr" -subj "/CN=$leaf" 2>/dev/null
            openssl x509 -req -in "$leaf.csr" -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
                -out "$leaf-cert.pem" -days 2 -extfile "$leaf.ext" 2>/dev/null
            cp ca-cert.pem "$leaf-cert.pem" "$leaf-key.pem" "$leaf/"
        done
    )
}
creds="$work/creds"
make_creds "$creds"
# The TLS rows' export and the file their writes copy over it: COUNT x 4 KiB each.
tls_image="$work/tls.img"
tls_source="$work/tls-source.img"
dd if=/dev/zero of="$tls_image" bs=4k count="$count" status=none
dd if=/dev/zero of="$tls_source" bs=4k count="$count" status=none

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_ready KIND ADDR: until the socket accepts connections (bounded: 10 s).
wait_ready() {
    for _ in $(seq 1 200); do
        if [ "$1" = unix ]; then
            [ -S "$2" ] && return 0
        else
            (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
        fi
        sleep 0.05
    done
    echo "server on $2 did not come up" >&2
    exit 1
}

# start SERVER KIND [FILE]: starts nbd-server / nbd-server-nopoll(2) / qemu-nbd on its own socket, exporting
# FILE (default: the benchmark image), and sets targets[SERVER] to qemu-img's arguments naming the
# export (a URI, or a TLS object and image options, one per line) and uris[SERVER] to libnbd's URI.
declare -A targets uris
start() {
    local server=$1 kind=$2 file=${3:-$image} addr args=() target
    if [ "$kind" = unix ]; then
        addr="$work/$server.sock"
        rm -f "$addr"
        uris[$server]="nbd+unix:///disk?socket=$addr"
        target="-f"$'\n'"raw"$'\n'"${uris[$server]}"
    else
        addr=$(free_port)
        uris[$server]="nbd://127.0.0.1:$addr/disk"
        target="-f"$'\n'"raw"$'\n'"${uris[$server]}"
    fi
    if [ "$kind" = tls ]; then
        uris[$server]="nbds://127.0.0.1:$addr/disk?tls-certificates=$creds/client"
        target=
    fi
    case $server in
        nbd-server|nbd-server-nopoll|nbd-server-nopoll2)
            [ "$server" != nbd-server ] && args+=(--poll-max-ns 0)
            [ "$server" = nbd-server ] && [ -n "${POLL_MAX_NS:-}" ] && args+=(--poll-max-ns "$POLL_MAX_NS")
            if [ "$kind" = unix ]; then args+=(--socket "$addr"); else args+=(--listen "127.0.0.1:$addr"); fi
            [ "$kind" = tls ] && args+=(--tls-creds "$creds/server")
            "$server_bin" "$file" --iothreads 1 "${args[@]}" >/dev/null 2>&1 &
            ;;
        qemu-nbd)
            if [ "$kind" = unix ]; then args+=(-k "$addr"); else args+=(-b 127.0.0.1 -p "$addr"); fi
            if [ "$kind" = tls ]; then
                args+=(--object "tls-creds-x509,id=tls0,dir=$creds/server,endpoint=server" --tls-creds tls0)
            fi
            qemu-nbd -f raw -x disk --aio=io_uring --persistent --shared=8 "${args[@]}" "$file" &
            ;;
    esac
    pids+=("$!")
    wait_ready "$kind" "$addr"
    targets[$server]=$target
    # Warm up (page cache, adaptive polling, first-connection costs) outside the measurement.
    if [ "$kind" = tls ]; then
        nbdcopy_iops "$server" 16 0 >/dev/null
    else
        bench_args "$server" -c 5000 -d 16 -s 4k
        qemu-img "${bench[@]}" >/dev/null
    fi
}

# nbdcopy_iops SERVER DEPTH WRITE: the IOPS of nbdcopy reading SERVER's whole (TLS) export into null:,
# or writing tls_source over it, in 4 KiB requests with DEPTH in flight on one connection.
nbdcopy_iops() {
    local args=(--connections=1 --threads=1 --requests="$2" --request-size=4096 -S 0 --no-extents)
    local start_ns end_ns
    start_ns=$(date +%s%N)
    if [ "$3" = 1 ]; then
        timeout 300 nbdcopy "${args[@]}" "$tls_source" "${uris[$1]}"
    else
        timeout 300 nbdcopy "${args[@]}" "${uris[$1]}" null:
    fi
    end_ns=$(date +%s%N)
    awk -v c="$count" -v n=$((end_ns - start_ns)) 'BEGIN { printf "%d", c / (n / 1e9) }'
}

# bench_args SERVER ARGS...: sets bench to qemu-img's arguments for a bench of ARGS on SERVER's export.
bench_args() {
    local server=$1
    shift
    mapfile -t target <<<"${targets[$server]}"
    bench=(bench "$@" "${target[@]}")
}

stop_all() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}

# once SERVER DEPTH WRITE: the IOPS of one qemu-img bench run (fio's for TLS).
once() {
    local args=(-c "$count" -d "$2" -s 4k) secs
    if [ -z "${targets[$1]}" ]; then
        nbdcopy_iops "$1" "$2" "$3"
        return
    fi
    [ "$3" = 1 ] && args+=(-w)
    bench_args "$1" "${args[@]}"
    secs=$(qemu-img "${bench[@]}" | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
    [ -n "$secs" ] || { echo "qemu-img bench failed on $1's export" >&2; exit 1; }
    awk -v c="$count" -v s="$secs" 'BEGIN { printf "%d", c / s }'
}

median() {
    printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

servers=(nbd-server qemu-nbd)
case ${POLL_OFF:-0} in
    0) ;;
    1) servers=(nbd-server nbd-server-nopoll qemu-nbd) ;;
    2) servers=(nbd-server nbd-server-nopoll nbd-server-nopoll2 qemu-nbd) ;;
    *) echo "POLL_OFF must be 0, 1 or 2" >&2; exit 1 ;;
esac
sparse=0
picked=()
for k in "${kinds[@]}"; do
    case $k in
        all|both) picked+=(unix tcp); [ "$k" = all ] && { picked+=(tls); sparse=1; } ;;
        unix|tcp|tls) picked+=("$k") ;;
        sparse) sparse=1 ;;
        *) echo "unknown row kind $k (unix, tcp, tls, sparse, all)" >&2; exit 1 ;;
    esac
done
kinds=("${picked[@]}")

# All servers run at once; the runs of one cell alternate between them, so load from elsewhere on the
# machine hits every server alike.
declare -A result
for kind in "${kinds[@]}"; do
    file=$image
    [ "$kind" = tls ] && file=$tls_image
    for server in "${servers[@]}"; do start "$server" "$kind" "$file"; done
    for depth in 1 64; do
        for write in 0 1; do
            declare -A samples=()
            for _ in $(seq 1 "$runs"); do
                for server in "${servers[@]}"; do
                    samples[$server]+=" $(once "$server" "$depth" "$write")"
                done
            done
            for server in "${servers[@]}"; do
                # shellcheck disable=SC2086
                result[$kind,$server,$depth,$write]=$(median ${samples[$server]})
            done
        done
    done
    stop_all
done

if ((${#kinds[@]})); then
    echo
    echo "qemu-img bench (the tls rows: nbdcopy), 4 KiB sequential, $count requests, median of $runs runs, file of $size"
    header="| socket | workload | depth | nbd-server IOPS |"
    [ "${POLL_OFF:-0}" != 0 ] && header+=" nbd-server, polling off |"
    [ "${POLL_OFF:-0}" = 2 ] && header+=" the same again (control) |"
    header+=" qemu-nbd IOPS | ratio |"
    echo "$header"
    echo "$header" | sed 's/[^|]/-/g'
    for kind in "${kinds[@]}"; do
        for write in 0 1; do
            for depth in 1 64; do
                ours=${result[$kind,nbd-server,$depth,$write]}
                theirs=${result[$kind,qemu-nbd,$depth,$write]}
                row="| $kind | $([ "$write" = 1 ] && echo write || echo read) | $depth | $ours |"
                [ "${POLL_OFF:-0}" != 0 ] && row+=" ${result[$kind,nbd-server-nopoll,$depth,$write]} |"
                [ "${POLL_OFF:-0}" = 2 ] && row+=" ${result[$kind,nbd-server-nopoll2,$depth,$write]} |"
                row+=" $theirs | $(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", a / b }') |"
                echo "$row"
            done
        done
    done
fi

[ "$sparse" = 1 ] || exit 0

# The sparse copy: 1 GiB with 1 MiB of random data every 10 MiB (103 MiB, 10%), the rest holes. nbdcopy runs
# with zero detection off (-S 0), so only the server's base:allocation extents keep the copy sparse.
sparse_image="$work/sparse.img"
truncate -s 1G "$sparse_image"
head -c 1M /dev/urandom >"$work/chunk"
for i in $(seq 0 102); do
    dd if="$work/chunk" of="$sparse_image" bs=1M seek=$((i * 10)) conv=notrunc status=none
done
sync "$sparse_image"
for server in nbd-server qemu-nbd; do start "$server" unix "$sparse_image"; done
declare -A copy_secs=() copy_bytes=()
for _ in $(seq 1 "$runs"); do
    for server in nbd-server qemu-nbd; do
        out="$work/copy-$server.img"
        rm -f "$out"
        start_ns=$(date +%s%N)
        timeout 300 nbdcopy -S 0 "${uris[$server]}" "$out"
        end_ns=$(date +%s%N)
        cmp -s "$sparse_image" "$out" || { echo "the copy from $server differs from the image" >&2; exit 1; }
        copy_secs[$server]+=" $(awk -v n=$((end_ns - start_ns)) 'BEGIN { printf "%.3f", n / 1e9 }')"
        copy_bytes[$server]=$(( $(stat -c %b "$out") * $(stat -c %B "$out") ))
    done
done
stop_all
echo
echo "nbdcopy -S 0 of a 1 GiB export with 10% data (103 MiB) to a local file, over a Unix socket, median of $runs runs"
echo "| server | seconds | bytes allocated in the copy |"
echo "|--------|---------|-----------------------------|"
for server in nbd-server qemu-nbd; do
    # shellcheck disable=SC2086
    echo "| $server | $(median ${copy_secs[$server]}) | ${copy_bytes[$server]} |"
done
ours=$(median ${copy_secs[nbd-server]})
theirs=$(median ${copy_secs[qemu-nbd]})
echo "time ratio (qemu-nbd / nbd-server, > 1: nbd-server is faster): $(awk -v a="$theirs" -v b="$ours" 'BEGIN { printf "%.2f", a / b }')"
