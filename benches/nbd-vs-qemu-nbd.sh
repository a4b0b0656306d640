#!/usr/bin/env bash
# nbd-server (aioctx IOThreads) against qemu-nbd --aio=io_uring: the same qemu-img bench client, the same
# file, the same socket kind. Prints IOPS side by side and the ratio (aioctx / qemu-nbd, > 1: aioctx is
# faster), for 4 KiB sequential reads and writes at depth 1 and 64.
#
#   benches/nbd-vs-qemu-nbd.sh [unix|tcp|both]      (default: both)
#
# Environment: COUNT (requests per run, default 75000), SIZE (file size, default 1G), RUNS (runs per
# cell, the median is kept, default 3), POLL_OFF=1 adds a column for nbd-server with busy-polling off.
set -euo pipefail

kinds=${1:-both}
count=${COUNT:-75000}
size=${SIZE:-1G}
runs=${RUNS:-3}
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

# start SERVER KIND: starts nbd-server / nbd-server-nopoll / qemu-nbd, sets $uri and $server_pid.
start() {
    local server=$1 kind=$2 addr args=()
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
            "$server_bin" "$image" --iothreads 1 "${args[@]}" >/dev/null &
            ;;
        qemu-nbd)
            if [ "$kind" = unix ]; then args+=(-k "$addr"); else args+=(-b 127.0.0.1 -p "$addr"); fi
            qemu-nbd -f raw -x disk --aio=io_uring --persistent --shared=8 "${args[@]}" "$image" &
            ;;
    esac
    server_pid=$!
    pids+=("$server_pid")
    wait_ready "$kind" "$addr"
    # Warm up (page cache, adaptive polling, first-connection costs) outside the measurement.
    qemu-img bench -f raw -c 5000 -d 16 -s 4k "$uri" >/dev/null
}

stop() {
    kill -TERM "$server_pid"
    wait "$server_pid" 2>/dev/null || true
}

# iops URI DEPTH WRITE: the median IOPS of $runs qemu-img bench runs.
iops() {
    local uri=$1 depth=$2 write=$3 results=() args=(bench -f raw -c "$count" -d "$depth" -s 4k)
    [ "$write" = 1 ] && args+=(-w)
    for _ in $(seq 1 "$runs"); do
        local secs
        secs=$(qemu-img "${args[@]}" "$uri" | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
        [ -n "$secs" ] || { echo "qemu-img bench failed on $uri" >&2; exit 1; }
        results+=("$(awk -v c="$count" -v s="$secs" 'BEGIN { printf "%d", c / s }')")
    done
    printf '%s\n' "${results[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

servers=(nbd-server qemu-nbd)
[ "${POLL_OFF:-0}" = 1 ] && servers=(nbd-server nbd-server-nopoll qemu-nbd)
case $kinds in both) kinds=(unix tcp) ;; *) kinds=("$kinds") ;; esac

declare -A result
for kind in "${kinds[@]}"; do
    for server in "${servers[@]}"; do
        start "$server" "$kind"
        for depth in 1 64; do
            for write in 0 1; do
                result[$kind,$server,$depth,$write]=$(iops "$uri" "$depth" "$write")
            done
        done
        stop
    done
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
