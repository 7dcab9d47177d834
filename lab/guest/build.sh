#!/usr/bin/env bash
# Build the lab's tiny guest image: a Debian kernel + a busybox initramfs.
#
# Usage: lab/guest/build.sh OUTDIR          (e.g. lab/guest/build.sh .cache/guest)
#
# Produces in OUTDIR:
#   vmlinuz        the kernel of the package linux-image-amd64 currently depends on
#   vmlinux        the same kernel uncompressed (its ELF, with the PVH entry note): QEMU
#                  starts it directly, without the xz decompression that takes ~3.5 s
#                  under TCG; the lab boots its VMs from it
#   initrd.img     gzip'ed cpio (newc): static busybox + applet links, /init,
#                  /etc/udhcpc.script and only the kernel modules the guest needs
#   disk.qcow2     a blank 64 MiB qcow2 (the guest formats it ext2 on first boot;
#                  copy it, or put an overlay on it, before giving it to a VM)
#   manifest.json  package names/versions and the sha256 of every artifact
#   .stamp         hash of build.sh, init, udhcpc.script and the resolved versions
#
# Boot with the kernel command line:  console=ttyS0 panic=-1
#
# Only two .deb files are fetched, with `apt-get download` (nothing is installed
# on the host, except kmod when depmod is missing). The apt lists must be
# present (`apt-get update`). When the stamp matches and all artifacts exist,
# nothing is done. Otherwise the image is built in a temporary directory and its
# files are renamed into OUTDIR one by one, the stamp last.
set -euo pipefail

START_NS=$(date +%s%N)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STAMP_FORMAT=1
ARTIFACTS=(vmlinuz vmlinux initrd.img disk.qcow2 manifest.json)
# Modules the guest loads (dependencies are added from modules.dep).
# ext4 also serves ext2 (CONFIG_EXT4_USE_FOR_EXT2=y); its softdep "pre: crc32c"
# is satisfied by crc32c_generic (crc32c-intel needs SSE4.2, absent under TCG).
# button and evdev: the ACPI power button as an input event, which busybox acpid turns
# into a clean poweroff (libvirt's shutdown, a cold migration's graceful stop).
WANTED_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
    virtio_pci failover net_failover virtio_net virtio_blk crc32c_generic ext4
    button evdev)

log() { printf 'guest-build: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed() {
    local now
    now=$(date +%s%N)
    awk -v a="$START_NS" -v b="$now" 'BEGIN { printf "%.1fs", (b - a) / 1e9 }'
}

[[ $# -eq 1 && -n $1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUTDIR=${1%/}
[[ -n $OUTDIR ]] || OUTDIR=/

for f in init udhcpc.script; do
    [[ -f $HERE/$f ]] || die "missing input $HERE/$f"
done
for tool in apt-cache apt-get dpkg-deb cpio gzip xz qemu-img sha256sum flock; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

# --- resolve the packages ---------------------------------------------------
# One apt-cache call (each costs ~0.5 s): the metapackage pins its kernel with
# "Depends: linux-image-6.1.0-NN-amd64 (= VERSION)".
read -r KPKG KVER_PKG BBVER < <(
    apt-cache show --no-all-versions linux-image-amd64 busybox-static 2>/dev/null | awk '
        $1 == "Package:" { pkg = $2 }
        pkg == "linux-image-amd64" && $1 == "Depends:" && !kpkg {
            n = split(substr($0, 10), deps, ",")
            for (i = 1; i <= n; i++) if (match(deps[i], /linux-image-[0-9][^ ]*/)) {
                kpkg = substr(deps[i], RSTART, RLENGTH)
                if (match(deps[i], /\(= [^)]+\)/)) kver = substr(deps[i], RSTART + 3, RLENGTH - 4)
                break
            }
        }
        pkg == "busybox-static" && $1 == "Version:" { bb = $2 }
        END { print (kpkg ? kpkg : "-"), (kver ? kver : "-"), (bb ? bb : "-") }')
[[ $KPKG != - ]] || die "cannot resolve the kernel of linux-image-amd64 (run apt-get update?)"
[[ $BBVER != - ]] || die "cannot resolve busybox-static (run apt-get update?)"
if [[ $KVER_PKG == - ]]; then
    KVER_PKG=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | awk '$1 == "Version:" { print $2; exit }')
    [[ -n $KVER_PKG ]] || die "no version for $KPKG"
fi
KREL=${KPKG#linux-image-}   # uname -r, e.g. 6.1.0-56-amd64

STAMP=$( {
    echo "format=$STAMP_FORMAT"
    echo "kernel=$KPKG=$KVER_PKG"
    echo "busybox=busybox-static=$BBVER"
    cat "$HERE/build.sh" "$HERE/init" "$HERE/udhcpc.script"
} | sha256sum | cut -d' ' -f1)

is_fresh() {
    [[ -f $OUTDIR/.stamp && $(cat "$OUTDIR/.stamp") == "$STAMP" ]] || return 1
    local a
    for a in "${ARTIFACTS[@]}"; do [[ -s $OUTDIR/$a ]] || return 1; done
}

if is_fresh; then
    log "up to date in $OUTDIR ($KPKG $KVER_PKG, busybox $BBVER, stamp ${STAMP:0:12}); nothing to do ($(elapsed))"
    exit 0
fi

# Serialise concurrent builds of the same OUTDIR, then look again.
mkdir -p "$(dirname "$OUTDIR")"
exec 9>"$OUTDIR.lock"
flock -w 900 9 || die "timed out waiting for the lock $OUTDIR.lock"
if is_fresh; then
    log "built meanwhile by another process in $OUTDIR; nothing to do ($(elapsed))"
    exit 0
fi

if ! command -v depmod >/dev/null && [[ ! -x /sbin/depmod && ! -x /usr/sbin/depmod ]]; then
    [[ $(id -u) -eq 0 ]] || die "depmod missing: apt-get install kmod"
    log "installing kmod (for depmod)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kmod >&2
fi
DEPMOD=$(command -v depmod || echo /sbin/depmod)
[[ -x $DEPMOD ]] || DEPMOD=/usr/sbin/depmod

log "building $OUTDIR: $KPKG $KVER_PKG, busybox-static $BBVER"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mcm-guest-build.XXXXXX")
chmod 0755 "$WORK"   # apt's _apt user must reach $WORK/deb
NEW=$(mktemp -d "$OUTDIR.new.XXXXXX")   # same filesystem as OUTDIR: rename works
OLD=""
cleanup() {
    local d
    for d in "$WORK" "$NEW" "$OLD"; do [[ -z $d ]] || rm -rf -- "$d"; done
}
trap cleanup EXIT

# --- download and extract ---------------------------------------------------
mkdir "$WORK/deb"
# apt drops privileges to _apt for downloads: let it write there.
if [[ $(id -u) -eq 0 ]] && id _apt >/dev/null 2>&1; then chown _apt "$WORK/deb"; fi
(cd "$WORK/deb" && apt-get download -q "$KPKG=$KVER_PKG" "busybox-static=$BBVER" >&2)
KDEB=$(find "$WORK/deb" -maxdepth 1 -name "${KPKG}_*.deb" | head -n1)
BBDEB=$(find "$WORK/deb" -maxdepth 1 -name 'busybox-static_*.deb' | head -n1)
[[ -f $KDEB && -f $BBDEB ]] || die "download failed"
dpkg-deb -x "$KDEB" "$WORK/kernel"
dpkg-deb -x "$BBDEB" "$WORK/busybox"

VMLINUZ=$WORK/kernel/boot/vmlinuz-$KREL
BUSYBOX=$WORK/busybox/bin/busybox
[[ -f $VMLINUZ ]] || die "no $VMLINUZ in $KDEB"
[[ -x $BUSYBOX ]] || die "no busybox in $BBDEB"
# The modules live in /lib/modules (bookworm) or /usr/lib/modules (merged /usr).
MODBASE=$WORK/kernel
if [[ ! -d $MODBASE/lib/modules/$KREL && -d $MODBASE/usr/lib/modules/$KREL ]]; then
    MODBASE=$WORK/kernel/usr
fi
KMOD=$MODBASE/lib/modules/$KREL
[[ -d $KMOD ]] || die "no modules for $KREL in $KDEB"

# --- pick the modules -------------------------------------------------------
"$DEPMOD" -b "$MODBASE" "$KREL"
# modules.dep lines: "kernel/x/y.ko: kernel/dep1.ko kernel/dep2.ko" (already
# transitive). Normalise names the way modprobe does (- and _ are the same).
mapfile -t MODFILES < <(
    awk -v want="${WANTED_MODULES[*]}" '
        function modname(p) { sub(/.*\//, "", p); sub(/\.ko(\.(xz|zst|gz))?$/, "", p); gsub(/-/, "_", p); return p }
        BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) { gsub(/-/, "_", w[i]); wanted[w[i]] = 1 } }
        {
            sub(/:$/, "", $1)
            if (modname($1) in wanted) {
                found[modname($1)] = 1
                for (i = 1; i <= NF; i++) { f = $i; sub(/:$/, "", f); if (!(f in seen)) { seen[f] = 1; print f } }
            }
        }
        END { for (m in wanted) if (!(m in found) ) print "MISSING:" m }
    ' "$KMOD/modules.dep" | sort)
for f in "${MODFILES[@]}"; do
    if [[ $f == MISSING:* ]]; then
        # Built into the kernel is fine; absent altogether is not.
        m=${f#MISSING:}
        grep -Eq "/${m//_/[-_]}\.ko" "$KMOD/modules.builtin" || die "module $m not found for $KREL"
        log "module $m is built in"
    fi
done

# --- the initramfs tree -----------------------------------------------------
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,var/log,mnt/disk,root}
chmod 1777 "$ROOT/tmp"
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
while IFS= read -r applet; do
    [[ -n $applet && $applet != bin/busybox && $applet != linuxrc ]] || continue
    mkdir -p "$ROOT/$(dirname "$applet")"
    ln -sf /bin/busybox "$ROOT/$applet"
done < <("$BUSYBOX" --list-full)
# The kernel's usermode modprobe helper is /sbin/modprobe.
[[ -e $ROOT/sbin/modprobe ]] || ln -sf /bin/busybox "$ROOT/sbin/modprobe"
install -m 0755 "$HERE/init" "$ROOT/init"
install -m 0755 "$HERE/udhcpc.script" "$ROOT/etc/udhcpc.script"
# busybox acpid runs /etc/acpi/PWRF/00000080 for the power button: PID 1's poweroff trap.
mkdir -p "$ROOT/etc/acpi/PWRF"
printf '#!/bin/sh\nkill -USR2 1\n' >"$ROOT/etc/acpi/PWRF/00000080"
chmod 0755 "$ROOT/etc/acpi/PWRF/00000080"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
: >"$ROOT/etc/resolv.conf"
# Wide tty: the shell's line editor does not wrap long command lines typed by tests.
cat >"$ROOT/etc/profile" <<'EOF'
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PS1='\h# '
[ ! -t 0 ] || stty cols 1024 rows 50 2>/dev/null
EOF
# The kernel opens /dev/console before running /init (devtmpfs comes later).
if [[ $(id -u) -eq 0 ]]; then
    mknod -m 600 "$ROOT/dev/console" c 5 1
    mknod -m 666 "$ROOT/dev/null" c 1 3
fi

RMOD=$ROOT/lib/modules/$KREL
mkdir -p "$RMOD"
for f in "${MODFILES[@]}"; do
    [[ $f == MISSING:* ]] && continue
    mkdir -p "$RMOD/$(dirname "$f")"
    case $f in   # busybox modprobe wants plain .ko
        *.ko) cp "$KMOD/$f" "$RMOD/$f" ;;
        *.ko.xz) xz -dc "$KMOD/$f" >"$RMOD/${f%.xz}" ;;
        *.ko.zst) zstd -qdc "$KMOD/$f" >"$RMOD/${f%.zst}" ;;
        *.ko.gz) gzip -dc "$KMOD/$f" >"$RMOD/${f%.gz}" ;;
        *) die "unexpected module file $f" ;;
    esac
done
cp "$KMOD/modules.builtin" "$KMOD/modules.order" "$RMOD/"
[[ ! -f $KMOD/modules.builtin.modinfo ]] || cp "$KMOD/modules.builtin.modinfo" "$RMOD/"
"$DEPMOD" -b "$ROOT" "$KREL"
rm -f "$RMOD"/*.bin   # busybox modprobe reads the text files only
MODLIST=$(cd "$RMOD" && find . -name '*.ko' -printf '%f\n' | sed 's/\.ko$//' | LC_ALL=C sort | paste -sd' ')
log "modules: $MODLIST"

# --- artifacts --------------------------------------------------------------
# Reproducible cpio: fixed owner, mtime and order.
find "$ROOT" -exec touch -h -d @0 {} +
(cd "$ROOT" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --quiet --null -o -H newc -R 0:0 --reproducible) |
    gzip -n -9 >"$NEW/initrd.img"
install -m 0644 "$VMLINUZ" "$NEW/vmlinuz"
# The ELF inside the bzImage (Debian compresses it with xz): the payload starts at the
# first xz stream magic (what the kernel's scripts/extract-vmlinux does).
XZ_AT=$(LC_ALL=C grep -abo $'\xfd7zXZ' "$VMLINUZ" | head -n1 | cut -d: -f1 || true)
[[ -n $XZ_AT ]] || die "no xz payload in $VMLINUZ (not an xz-compressed kernel?)"
tail -c +$((XZ_AT + 1)) "$VMLINUZ" | xz -dc --single-stream >"$NEW/vmlinux" 2>/dev/null || true
[[ $(head -c 4 "$NEW/vmlinux" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]] ||
    die "the payload of $VMLINUZ is not an ELF kernel"
chmod 0644 "$NEW/vmlinux"
qemu-img create -q -f qcow2 "$NEW/disk.qcow2" 64M

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
TELNET=none
if "$BUSYBOX" --list | grep -qx telnetd; then TELNET=telnetd; fi
{
    printf '{\n'
    printf '  "kernel": {"package": "%s", "version": "%s", "release": "%s"},\n' "$KPKG" "$KVER_PKG" "$KREL"
    printf '  "busybox": {"package": "busybox-static", "version": "%s"},\n' "$BBVER"
    printf '  "cmdline": "console=ttyS0 panic=-1",\n'
    printf '  "remote_shell": "%s",\n' "$TELNET"
    printf '  "modules": ["%s"],\n' "${MODLIST// /\", \"}"
    printf '  "stamp": "%s",\n' "$STAMP"
    printf '  "artifacts": {\n'
    printf '    "vmlinuz": {"sha256": "%s", "size": %s},\n' "$(sha "$NEW/vmlinuz")" "$(size "$NEW/vmlinuz")"
    printf '    "vmlinux": {"sha256": "%s", "size": %s},\n' "$(sha "$NEW/vmlinux")" "$(size "$NEW/vmlinux")"
    printf '    "initrd.img": {"sha256": "%s", "size": %s},\n' "$(sha "$NEW/initrd.img")" "$(size "$NEW/initrd.img")"
    printf '    "disk.qcow2": {"sha256": "%s", "size": %s}\n' "$(sha "$NEW/disk.qcow2")" "$(size "$NEW/disk.qcow2")"
    printf '  }\n}\n'
} >"$NEW/manifest.json"
printf '%s\n' "$STAMP" >"$NEW/.stamp"
chmod 0755 "$NEW"

# --- move into place ------------------------------------------------------
# OUTDIR itself is kept (the lab bind-mounts it into running hosts, and a replaced
# directory would leave them looking at the old one): each file is renamed into it, the
# stamp last, so an interrupted update is never taken for a complete build.
mkdir -p "$OUTDIR"
rm -f "$OUTDIR/.stamp"
for f in vmlinuz vmlinux initrd.img disk.qcow2 manifest.json .stamp; do
    mv -f "$NEW/$f" "$OUTDIR/$f"
done
chmod 0755 "$OUTDIR"
rmdir "$NEW"
NEW=""
log "built $OUTDIR (initrd $(size "$OUTDIR/initrd.img") bytes, remote shell: $TELNET) in $(elapsed)"
