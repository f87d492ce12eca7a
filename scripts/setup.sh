#!/usr/bin/env bash
# Installs libtorch 2.11.0 (from the torch==2.11.0 wheel, CUDA 13 libraries
# included) into a versioned cache outside the checkout and points the
# checkout's `.libtorch` at it, so that plain `cargo build` works afterwards.
#
#   scripts/setup.sh               libtorch only
#   scripts/setup.sh --test-deps   also transformers & co. for the parity tests
#
# Environment:
#   L2D_CACHE            cache root (default: ~/.cache/l2d)
#   L2D_TORCH_INDEX_URL  another build of the same torch version, e.g.
#                        https://download.pytorch.org/whl/cu126 for an older driver
set -euo pipefail

TORCH_VERSION=2.11.0
# CUDA headers the torch wheel lacks but ProcessGroupNCCL.hpp includes
# (cuda_runtime.h needs crt/host_config.h, cuda_fp16.h needs <nv/target>);
# build.rs compiles the NCCL part of src/dist only when they are present.
NCCL_HEADER_DEPS=(nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85)
TEST_DEPS=(transformers==4.57.1 peft==0.17.1 tensorboard==2.21.0 safetensors numpy)
want_test_deps=0
for arg in "$@"; do
  case "$arg" in
    --test-deps) want_test_deps=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${L2D_CACHE:-$HOME/.cache/l2d}"
variant="torch-$TORCH_VERSION"
pip_index=()
if [[ -n "${L2D_TORCH_INDEX_URL:-}" ]]; then
  variant="$variant-$(printf '%s' "$L2D_TORCH_INDEX_URL" | sha256sum | cut -c1-8)"
  pip_index=(--index-url "$L2D_TORCH_INDEX_URL")
fi
root="$cache/$variant"
venv="$root/venv"
py="$venv/bin/python"

if [[ ! -f "$root/.complete" ]]; then
  echo "setup: installing torch==$TORCH_VERSION into $root (one time, a few GB)" >&2
  rm -rf "$venv"
  mkdir -p "$root"
  python3 -m venv "$venv"
  "$py" -m pip install --quiet --no-input --disable-pip-version-check \
    "${pip_index[@]}" "torch==$TORCH_VERSION" numpy
  touch "$root/.complete"
fi

# The marker records the list it installed, so adding a dependency here
# reaches venvs set up before the change.
test_deps_marker="$root/.test-deps-complete"
if [[ $want_test_deps == 1 && "$(cat "$test_deps_marker" 2>/dev/null)" != "${TEST_DEPS[*]}" ]]; then
  echo "setup: installing test dependencies (${TEST_DEPS[*]})" >&2
  "$py" -m pip install --quiet --no-input --disable-pip-version-check "${TEST_DEPS[@]}"
  printf '%s\n' "${TEST_DEPS[*]}" >"$test_deps_marker"
fi

torch_dir="$("$py" -c "import os, torch; print(os.path.dirname(torch.__file__))" 2>/dev/null)"
nccl_marker="$root/.nccl-headers-complete"
if [[ -f "$torch_dir/lib/libtorch_cuda.so" && "$(cat "$nccl_marker" 2>/dev/null)" != "${NCCL_HEADER_DEPS[*]}" ]]; then
  echo "setup: installing CUDA headers for NCCL (${NCCL_HEADER_DEPS[*]})" >&2
  "$py" -m pip install --quiet --no-input --disable-pip-version-check "${NCCL_HEADER_DEPS[@]}"
  printf '%s\n' "${NCCL_HEADER_DEPS[*]}" >"$nccl_marker"
fi

ln -sfn "$torch_dir" "$repo/.libtorch"
ln -sfn "$venv" "$repo/.venv"
echo "setup: libtorch $TORCH_VERSION at $torch_dir" >&2
