#!/usr/bin/env bash
# nbd-server (aioctx IOThreads) against qemu-nbd --aio=io_uring: the same qemu-img bench client, the same
# file, the same socket kind. Prints IOPS side by side and the ratio (aioctx / qemu-nbd, > 1: aioctx is
# faster), for 4 KiB sequential reads and writes at depth 1 and 64.
#
#   benches/nbd-vs-qemu-nbd.sh [unix|tcp|both]      (default: both)
#
# Environment: COUNT (requests per run, default 75000), SIZE (file size, default 1G), RUNS (runs per
# cell and server, alternating between the servers; the median is kept, default 5), POLL_OFF=1 adds a
# column for nbd-server with busy-polling off.
set -euo pipefail

kinds=${1:-both}
count=${COUNT:-75000}
size=${SIZE:-1G}
runs=${RUNS:-5}
root=$(cd "$(dirname "$0")/.." && pwd)

for tool in qemu-img qemu-nbd; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (install qemu-utils)" >&2; exit 1; }
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

# start SERVER KIND: starts nbd-server / nbd-server-nopoll / qemu-nbd on its own socket, sets
# uris[SERVER].
declare -A uris
start() {
    local server=$1 kind=$2 addr uri args=()
    if [ "$kind" = unix ]; then
        addr="$work/$server.sock"
        rm -f "$addr"
        uri="nbd+unix:///disk?socket=$addr"
    else
        addr=$(free_port)
        uri="nbd://127.0.0.1:$addr/disk"
    fi
    case $server in
        nbd-server|nbd-server-nopoll)
            [ "$server" = nbd-server-nopoll ] && args+=(--poll-max-ns 0)
            if [ "$kind" = unix ]; then args+=(--socket "$addr"); else args+=(--listen "127.0.0.1:$addr"); fi
            "$server_bin" "$image" --iothreads 1 "${args[@]}" >/dev/null 2>&1 &
            ;;
        qemu-nbd)
            if [ "$kind" = unix ]; then args+=(-k "$addr"); else args+=(-b 127.0.0.1 -p "$addr"); fi
            qemu-nbd -f raw -x disk --aio=io_uring --persistent --shared=8 "${args[@]}" "$image" &
            ;;
    esac
    pids+=("$!")
    wait_ready "$kind" "$addr"
    # Warm up (page cache, adaptive polling, first-connection costs) outside the measurement.
    qemu-img bench -f raw -c 5000 -d 16 -s 4k "$uri" >/dev/null
    uris[$server]=$uri
}

stop_all() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}

# once URI DEPTH WRITE: the IOPS of one qemu-img bench run.
once() {
    local args=(bench -f raw -c "$count" -d "$2" -s 4k) secs
    [ "$3" = 1 ] && args+=(-w)
    secs=$(qemu-img "${args[@]}" "$1" | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
    [ -n "$secs" ] || { echo "qemu-img bench failed on $1" >&2; exit 1; }
    awk -v c="$count" -v s="$secs" 'BEGIN { printf "%d", c / s }'
}

median() {
    printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

servers=(nbd-server qemu-nbd)
[ "${POLL_OFF:-0}" = 1 ] && servers=(nbd-server nbd-server-nopoll qemu-nbd)
case $kinds in both) kinds=(unix tcp) ;; *) kinds=("$kinds") ;; esac

# All servers run at once; the runs of one cell alternate between them, so load from elsewhere on the
# machine hits every server alike.
declare -A result
for kind in "${kinds[@]}"; do
    for server in "${servers[@]}"; do start "$server" "$kind"; done
    for depth in 1 64; do
        for write in 0 1; do
            declare -A samples=()
            for _ in $(seq 1 "$runs"); do
                for server in "${servers[@]}"; do
                    samples[$server]+=" $(once "${uris[$server]}" "$depth" "$write")"
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

echo
echo "qemu-img bench, 4 KiB sequential, $count requests, median of $runs runs, file of $size"
header="| socket | workload | depth | nbd-server IOPS |"
[ "${POLL_OFF:-0}" = 1 ] && header+=" nbd-server, polling off |"
header+=" qemu-nbd IOPS | ratio |"
echo "$header"
echo "$header" | sed 's/[^|]/-/g'
for kind in "${kinds[@]}"; do
    for write in 0 1; do
        for depth in 1 64; do
            ours=${result[$kind,nbd-server,$depth,$write]}
            theirs=${result[$kind,qemu-nbd,$depth,$write]}
            row="| $kind | $([ "$write" = 1 ] && echo write || echo read) | $depth | $ours |"
            [ "${POLL_OFF:-0}" = 1 ] && row+=" ${result[$kind,nbd-server-nopoll,$depth,$write]} |"
            row+=" $theirs | $(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", a / b }') |"
            echo "$row"
        done
    done
done
