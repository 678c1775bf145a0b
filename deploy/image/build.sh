#!/usr/bin/env bash
# Builds the pushfleet worker image with the local Docker daemon without pulling any image:
# for CI and hosts that cannot reach a registry (where pulls work, `docker build -f
# deploy/Dockerfile .` from the repository root does it all; see the Dockerfile).
#
#   1. the binary: --binary PATH, or `cargo build --release --locked --bin pushfleet`;
#   2. a root filesystem from Debian packages (apt-get download + dpkg-deb -x): libc6,
#      libgcc-s1 (what `ldd pushfleet` lists, checked below), ca-certificates, plus
#      /etc/passwd and /etc/group with the user pushfleet (uid/gid 10001). It is cached under
#      $PUSHFLEET_IMAGE_CACHE (default <cargo target dir>/pushfleet-image), keyed by the
#      packages' versions and this recipe;
#   3. that root filesystem with the binary in /usr/local/bin, `docker import`ed as a throwaway
#      base image, and deploy/Dockerfile's `runtime` stage built on it (--target runtime
#      --build-arg BASE=...), so the image's user, environment, entrypoint and command are the
#      Dockerfile's.
#
# Usage: deploy/image/build.sh [--binary PATH] [--tag NAME:TAG]
#   --tag   default pushfleet:dev. Reused when it was built from the same binary, packages and
#           Dockerfile; otherwise rebuilt, and the image the tag pointed to before, left
#           without any tag, is removed.
# The daemon is the docker CLI's (DOCKER_HOST). Prints the image id as the last line of stdout;
# progress goes to stderr. Needs apt-get and dpkg-deb (Debian); runs `apt-get update` (as
# root) when the package lists lack a package.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Bump when the root filesystem's recipe below changes: it is part of the cache key.
RECIPE=1
PACKAGES=(libc6 libgcc-s1 ca-certificates)
APP_UID=10001

log() { printf 'image/build.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

binary="" tag="pushfleet:dev"
while (($#)); do
    case $1 in
    --binary)
        binary=${2:?--binary needs a path}
        shift 2
        ;;
    --tag)
        tag=${2:?--tag needs NAME:TAG}
        shift 2
        ;;
    -h | --help)
        sed -n '2,24p' "$0"
        exit 0
        ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done

for tool in docker apt-get apt-cache dpkg-deb sha256sum tar ldd flock; do
    command -v "$tool" >/dev/null || die "$tool not found (this script needs a Debian host with docker.io)"
done

target_dir=${CARGO_TARGET_DIR:-$repo/target}
cache=${PUSHFLEET_IMAGE_CACHE:-$target_dir/pushfleet-image}
mkdir -p "$cache"
work=$(mktemp -d "$cache/tmp.XXXXXX")
prebuilt=""
cleanup() {
    [[ -n $prebuilt ]] && docker rmi "$prebuilt" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# 1. The binary

if [[ -z $binary ]]; then
    log "building the worker (cargo build --release --locked --bin pushfleet)"
    (cd "$repo" && cargo build --release --locked -p pushfleet-worker --bin pushfleet) >&2
    binary=$target_dir/release/pushfleet
fi
[[ -f $binary && -x $binary ]] || die "no executable binary at $binary"

# ---------------------------------------------------------------------------------------------
# 2. The root filesystem from Debian packages

candidate() { apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }'; }

versions=()
for pkg in "${PACKAGES[@]}"; do
    v=$(candidate "$pkg")
    if [[ -z $v || $v == "(none)" ]]; then
        [[ $(id -u) == 0 ]] || die "apt knows no version of $pkg: run apt-get update as root"
        log "apt knows no version of $pkg: running apt-get update"
        apt-get update >&2 || die "apt-get update failed"
        v=$(candidate "$pkg")
        [[ -n $v && $v != "(none)" ]] || die "no Debian package $pkg in the configured sources"
    fi
    versions+=("$pkg=$v")
done
arch=$(dpkg --print-architecture)
key=$(printf '%s\n' "recipe=$RECIPE" "arch=$arch" "uid=$APP_UID" "${versions[@]}" | sha256sum | cut -c1-16)
rootfs=$cache/base-$key

make_rootfs() {
    local dir=$work/rootfs deb
    mkdir -p "$work/debs" "$dir"
    log "downloading ${versions[*]}"
    # As root, apt drops privileges to _apt for downloads, which cannot write into $work.
    (cd "$work/debs" && apt-get download -o APT::Sandbox::User=root "${versions[@]}") >&2 ||
        die "apt-get download failed"
    for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$dir"; done
    rm -rf "$dir/usr/share/doc" "$dir/usr/share/lintian" "$dir/usr/share/man"
    # What update-ca-certificates would write (ca-certificates' postinst does not run here).
    mkdir -p "$dir/etc/ssl/certs"
    for crt in "$dir"/usr/share/ca-certificates/mozilla/*.crt; do
        cat "$crt"
        echo
    done >"$dir/etc/ssl/certs/ca-certificates.crt"
    printf '%s\n' "root:x:0:0:root:/root:/usr/sbin/nologin" \
        "pushfleet:x:$APP_UID:$APP_UID:pushfleet worker:/nonexistent:/usr/sbin/nologin" \
        >"$dir/etc/passwd"
    printf '%s\n' "root:x:0:" "pushfleet:x:$APP_UID:" >"$dir/etc/group"
    printf '%s\n' "passwd: files" "group: files" "hosts: files dns" >"$dir/etc/nsswitch.conf"
    mkdir -p "$dir/tmp" "$dir/usr/local/bin" "$dir/etc/pushfleet" "$dir/run/secrets/pushfleet"
    chmod 1777 "$dir/tmp"
    chmod 755 "$dir"
    printf '%s\n' "${versions[@]}" >"$dir/etc/pushfleet-base-packages"
    rm -rf "$rootfs"
    mv "$dir" "$rootfs"
}

# One maker at a time: parallel builds (the test suite runs two) share the cache.
exec 8>"$cache/base.lock"
flock 8
if [[ -f $rootfs/etc/pushfleet-base-packages ]]; then
    log "reusing the base root filesystem $rootfs (${versions[*]})"
else
    make_rootfs
fi
flock -u 8

# Every shared library the binary loads must come from those packages.
missing=()
while read -r lib; do
    [[ -e $rootfs$lib ]] || missing+=("$lib")
done < <(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
((${#missing[@]} == 0)) ||
    die "$binary needs ${missing[*]}, which ${PACKAGES[*]} do not provide: add the package to PACKAGES"

# ---------------------------------------------------------------------------------------------
# 3. Import, then the Dockerfile's runtime stage

# What the image is made of; an image of $tag labelled with the same is reused as is.
bin_sum=$(sha256sum "$binary" | cut -c1-12)
inputs="$key-$bin_sum-$(sha256sum "$repo/deploy/Dockerfile" | cut -c1-12)"
label=io.pushfleet.image.inputs
if [[ $(docker image inspect --format "{{index .Config.Labels \"$label\"}}" "$tag" 2>/dev/null) == "$inputs" ]]; then
    id=$(docker image inspect --format '{{.Id}}' "$tag")
    log "$tag is up to date ($id)"
    echo "$id"
    exit 0
fi

mkdir -p "$work/stage/usr/local/bin"
install -m 0755 "$binary" "$work/stage/usr/local/bin/pushfleet"
# A tag of this run only: a parallel build cannot remove it under us, and it goes at exit.
prebuilt="pushfleet-prebuilt:$key-$bin_sum-$$"
log "importing $prebuilt"
tar -c --numeric-owner --owner=0 --group=0 -C "$rootfs" . -C "$work/stage" ./usr/local/bin/pushfleet |
    docker import --message "pushfleet base from Debian packages: ${versions[*]}" - "$prebuilt" >/dev/null

old=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
log "building $tag from deploy/Dockerfile (target runtime)"
mkdir -p "$work/context"
# The legacy builder builds the stages up to --target only; BuildKit would skip the rest
# anyway. Forced so that the result does not depend on the docker CLI's defaults.
DOCKER_BUILDKIT=0 docker build --quiet -f "$repo/deploy/Dockerfile" --target runtime \
    --build-arg "BASE=$prebuilt" --label "$label=$inputs" --iidfile "$work/iid" -t "$tag" "$work/context" >&2 ||
    die "docker build failed"
id=$(cat "$work/iid")
if [[ -n $old && $old != "$id" && $(docker image inspect --format '{{len .RepoTags}}' "$old" 2>/dev/null) == 0 ]]; then
    docker rmi "$old" >/dev/null 2>&1 || log "the previous image $old is still in use; left alone"
fi
log "built $tag ($id)"
echo "$id"
