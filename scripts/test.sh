#!/usr/bin/env bash
# Sets up libtorch and the parity-test Python packages if needed, then runs
# the whole test suite (release build: the tests run real models).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh --test-deps
cargo test --release --locked "$@"
