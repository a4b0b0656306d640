#!/bin/busybox sh
# /init of the real-guest test image (built by tests/guest/build-image.sh; the Rust side is
# tests/src/guest/mod.rs, whose module doc lists the jobs and their parameters).
#
# Mounts proc, sysfs and devtmpfs, loads the virtio modules, waits for the disks, runs the job named by
# `aioctx.job=NAME` on the kernel command line with its `aioctx.KEY=VALUE` parameters, prints its results
# on the console between markers, and powers off. Every line the host reads starts with "@@aioctx ":
#
#   @@aioctx kv KEY=VALUE          a result value (VALUE runs to the end of the line)
#   @@aioctx begin NAME            a section (fio's JSON, a program's output) ...
#   @@aioctx end NAME rc=N         ... and how the program in it exited
#   @@aioctx mark NAME             a point the host may wait for (e.g. "written" before a kill)
#   @@aioctx done job=JOB rc=N     the job finished (rc 0: every step did what it should)
#
# Kernel messages are kept off the console while the job runs (dmesg -n 1) so that they cannot split a
# result line; warnings and errors are printed afterwards in the section "dmesg".
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
dmesg -n 1

kv() { echo "@@aioctx kv $1=$2"; }
mark() { echo "@@aioctx mark $1"; }
begin() { echo "@@aioctx begin $1"; }
end() { echo "@@aioctx end $1 rc=$2"; }

# param NAME DEFAULT: the value of aioctx.NAME on the command line.
param() {
    for word in $(cat /proc/cmdline); do
        case $word in aioctx.$1=*) echo "${word#aioctx.$1=}"; return ;; esac
    done
    echo "$2"
}

finish() {
    begin dmesg
    dmesg -r | grep -E '^<[0-4]>'
    end dmesg 0
    echo "@@aioctx done job=$job rc=$1"
    sync
    poweroff -f
    sleep 5
    exit "$1" # init exiting panics the kernel; panic=-1 and -no-reboot end QEMU
}

job=$(param job none)

# Modules, in the order build-image.sh computed from modules.dep; a second pass loads anything the
# first could not (an order the next kernel changes).
failed=
for m in $(cat /etc/aioctx/modules); do insmod "$m" 2>/dev/null || failed="$failed $m"; done
for m in $failed; do
    grep -q "^$(basename "$m" .ko) " /proc/modules || insmod "$m" || { kv error "insmod $m failed"; finish 1; }
done

# The disks: aioctx.dev names them (colon-separated, as fio's --filename), vda by default.
devs=$(param dev vda)
for d in $(echo "$devs" | tr : ' '); do
    i=0
    while [ ! -b "/dev/$d" ]; do
        i=$((i + 1))
        [ $i -gt 200 ] && { kv error "no /dev/$d after 20 s"; ls /sys/block; finish 1; }
        usleep 100000
    done
done
dev=${devs%%:*}

kv kernel "$(uname -r)"
kv cpus "$(nproc)"
for b in /sys/block/vd*; do
    d=${b##*/}
    kv "$d.bytes" $(($(cat "$b/size") * 512))
    kv "$d.ro" "$(cat "$b/ro")"
    kv "$d.hw_queues" "$(ls "$b/mq" | wc -l)"
    kv "$d.discard_max_bytes" "$(cat "$b/queue/discard_max_bytes")"
    kv "$d.write_zeroes_max_bytes" "$(cat "$b/queue/write_zeroes_max_bytes")"
    kv "$d.features" "$(cat "$b/device/features" 2>/dev/null)"
done

# Common fio parameters.
engine=$(param engine libaio)
bs=$(param bs 4k)
iodepth=$(param iodepth 16)
numjobs=$(param numjobs 1)

bytes() { echo $(($(cat "/sys/block/$1/size") * 512)); }

# The bytes of each disk a job uses: aioctx.size, or the smallest disk split between numjobs (MiB).
per_job_size() {
    size=$(param size "")
    if [ -z "$size" ]; then
        min=
        for d in $(echo "$devs" | tr : ' '); do
            b=$(bytes "$d")
            [ -z "$min" ] || [ "$b" -lt "$min" ] && min=$b
        done
        size=$((min / $1 / 1048576 * 1048576))
    fi
    echo "$size"
}

filenames() { echo "$devs" | sed 's,\([^:]*\),/dev/\1,g'; }

# fio_section NAME ARGS...: mark NAME.started, then fio's JSON in section NAME, its stderr in section
# NAME.log.
fio_section() {
    name=$1
    shift
    # The JSON comes only once fio is done: this mark says when it starts (the benchmark reads the
    # backend's CPU time between the two).
    mark "$name.started"
    fio --eta=never --output-format=json --output="/tmp/$name.json" "$@" 2>"/tmp/$name.err"
    rc=$?
    begin "$name"
    cat "/tmp/$name.json"
    end "$name" $rc
    if [ -s "/tmp/$name.err" ]; then
        begin "$name.log"
        cat "/tmp/$name.err"
        end "$name.log" 0
    fi
    return $rc
}

# Spread numjobs jobs over the vCPUs (one blk-mq queue each when there are as many queues).
cpu_args() {
    if [ "$1" -gt 1 ] && [ "$(nproc)" -gt 1 ]; then
        echo "--cpus_allowed=0-$(($(nproc) - 1)) --cpus_allowed_policy=split"
    fi
}

# Random reads and writes, every written block verified (crc32c): each job in its own region.
job_randrw() {
    size=$(per_job_size "$numjobs")
    nfiles=$(echo "$devs" | tr : '\n' | wc -l)
    fio_section randrw --name=randrw --filename="$(filenames)" --direct=1 --ioengine="$engine" \
        --rw=randrw --rwmixread="$(param rwmixread 50)" --bs="$bs" --iodepth="$iodepth" \
        --numjobs="$numjobs" --size=$((size * nfiles)) --offset_increment="$size" \
        --verify=crc32c --verify_fatal=1 --group_reporting $(cpu_args "$numjobs")
}

# A sequential write of the disk, then a read-back verifying every block.
job_seqverify() {
    size=$(per_job_size 1)
    nfiles=$(echo "$devs" | tr : '\n' | wc -l)
    fio_section seqverify --name=seqverify --filename="$(filenames)" --direct=1 --ioengine="$engine" \
        --rw=write --bs="$(param bs 256k)" --iodepth="$(param iodepth 4)" --size=$((size * nfiles)) \
        --verify=crc32c --verify_fatal=1
}

# Reads LEN bytes at OFF (MiB units) with O_DIRECT and says whether they are all BYTE (octal).
region_is() {
    want=$(dd if=/dev/zero bs=1M count="$2" 2>/dev/null | tr '\000' "\\$3" | md5sum)
    got=$(dd if="/dev/$dev" bs=1M skip="$1" count="$2" iflag=direct 2>/dev/null | md5sum)
    [ "$want" = "$got" ] && echo yes || echo no
}

write_ios() { awk '{ print $5 }' "/sys/block/$dev/stat"; }
discard_ios() { awk '{ print $12 }' "/sys/block/$dev/stat"; }

# step NAME OFF_MIB LEN_MIB COMMAND...: runs COMMAND, then reports its exit code and message, the
# requests it cost (write and discard ios of the disk's stat) and whether the range reads as zeroes.
step() {
    name=$1 off=$2 len=$3
    shift 3
    w0=$(write_ios) d0=$(discard_ios)
    msg=$("$@" 2>&1)
    rc=$?
    kv "$name.rc" $rc
    kv "$name.msg" "$(echo "$msg" | head -n 1)"
    kv "$name.write_ios" $(($(write_ios) - w0))
    kv "$name.discard_ios" $(($(discard_ios) - d0))
    kv "$name.zeroed" "$(region_is "$off" "$len" 000)"
}

# Discard and write-zeroes: fill 4 MiB with 0xaa, then discard MiB 0 (blkdiscard: BLKDISCARD), zero
# MiB 1 (blkdiscard -z: BLKZEROOUT) and MiB 2 (fallocate --zero-range); MiB 3 must keep its 0xaa.
# Each step reports what happened (see step); rc 0 if the zeroing steps zeroed and MiB 3 is intact.
job_discard() {
    dd if=/dev/zero bs=1M count=4 2>/dev/null | tr '\000' '\252' >/tmp/aa
    dd if=/tmp/aa of="/dev/$dev" bs=1M oflag=direct 2>/dev/null || { kv error "cannot write the pattern"; return 1; }
    kv filled "$(region_is 0 4 252)"
    # util-linux's tools by path: this busybox runs its own applets in preference to PATH, and its
    # blkdiscard and fallocate know neither -z nor --zero-range.
    step discard 0 1 /usr/local/bin/blkdiscard -o 0 -l 1048576 "/dev/$dev"
    step zeroout 1 1 /usr/local/bin/blkdiscard -z -o 1048576 -l 1048576 "/dev/$dev"
    step zero_range 2 1 /usr/local/bin/fallocate --zero-range -o 2097152 -l 1048576 "/dev/$dev"
    intact=$(region_is 3 1 252)
    kv untouched.intact "$intact"
    [ "$(region_is 1 2 000)" = yes ] && [ "$intact" = yes ]
}

# A known pattern (fio, crc32c headers carrying each block's offset) written, then verified.
# aioctx.phase=write|verify|both; offset and size (bytes, default 0 and 16 MiB), bs (64k).
# After the write phase (flushed) it prints "mark written", then aioctx.hold says what to do:
# none (go on / power off), idle (sleep until killed), io (random writes after the region until killed).
# A hold ends by itself after aioctx.hold_max seconds (600), failing the job: a guest whose test
# process died (and so never killed it) powers off instead of running forever.
job_pattern() {
    phase=$(param phase both)
    off=$(param offset 0)
    size=$(param size 16777216)
    args="--name=pattern --filename=/dev/$dev --direct=1 --ioengine=$engine --rw=write
        --bs=$(param bs 64k) --iodepth=$(param iodepth 8) --offset=$off --size=$size --verify=crc32c
        --verify_fatal=1"
    if [ "$phase" != verify ]; then
        fio_section pattern.write $args --do_verify=0 --end_fsync=1 || return 1
        mark written
        hold_max=$(param hold_max 600)
        case $(param hold none) in
            idle)
                sleep "$hold_max"
                kv error "held for $hold_max s and was not killed"
                return 1
                ;;
            io)
                rest=$(($(bytes "$dev") - off - size))
                w0=$(write_ios)
                fio --name=hold --filename="/dev/$dev" --direct=1 --ioengine="$engine" --rw=randwrite \
                    --bs=4k --iodepth=16 --offset=$((off + size)) --size=$rest --time_based \
                    --runtime="$hold_max" --output=/dev/null &
                # "holding" once the writes flow (64 completed): a kill from now on lands mid-I/O.
                while [ "$(write_ios)" -lt $((w0 + 64)) ]; do sleep 0.05; done
                mark holding
                wait
                kv error "held for $hold_max s and was not killed"
                return 1
                ;;
        esac
    fi
    if [ "$phase" != write ]; then
        fio_section pattern.verify $args --verify_only || return 1
    fi
}

# A write that must fail (the disk is read-only): reports the kernel's ro flag, the write's errno
# (write.error: EPERM, EROFS, EIO, EACCES, none or the message) and that a read still works.
job_readonly() {
    msg=$(dd if=/dev/zero of="/dev/$dev" bs=4k count=1 oflag=direct conv=notrunc 2>&1)
    rc=$?
    kv write.rc $rc
    kv write.msg "$(echo "$msg" | grep -v records | head -n 1)"
    case $msg in
        *"Operation not permitted"*) e=EPERM ;;
        *"Read-only file system"*) e=EROFS ;;
        *"Input/output error"*) e=EIO ;;
        *"Permission denied"*) e=EACCES ;;
        *) [ $rc -eq 0 ] && e=none || e=other ;;
    esac
    kv write.error $e
    dd if="/dev/$dev" of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null
    kv read.rc $?
    [ $rc -ne 0 ]
}

# Benchmarks: aioctx.runs=RW:IODEPTH:NUMJOBS,... (default: 4 KiB randread at depth 1 and 32, randwrite
# at depth 32, randread at depth 32 with 4 jobs), each for aioctx.runtime seconds (5) after a 1 s ramp;
# fio's JSON in section bench.RW.qdIODEPTH.jNUMJOBS.
job_bench() {
    rc=0
    for run in $(param runs randread:1:1,randread:32:1,randwrite:32:1,randread:32:4 | tr , ' '); do
        rw=${run%%:*} rest=${run#*:}
        qd=${rest%%:*} nj=${rest#*:}
        fio_section "bench.$rw.qd$qd.j$nj" --name=bench --filename="$(filenames)" --direct=1 \
            --ioengine="$engine" --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs="$nj" \
            --size="$(per_job_size 1)" --time_based --runtime="$(param runtime 5)" --ramp_time=1 \
            --randrepeat=0 --norandommap --group_reporting $(cpu_args "$nj") || rc=1
    done
    return $rc
}

case $job in
    none) rc=0 ;;
    randrw | seqverify | discard | pattern | readonly | bench) "job_$job"; rc=$? ;;
    *) kv error "unknown job $job"; rc=1 ;;
esac
finish $rc
