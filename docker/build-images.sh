#!/usr/bin/env bash
# Builds lbfleet's Docker images on a machine that can pull no image.
#
#   docker/build-images.sh [base|haproxy|node|coordinator|agent|all]...
#
# Default: base haproxy node. See docker/README.md.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

BASE_IMAGE=${LBFLEET_BASE_IMAGE:-lbfleet/debian-trixie:base}
TAG=${LBFLEET_TAG:-dev}
MIRROR=${LBFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${LBFLEET_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=trixie
LABEL=org.lbfleet.inputs
# Set to 1 to rebuild the base root file system even when the image exists.
REBUILD_BASE=${LBFLEET_REBUILD_BASE:-0}
# A directory holding prebuilt `lbfleet` / `lbfleet-agent` binaries; skips cargo.
BIN_DIR=${LBFLEET_BIN_DIR:-}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-images: %s\n' "$*" >&2; exit 1; }

usage() {
    local code=${1:-0}
    if [ "$code" -eq 0 ]; then
        sed -n '2,6s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    else
        sed -n '2,6s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    fi
    exit "$code"
}

cleanup_dirs=()
cleanup() {
    local d
    for d in "${cleanup_dirs[@]}"; do
        # debootstrap mounts proc/sys in the target; never delete through a mount.
        if [ -d "$d" ]; then
            awk -v p="$d/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l || true
            rm -rf --one-file-system "$d"
        fi
    done
}
trap cleanup EXIT

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
image_label() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }

url_ok() {
    if command -v curl >/dev/null; then
        curl -fsS -o /dev/null --max-time 20 "$1" 2>/dev/null
    else
        wget -q -O /dev/null --timeout=20 "$1" 2>/dev/null
    fi
}

apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "needs root to install ${missing[*]}"
    log "installing ${missing[*]} on the host"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The root file system gets the same trimming as Debian's -slim images, so that the
# Dockerfiles also install without docs and translations.
write_slim_config() {
    local root=$1
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    cat >"$root/etc/apt/apt.conf.d/docker-no-languages" <<'EOF'
Acquire::Languages "none";
EOF
}

write_sources() {
    local root=$1 suites=$SUITE
    if url_ok "$MIRROR/dists/$SUITE-updates/InRelease"; then
        suites="$suites $SUITE-updates"
    else
        log "$SUITE-updates not reachable at $MIRROR; left out"
    fi
    rm -f "$root/etc/apt/sources.list"
    {
        printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$MIRROR" "$suites"
        if url_ok "$SECURITY_MIRROR/dists/$SUITE-security/InRelease"; then
            printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                "$SECURITY_MIRROR" "$SUITE"
        else
            log "$SUITE-security not reachable at $SECURITY_MIRROR; left out"
        fi
    } >"$root/etc/apt/sources.list.d/debian.sources"
}

build_base() {
    if [ "$REBUILD_BASE" != 1 ] && [ -n "$(image_id "$BASE_IMAGE")" ]; then
        log "$BASE_IMAGE exists; reused (LBFLEET_REBUILD_BASE=1 rebuilds it)"
        return 0
    fi
    if [ "$BASE_IMAGE" != lbfleet/debian-trixie:base ]; then
        log "pulling $BASE_IMAGE"
        docker pull "$BASE_IMAGE"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
    apt_install debootstrap debian-archive-keyring
    local start=$SECONDS root script=()
    # debootstrap releases older than trixie know it only as a copy of sid's script.
    [ -e "/usr/share/debootstrap/scripts/$SUITE" ] || script=(/usr/share/debootstrap/scripts/sid)
    root=$(mktemp -d /var/tmp/lbfleet-rootfs.XXXXXX)
    cleanup_dirs+=("$root")
    log "debootstrap $SUITE into $root"
    debootstrap --variant=minbase --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
        "$SUITE" "$root" "$MIRROR" "${script[@]}" >"$root.log" 2>&1 ||
        { tail -n 40 "$root.log" >&2; rm -f "$root.log"; die "debootstrap failed"; }
    rm -f "$root.log"

    write_slim_config "$root"
    write_sources "$root"
    # Pick up trixie-updates/-security fixes that debootstrap (trixie only) left out.
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    # shellcheck disable=SC2016 # $o expands inside the chroot's shell
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c 'set -e; o="-o APT::Sandbox::User=root -o Dpkg::Use-Pty=0"
                apt-get $o update -qq; apt-get $o upgrade -y -qq >/dev/null; apt-get clean'

    # Docker provides these at run time; a copy of the host's would leak into the image.
    rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
    : >"$root/etc/machine-id" 2>/dev/null || true
    rm -rf "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/apt/* "${root:?}"/var/cache/debconf/*-old \
        "${root:?}"/var/log/* "${root:?}"/tmp/* "${root:?}"/var/tmp/* "${root:?}"/run/* "${root:?}"/dev/*
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "${root:?}"/usr/share/man/* "${root:?}"/usr/share/info/* "${root:?}"/usr/share/lintian/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

    log "importing $BASE_IMAGE"
    local old
    old=$(image_id "$BASE_IMAGE")
    tar --numeric-owner --xattrs -C "$root" -cf - . |
        docker import --change 'CMD ["bash"]' \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --message "debootstrap --variant=minbase $SUITE" - "$BASE_IMAGE" >/dev/null
    drop_if_dangling "$old"
    log "$BASE_IMAGE built in $((SECONDS - start)) s"
}

# A rebuilt tag leaves the previous image behind untagged; repeated runs would pile them up.
drop_if_dangling() {
    local old=$1
    [ -n "$old" ] || return 0
    if [ -z "$(docker image inspect -f '{{join .RepoTags ""}}' "$old" 2>/dev/null)" ]; then
        docker image rm "$old" >/dev/null 2>&1 || true
    fi
}

# Hash of everything an image is made of: the context's files (names, modes and
# contents) and the id of the base image it starts from.
inputs_hash() {
    local ctx=$1 base_id=$2
    {
        printf 'base %s\n' "$base_id"
        (cd "$ctx" && find . -type f -printf '%P %m\n' | LC_ALL=C sort)
        (cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
    } | sha256sum | cut -d' ' -f1
}

build_image() {
    local name=$1 ctx=$2 tag="lbfleet/$1:$TAG" base_id hash old start=$SECONDS
    base_id=$(image_id "$BASE_IMAGE")
    [ -n "$base_id" ] || die "$BASE_IMAGE is missing"
    hash=$(inputs_hash "$ctx" "$base_id")
    if [ "$(image_label "$tag")" = "$hash" ]; then
        log "$tag is current; reused"
        return 0
    fi
    log "building $tag"
    old=$(image_id "$tag")
    docker build --rm --force-rm \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --label "$LABEL=$hash" \
        -t "$tag" -f "$ctx/Dockerfile" "$ctx"
    drop_if_dangling "$old"
    log "$tag built in $((SECONDS - start)) s"
}

# Binaries come from the host's cargo build; the image only copies them in.
# Sets bin_dir to where they are.
build_binaries() {
    local args=() b
    if [ -n "$BIN_DIR" ]; then
        bin_dir=$BIN_DIR
    else
        for b in "$@"; do args+=(--bin "$b"); done
        log "cargo build --release ${args[*]}"
        (cd "$repo" && cargo build --release "${args[@]}")
        bin_dir=${CARGO_TARGET_DIR:-$repo/target}/release
    fi
    for b in "$@"; do
        [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing or not executable"
    done
}

build_binary_image() {
    local name=$1 bin=$2 bin_dir=$3 ctx
    ctx=$(mktemp -d "${TMPDIR:-/tmp}/lbfleet-$name-ctx.XXXXXX")
    cleanup_dirs+=("$ctx")
    cp -a "$here/$name/." "$ctx/"
    install -m 0755 "$bin_dir/$bin" "$ctx/$bin"
    build_image "$name" "$ctx"
}

main() {
    local want=() t
    [ $# -gt 0 ] || set -- base haproxy node
    for t in "$@"; do
        case "$t" in
            base | haproxy | node | coordinator | agent) want+=("$t") ;;
            all) want+=(base haproxy node coordinator agent) ;;
            -h | --help) usage 0 ;;
            *) printf 'build-images: unknown image %q\n' "$t" >&2; usage 2 ;;
        esac
    done
    has() { local x; for x in "${want[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }

    command -v docker >/dev/null || die "docker is not installed"
    docker info >/dev/null 2>&1 || die "cannot reach the Docker engine"

    local start=$SECONDS bins=() bin_dir=""
    # Every other image starts from the base, so it is built whenever it is missing.
    build_base
    if has haproxy; then build_image haproxy "$here/haproxy"; fi
    if has node; then build_image node "$here/node"; fi
    if has coordinator; then bins+=(lbfleet); fi
    if has agent; then bins+=(lbfleet-agent); fi
    if [ ${#bins[@]} -gt 0 ]; then
        build_binaries "${bins[@]}"
        if has coordinator; then build_binary_image coordinator lbfleet "$bin_dir"; fi
        if has agent; then build_binary_image agent lbfleet-agent "$bin_dir"; fi
    fi
    log "done in $((SECONDS - start)) s"
    docker image ls --filter reference='lbfleet/*' >&2
}

main "$@"
