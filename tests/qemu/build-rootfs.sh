#!/usr/bin/env bash
# Build the Debian root filesystem image that `make test-kernels` boots.
#
#   build-rootfs.sh ARCH OUT_DIR REQUIREMENTS_FILE
#
# ARCH is a Debian architecture (amd64, arm64).  The image holds, side by
# side, Debian 12's stock kernel (6.1), the newest kernel of
# bookworm-backports and, on amd64, Debian 11's stock kernel (5.10, older
# than the tracer needs: it shows what bpfobj says then); the programs the
# chosen tests run; and a venv with the project's Python dependencies
# (REQUIREMENTS_FILE, one requirement a line).  Results:
#   OUT_DIR/rootfs.img          raw ext4 root filesystem (booted through a
#                               throw-away qcow2 overlay)
#   OUT_DIR/boot/vmlinuz-*      kernels, and their initrd.img-*
#   OUT_DIR/kernels             "stock|newest|old RELEASE", one a line
# Packages come from Debian only (debootstrap, apt); Python packages from
# PyPI through the host's pip ($PIP).  A foreign ARCH runs its maintainer scripts through
# qemu-user-static, registered with binfmt_misc when it is not already.
set -euo pipefail

arch=$1
out=$(realpath -m "$2")
requirements=$3
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
pip=${PIP:-python3 -m pip}
here=$(cd "$(dirname "$0")" && pwd)

# The programs the tests run inside the guest, and what the guest init needs.
packages=python3,python3-venv,bpftool,iproute2,procps,kmod,ca-certificates,curl,openssl

case $arch in
  amd64) qemu_user=x86_64; wheel_machine=x86_64; old_suite=bullseye ;;
  arm64) qemu_user=aarch64; wheel_machine=aarch64; old_suite= ;;
  *) echo "unsupported architecture: $arch" >&2; exit 2 ;;
esac

host_arch=$(dpkg --print-architecture)
if [ "$arch" != "$host_arch" ]; then
  binfmt=/proc/sys/fs/binfmt_misc
  [ -e $binfmt/register ] || mount -t binfmt_misc binfmt_misc $binfmt
  if [ ! -e $binfmt/qemu-$qemu_user ]; then
    cat /usr/lib/binfmt.d/qemu-$qemu_user.conf > $binfmt/register
  fi
fi

root=$out/root.tmp
mounted=()
cleanup() {
  # ours, and any debootstrap left behind when it was stopped
  for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[i]}" || true; done
  awk -v r="$root/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT

rm -rf "$root" "$out/boot" "$out/rootfs.img" "$out/kernels"
: > "$out/kernels"
mkdir -p "$root" "$out/boot"

debootstrap --variant=minbase --arch="$arch" --include="$packages" "$suite" "$root" "$mirror"

cat > "$root/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb $mirror $suite-backports main
SOURCES
echo sidetrace-guest > "$root/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
cp /etc/resolv.conf "$root/etc/resolv.conf"

for fs in proc sys dev; do
  mount --bind /$fs "$root/$fs"
  mounted+=("$root/$fs")
done

in_root() { chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }
in_root apt-get update -qq

# Initramfs with just what mounts the root file system (virtio disk, ext4):
# small, and quick to build where maintainer scripts run emulated.
in_root apt-get install -y -qq initramfs-tools
echo MODULES=list > "$root/etc/initramfs-tools/conf.d/sidetrace"
printf '%s\n' virtio_mmio virtio_pci virtio_blk ext4 >> "$root/etc/initramfs-tools/modules"

kernels_before() { { ls "$root/lib/modules" 2>/dev/null || true; } | sort; }
# Install kernel packages ($2...) and record the release they add as label $1.
add_kernel() {
  local label=$1 before
  shift
  before=$(kernels_before)
  in_root apt-get install -y -qq "$@"
  comm -13 <(echo "$before") <(kernels_before) | sed "s/^/$label /" >> "$out/kernels"
}
add_kernel stock linux-image-$arch
# The newest kernel Debian 12 has.
add_kernel newest -t $suite-backports linux-image-$arch
if [ -n "$old_suite" ]; then
  # The previous release's stock kernel (its versioned package: the
  # metapackage of that name is bookworm's).
  echo "deb $mirror $old_suite main" > "$root/etc/apt/sources.list.d/old.list"
  in_root apt-get update -qq
  old_image=$(in_root apt-cache depends linux-image-$arch/$old_suite | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
  add_kernel old "$old_image"
  rm "$root/etc/apt/sources.list.d/old.list"
fi
# Wheels for the guest's architecture and Python (3.11) are fetched on the
# host, whose pip knows the way to PyPI, and installed in the guest offline.
platforms=()
for tag in manylinux_2_36 manylinux_2_28 manylinux_2_17 manylinux2014; do
  platforms+=(--platform "${tag}_$wheel_machine")
done
$pip download -q --only-binary=:all: --python-version 3.11 --implementation cp \
  "${platforms[@]}" -d "$root/tmp/wheels" -r "$requirements"
cp "$requirements" "$root/tmp/requirements.txt"
in_root python3 -m venv /opt/sidetrace-venv
in_root /opt/sidetrace-venv/bin/pip install -q --no-index --find-links /tmp/wheels -r /tmp/requirements.txt
in_root apt-get clean

# The guest's init: mount the run directory (9p) and run the script the host put there.
install -m 0755 "$here/guest-init" "$root/sbin/sidetrace-guest-init"

for ((i=${#mounted[@]}-1; i>=0; i--)); do umount "${mounted[i]}"; done
mounted=()

while read -r _label release; do
  cp "$root/boot/vmlinuz-$release" "$root/boot/initrd.img-$release" "$out/boot/"
done < "$out/kernels"
rm -rf "$root/tmp/"* "$root/var/lib/apt/lists/"* "$root/root/.cache"

size_mb=$(( $(du -sm "$root" | cut -f1) * 3 / 2 + 512 ))
mkfs.ext4 -q -L sidetrace-root -d "$root" "$out/rootfs.img" "${size_mb}M"
