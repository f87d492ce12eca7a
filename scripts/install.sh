#!/usr/bin/env bash
# Installs l2d for every user of the machine: PREFIX/bin/l2d, and under
# PREFIX/lib/l2d the libtorch libraries it loads (with the CUDA libraries the
# torch wheel bundles). The binary finds them through its rpath entry
# $ORIGIN/../lib/l2d/torch/lib (build.rs), so neither LD_LIBRARY_PATH nor the
# build's libtorch cache, often in a home directory others cannot read, is needed.
#
#   scripts/install.sh [PREFIX]          build target/release/l2d, install it (PREFIX: /usr/local)
#   scripts/install.sh --binary FILE     install FILE (an l2d built by this checkout) instead,
#                                        e.g. `sudo scripts/install.sh --binary target/release/l2d`
#   scripts/install.sh --link            hard-link the libraries from the libtorch cache instead
#                                        of copying them (~3.5 GB; same filesystem only)
#
# The new files are staged beside their destination and checked (every
# libtorch library must load from PREFIX) before they replace an earlier install.
set -euo pipefail
umask 022

die() { echo "install.sh: $1" >&2; exit "${2:-1}"; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary=""
link=0
prefix=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --binary) [[ $# -ge 2 ]] || die "--binary needs a FILE (see --help)" 2; binary="$2"; shift ;;
    --link) link=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" 2 ;;
    *) [[ -z "$prefix" ]] || die "one PREFIX only, got '$prefix' and '$1' (see --help)" 2; prefix="$1" ;;
  esac
  shift
done
prefix="$(realpath -m -- "${prefix:-/usr/local}")"

# Refuses a PREFIX that cannot be written before anything is built or copied.
check_writable() {
  local dir="$1"
  while [[ ! -e "$dir" ]]; do dir="$(dirname "$dir")"; done
  [[ -d "$dir" ]] || die "PREFIX $prefix: $dir is not a directory" 2
  [[ -w "$dir" ]] || die "PREFIX $prefix: $dir is not writable (run as its owner or root)" 2
}
check_writable "$prefix/bin"
check_writable "$prefix/lib"

if [[ -z "$binary" ]]; then
  # Not setup.sh: under sudo it would fill root's cache and repoint .libtorch.
  [[ -e "$repo/.libtorch" ]] || die "$repo/.libtorch missing: run scripts/setup.sh first" 2
  (cd "$repo" && cargo build --release --locked) || die "cargo build --release failed"
  binary="$repo/target/release/l2d"
fi
[[ -f "$binary" && -x "$binary" ]] || die "--binary $binary: not an executable file" 2
command -v readelf >/dev/null || die "readelf not found (install binutils)"
readelf -d "$binary" | grep -q 'path: \[.*\$ORIGIN/\.\./lib/l2d/torch/lib' ||
  die "$binary has no \$ORIGIN/../lib/l2d/torch/lib rpath; rebuild it with this checkout (cargo build --release)"

# Each library FILE loads, as NAME PATH with the path resolved; a library not found ends the run.
loaded_libs() {
  local name arrow path rest
  while read -r name arrow path rest; do
    [[ "$arrow" == "=>" && "$path" == /* ]] && echo "$name $(realpath "$path")"
    [[ "$arrow" == "=>" && "$path" == not ]] && die "$1: $name not found (run scripts/setup.sh)"
  done < <(ldd "$1")
  true
}

# The libtorch the binary loads, as the loader finds it.
libs="$(loaded_libs "$binary")"
torch_lib="$(dirname "$(awk '$1 == "libtorch_cpu.so" { print $2 }' <<<"$libs")")"
[[ "$torch_lib" != . ]] || die "$binary does not load libtorch_cpu.so"

# torch/lib, and each folder its libraries reach through an $ORIGIN-relative
# rpath (the wheel's nvidia/*/lib), keep their places relative to each other.
lib_dirs=("$torch_lib")
dests=("torch/lib")
while read -r entry; do
  dir="$(realpath -m "$torch_lib/${entry#\$ORIGIN}")"
  rel="$(realpath -m --relative-to="$torch_lib" "$dir")"
  [[ -d "$dir" && "$rel" != . && " ${lib_dirs[*]} " != *" $dir "* ]] || continue
  dest="$(realpath -m --relative-to=/x "/x/torch/lib/$rel")"
  [[ "$dest" != ../* ]] || die "$torch_lib: rpath $entry leaves the install's folder"
  lib_dirs+=("$dir")
  dests+=("$dest")
done < <(for so in "$torch_lib"/*.so*; do readelf -d "$so" | sed -n 's/.*path: \[\(.*\)\]/\1/p' | tr ':' '\n'; done | grep '^\$ORIGIN' | sort -u)

# From here on PREFIX changes; a failure removes what this run created.
created=()
for dir in "$prefix/bin" "$prefix/lib"; do
  missing=()
  d="$dir"
  while [[ ! -e "$d" ]]; do missing=("$d" "${missing[@]}"); d="$(dirname "$d")"; done
  for d in "${missing[@]}"; do
    mkdir -m 755 "$d" 2>/dev/null || die "PREFIX $prefix: cannot create $d" 2
    created=("$d" "${created[@]}")
  done
done
stage="$(mktemp -d "$prefix/lib/.l2d-install.XXXXXX")"
cleanup() { rm -rf "$stage"; for d in "${created[@]}"; do rmdir "$d" 2>/dev/null || true; done; }
trap cleanup EXIT
chmod 755 "$stage"
mkdir -m 755 "$stage/bin" "$stage/lib" "$stage/lib/l2d"

# Copies (or hard-links) SRC to DEST, readable by everyone.
place() {
  local src="$1" dest="$2"
  if [[ $link == 1 && -n "$(find "$src" -maxdepth 0 -type f -perm -004)" ]] && ln "$src" "$dest" 2>/dev/null; then
    return
  fi
  cp -P "$src" "$dest"
  [[ -L "$dest" ]] || chmod "$3" "$dest"
}

count=0
for i in "${!lib_dirs[@]}"; do
  mkdir -p "$stage/lib/l2d/${dests[$i]}"
  for so in "${lib_dirs[$i]}"/*.so*; do
    # libtorch_python needs a Python interpreter and nothing of l2d loads it.
    [[ -f "$so" && "$(basename "$so")" != libtorch_python.so ]] || continue
    place "$so" "$stage/lib/l2d/${dests[$i]}/$(basename "$so")" 644
    count=$((count + 1))
  done
done
find "$stage/lib/l2d" -type d -exec chmod 755 {} +
cp "$binary" "$stage/bin/l2d" # always a copy: a rebuild may rewrite the built file in place
chmod 755 "$stage/bin/l2d"

# The staged binary must load every libtorch library from the staged folder.
staged_libs="$(loaded_libs "$stage/bin/l2d")"
for dir in "${lib_dirs[@]}"; do
  stray="$(awk -v dir="$dir/" 'index($2, dir) == 1 { print $2; exit }' <<<"$staged_libs")"
  [[ -z "$stray" ]] || die "staged l2d still loads $stray; nothing installed"
done
env -i PATH=/usr/bin:/bin "$stage/bin/l2d" info >/dev/null || die "staged l2d info failed; nothing installed"

# Swap in: the libraries first, so a new binary never meets old libraries.
if [[ -e "$prefix/lib/l2d" ]]; then mv "$prefix/lib/l2d" "$stage/old"; fi
if ! mv "$stage/lib/l2d" "$prefix/lib/l2d"; then
  [[ ! -e "$stage/old" ]] || mv "$stage/old" "$prefix/lib/l2d"
  die "cannot move the libraries into $prefix/lib/l2d; the earlier install is unchanged"
fi
mv "$stage/bin/l2d" "$prefix/bin/l2d"
created=()

d="$prefix"
while [[ "$d" != / ]]; do
  [[ -n "$(find "$d" -maxdepth 0 -perm -001)" ]] ||
    echo "install.sh: warning: $d is not searchable by other users, so only its owner can run $prefix/bin/l2d" >&2
  d="$(dirname "$d")"
done
size="$(du -sh "$prefix/lib/l2d" | cut -f1)"
echo "install.sh: installed $prefix/bin/l2d and $count libraries ($size) in $prefix/lib/l2d" >&2
