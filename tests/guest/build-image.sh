#!/usr/bin/env bash
# Builds the real-guest test image (tests/src/guest/mod.rs runs this; read its module doc first):
#
#   build-image.sh inputs                      the host files the image copies, one a line (the Rust side
#                                              stamps the cache with their sizes and mtimes)
#   build-image.sh build OUT KERNEL_PKG DEBS INIT
#                                              OUT/vmlinuz and OUT/initrd.gz (gzip'd newc cpio), OUT/manifest
#
# The kernel comes from Debian's cloud kernel package KERNEL_PKG (what `apt-cache depends
# linux-image-cloud-amd64` names), downloaded into DEBS with `apt-get download` (or taken from apt's own
# cache) and unpacked with `dpkg-deb -x`: never installed. The initramfs holds busybox-static, the virtio
# modules (loaded by INIT in the order modules.dep gives, computed here), fio and util-linux's blkdiscard
# and fallocate with every library ldd lists and the dynamic loader, and INIT as /init. Nothing is written
# outside OUT and DEBS. Fails with a message naming what is missing.
set -euo pipefail

# The modules the guest needs, in no particular order: their dependencies (modules.dep) decide the
# order, and any dependency not named here is added.
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk)
# Dynamic programs copied with their libraries (busybox is static and copied alone).
programs=(fio blkdiscard fallocate)
loader=/lib64/ld-linux-x86-64.so.2

die() { echo "build-image.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is missing: $2"; }

# busybox-static, not Debian's dynamic busybox: the guest has no libc for it.
busybox_static() {
    local bb
    bb=$(command -v busybox) || die "busybox is missing: install busybox-static"
    if ldd "$bb" >/dev/null 2>&1; then
        die "$bb is dynamically linked: install busybox-static (it replaces Debian's busybox)"
    fi
    echo "$bb"
}

program_path() {
    case $1 in
        fio) need fio "install fio" ;;
        *) need "$1" "it comes with util-linux" ;;
    esac
    command -v "$1"
}

# Every host file the image copies: busybox, the programs, their libraries, the loader.
inputs() {
    busybox_static
    local p path
    for p in "${programs[@]}"; do
        path=$(program_path "$p")
        echo "$path"
        ldd "$path" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
    done | sort -u
    echo "$loader"
}

build() {
    local out=$1 pkg=$2 debs=$3 init=$4
    need dpkg-deb "it comes with dpkg"
    need apt-get "it comes with apt"
    need gzip "install gzip"
    [[ -f $init ]] || die "no init script at $init"
    local bb
    bb=$(busybox_static)
    mkdir -p "$out" "$debs"
    local work="$out/work"
    rm -rf "$work"
    mkdir -p "$work/kernel" "$work/root"

    # The kernel package: apt's cache, then ours, then the registry.
    local deb
    deb=$(ls /var/cache/apt/archives/"${pkg}"_*_amd64.deb "$debs/${pkg}"_*_amd64.deb 2>/dev/null | tail -n 1 || true)
    # A download cut short leaves a file dpkg-deb cannot read: fetch it again.
    if [[ -n $deb ]] && ! dpkg-deb --info "$deb" >/dev/null 2>&1; then
        echo "$deb is damaged: downloading it again"
        deb=
    fi
    if [[ -z $deb ]]; then
        rm -f "$debs"/*.deb "$debs"/*.partial
        echo "downloading $pkg"
        (cd "$debs" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
        deb=$(ls "$debs/${pkg}"_*_amd64.deb 2>/dev/null | tail -n 1 || true)
        [[ -n $deb ]] || die "apt-get download $pkg failed (is the network up, and 'apt-get update' done?)"
    fi
    echo "unpacking $deb"
    dpkg-deb -x "$deb" "$work/kernel"
    local vmlinuz
    vmlinuz=$(ls "$work"/kernel/boot/vmlinuz-* | head -n 1)
    [[ -f $vmlinuz ]] || die "no boot/vmlinuz-* in $deb"
    local version=${vmlinuz##*/vmlinuz-}
    local moddir="$work/kernel/lib/modules/$version"
    [[ -d $moddir ]] || die "no lib/modules/$version in $deb"

    # modules.dep: the package leaves it to depmod at install time; busybox's depmod writes it here.
    [[ -f $moddir/modules.dep ]] || "$bb" depmod -b "$work/kernel" "$version"
    # Load order: a module after everything it depends on (the closure of the named set).
    local order
    order=$(awk -v want="${modules[*]}" '
        function base(p) { sub(/.*\//, "", p); sub(/\.ko(\.[a-z]+)?$/, "", p); return p }
        BEGIN { n = split(want, w, " ") }
        {
            m = $1; sub(/:$/, "", m); name = base(m); path[name] = m
            deps[name] = ""
            for (i = 2; i <= NF; i++) deps[name] = deps[name] " " base($i)
        }
        function visit(name,   d, k, i) {
            if (done[name]) return
            if (!(name in path)) { print "missing " name; return }
            done[name] = 1
            k = split(deps[name], d, " ")
            for (i = 1; i <= k; i++) visit(d[i])
            print path[name]
        }
        END { for (i = 1; i <= n; i++) visit(w[i]) }
    ' "$moddir/modules.dep")
    mkdir -p "$work/root/lib/modules/$version" "$work/root/etc/aioctx"
    : >"$work/root/etc/aioctx/modules"
    local line name
    while read -r line; do
        case $line in
            missing\ *)
                name=${line#missing }
                grep -q "/$name\.ko" "$moddir/modules.builtin" 2>/dev/null ||
                    die "module $name is neither in modules.dep nor built in ($pkg)"
                echo "$name is built in"
                ;;
            *)
                local src="$moddir/$line" dst
                case $line in
                    *.ko) dst=${line##*/} ; cp "$src" "$work/root/lib/modules/$version/$dst" ;;
                    *.ko.xz) dst=${line##*/}; dst=${dst%.xz}; "$bb" xzcat "$src" >"$work/root/lib/modules/$version/$dst" ;;
                    *.ko.gz) dst=${line##*/}; dst=${dst%.gz}; "$bb" zcat "$src" >"$work/root/lib/modules/$version/$dst" ;;
                    *) die "cannot unpack module $line" ;;
                esac
                echo "/lib/modules/$version/$dst" >>"$work/root/etc/aioctx/modules"
                ;;
        esac
    done <<<"$order"
    echo "modules (in load order): $(tr '\n' ' ' <"$work/root/etc/aioctx/modules")"

    # Userspace: busybox (its applets are linked by /init), the programs in /usr/local/bin, every
    # library at the path ldd names (so RUNPATHs still resolve), the loader.
    local root="$work/root"
    mkdir -p "$root/bin" "$root/usr/local/bin" "$root/lib64" "$root/proc" "$root/sys" "$root/dev" "$root/tmp"
    cp "$bb" "$root/bin/busybox"
    local p path lib
    for p in "${programs[@]}"; do
        path=$(program_path "$p")
        cp -L "$path" "$root/usr/local/bin/$p"
        for lib in $(ldd "$path" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'); do
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
    done
    cp -L "$loader" "$root$loader"
    cp "$init" "$root/init"
    chmod 755 "$root/init" "$root/bin/busybox"
    echo "$version" >"$root/etc/aioctx/kernel"

    # Pack: newc cpio by busybox (cpio itself is not installed everywhere), gzip'd.
    echo "packing the initramfs"
    (cd "$root" && "$bb" find . | LC_ALL=C sort | "$bb" cpio -o -H newc 2>/dev/null) | gzip -6 >"$out/initrd.gz"
    cp "$vmlinuz" "$out/vmlinuz"
    {
        echo "package=$pkg"
        echo "deb=${deb##*/}"
        echo "kernel=$version"
        echo "initrd_bytes=$(stat -c %s "$out/initrd.gz")"
        echo "root_bytes=$(du -sb "$root" | cut -f1)"
        echo "fio=$(fio --version)"
        echo "busybox=$("$bb" | head -n 1)"
    } >"$out/manifest"
    rm -rf "$work"
    cat "$out/manifest"
}

case ${1:-} in
    inputs) inputs ;;
    build) shift; [[ $# -eq 4 ]] || die "usage: build OUT KERNEL_PKG DEBS INIT"; build "$@" ;;
    *) die "usage: $0 inputs | build OUT KERNEL_PKG DEBS INIT" ;;
esac
