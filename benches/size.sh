#!/usr/bin/env bash
# Binary size of the shipping build (docs/SIZE.md): builds `release-small` and prints the size of
# the stripped binary as `ls -l` gives it; with ATTRIBUTE=1 it also builds the same profile with
# symbols kept (CARGO_PROFILE_RELEASE_SMALL_STRIP=false) and prints the ELF sections (`size -A`),
# the largest crates and the largest functions (`cargo bloat`, installed when missing). No load
# is generated; a build takes about 4 minutes on a 2-core machine.
#
#   bash benches/size.sh                 # the stripped size
#   ATTRIBUTE=1 bash benches/size.sh     # and where the bytes go
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release-small/fiddler_crab
cargo build --profile release-small --bin fiddler_crab
printf 'release-small: %s bytes (%s)\n' "$(stat -c %s "$bin")" "$(git rev-parse --short HEAD)"

if [[ "${ATTRIBUTE:-0}" == 1 ]]; then
    command -v cargo-bloat >/dev/null || cargo install --locked cargo-bloat
    export CARGO_PROFILE_RELEASE_SMALL_STRIP=false
    cargo bloat --profile release-small --bin fiddler_crab --crates -n "${CRATES:-40}"
    cargo bloat --profile release-small --bin fiddler_crab -n "${FUNCTIONS:-30}"
    echo "sections of the unstripped build (the debug ones are what strip removes):"
    size -A "$bin" | awk 'NR > 2 && $1 !~ /^\.debug/ && $2 > 0' | sort -k2 -n -r | sed -n 1,14p
    # Leave the stripped binary in place, as `cargo build --profile release-small` would.
    unset CARGO_PROFILE_RELEASE_SMALL_STRIP
    cargo build --profile release-small --bin fiddler_crab
fi
