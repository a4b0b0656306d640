#!/usr/bin/env bash
# The vhost-user-blk daemon (aioctx IOThreads) against QEMU's own backends, with a real Linux guest under
# QEMU 10 (TCG) running fio: 4 KiB randread at depth 1 and 32, randwrite at depth 32, randread at depth 32
# with 4 jobs on 4 queues; backends: the aioctx daemon with busy polling on and off, qemu-storage-daemon's
# vhost-user-blk export on one IOThread, QEMU's built-in virtio-blk on an IOThread. Alternating runs,
# medians; prints a markdown table with IOPS, mean latency and the backend's CPU time per I/O, as ratios
# against qemu-storage-daemon. About 15 minutes (3 rounds).
#
#   benches/vhost-user-blk-vs-qemu.sh
#
# Environment: BENCH_RUNS (rounds, default 3). Needs what scripts/test installs (QEMU 10 from
# bookworm-backports, fio, busybox-static): run scripts/test once first on a fresh machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p examples --example vhost-user-blk
export VHOST_USER_BLK_BIN="$root/target/release/examples/vhost-user-blk"
cd "$root"
cargo test --release -p tests --test app_vhost_user_blk_bench -- --ignored --nocapture
