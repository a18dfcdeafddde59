#!/usr/bin/env bash
# Binary size of the shipping build (docs/SIZE.md): builds `release-small` and prints the size of
# the stripped binary as `ls -l` gives it; with ATTRIBUTE=1 it also builds the same profile with
# symbols kept (CARGO_PROFILE_RELEASE_SMALL_STRIP=false) and prints the ELF sections (`size -A`),
# the largest crates and the largest functions (`cargo bloat`, installed when missing). No load
# is generated; a build takes about 4 minutes on a 2-core machine.
#
#   bash benches/size.sh                 # the stripped size
#   ATTRIBUTE=1 bash benches/size.sh     # and where the bytes go
#   BUILD_STD=unwind bash benches/size.sh   # what rebuilding the standard library would give
#   BUILD_STD=abort bash benches/size.sh    # the same without unwinding (not shippable, see below)
#
# BUILD_STD (docs/SIZE.md, "Rebuilding the standard library") builds the same profile with a
# nightly toolchain's `-Z build-std`, the standard library compiled with the profile, without
# backtrace symbolisation and with its size-optimised algorithms: `unwind` keeps unwinding (a
# handler's panic is still answered 500 and the server goes on); `abort` makes every panic abort
# the process, which the server must never do, and is measured only to show what unwinding costs.
# Needs `rustup toolchain install nightly` and `rustup component add rust-src --toolchain nightly`
# (run when missing). Builds into target/build-std-BUILD_STD.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${BUILD_STD:-}" ]]; then
    rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src' ||
        rustup component add rust-src --toolchain nightly
    host=$(rustc -vV | sed -n 's/^host: //p')
    target_dir=target/build-std-$BUILD_STD
    case $BUILD_STD in
        unwind)
            CARGO_TARGET_DIR=$target_dir cargo +nightly build -Z build-std=std,panic_unwind \
                -Z build-std-features=panic-unwind,optimize_for_size --target "$host" \
                --profile release-small --bin fiddler_crab ;;
        abort)
            CARGO_TARGET_DIR=$target_dir CARGO_PROFILE_RELEASE_SMALL_PANIC=abort \
                RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort" \
                cargo +nightly build -Z build-std=std,panic_abort \
                -Z build-std-features=optimize_for_size --target "$host" \
                --profile release-small --bin fiddler_crab ;;
        *) echo "BUILD_STD is unwind or abort, not $BUILD_STD" >&2; exit 2 ;;
    esac
    bin=$target_dir/$host/release-small/fiddler_crab
    printf 'release-small, build-std (%s): %s bytes (%s, %s)\n' "$BUILD_STD" "$(stat -c %s "$bin")" \
        "$(git rev-parse --short HEAD)" "$(rustc +nightly --version)"
    exit 0
fi

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
