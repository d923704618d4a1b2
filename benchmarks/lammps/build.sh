#!/usr/bin/env bash
# Build the third-party tools that cross-check bpnn_jax's n2p2 export.
#
#   bash benchmarks/lammps/build.sh [--lammps] [CACHE_DIR]
#
# Stage 1 (always): n2p2's libnnp and nnp-predict, without MPI, from the
#   source archive in ../shared/tools (N2P2_TARBALL overrides it), into
#   CACHE_DIR/n2p2 (default ${BPNN_TOOLS_CACHE:-~/.cache/bpnn_jax_tools}).
#   tests/calculators/test_n2p2.py (pytest -m lammps) finds CACHE_DIR/n2p2/bin/nnp-predict
#   there, or wherever BPNN_N2P2_BIN points.
# Stage 2 (--lammps): n2p2's libnnpif (with MPI) and LAMMPS 2022-01-06 from
#   Debian's source package with ML-HDNNP, MANYBODY and MPI, into CACHE_DIR/lammps
#   (binary CACHE_DIR/lammps/build/lmp; LAMMPS's own pair_hdnnp, CMake, no OpenMP). Needs a
#   deb-src entry for bookworm (docs/n2p2.md); records what it did in CACHE_DIR/lammps/BPNN_BUILD.
#
# n2p2 fix: Mode::calculateForces (nnp-predict, nnp-train; not the LAMMPS
#   interface, which sums ghost atoms itself) skips the neighbour entries of an
#   atom that are periodic images of the atom itself, so angular (G4) forces
#   are wrong in cells narrower than the cut-off (the bug n2p2 PR #101 fixed in
#   2021 is back in this commit: the loop over "unique neighbours" starts one
#   past the centre atom).  Stage 1 patches that loop to start at the centre
#   atom (one line; N2P2_PATCH=0 builds n2p2 as it is) and records what it did
#   in CACHE_DIR/n2p2/BPNN_BUILD.
# Idempotent: a stage whose outputs exist is skipped (delete them to rebuild).
# Runs `make -j${JOBS:-2}` under `nice -n 19`. Installs missing Debian build
# packages with apt-get when run as root.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
want_lammps=0
cache=""
for arg in "$@"; do
    case "$arg" in
        --lammps) want_lammps=1 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        -*) echo "unknown option $arg" >&2; exit 2 ;;
        *) cache="$arg" ;;
    esac
done
cache="${cache:-${BPNN_TOOLS_CACHE:-$HOME/.cache/bpnn_jax_tools}}"
tarball="${N2P2_TARBALL:-$repo/../shared/tools/n2p2-61daa0d.tar.gz}"
jobs="${JOBS:-2}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

need_debs() {  # install the Debian packages among "$@" that are missing
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages: ${missing[*]} (run as root or install them)" >&2
        exit 1
    fi
    echo "installing ${missing[*]}"
    apt-get install -y "${missing[@]}"
}

# ---------------------------------------------------------------- n2p2 ----
n2p2="$cache/n2p2"
patch="${N2P2_PATCH:-1}"
want_note="self-image-force-patch=$patch"
if [ -x "$n2p2/bin/nnp-predict" ] && [ -f "$n2p2/lib/libnnp.a" ] && grep -qx "$want_note" "$n2p2/BPNN_BUILD" 2>/dev/null; then
    echo "n2p2: $n2p2/bin/nnp-predict exists ($want_note), skipping"
else
    need_debs g++ make libeigen3-dev libgsl-dev
    [ -f "$tarball" ] || { echo "n2p2 source archive not found: $tarball (set N2P2_TARBALL)" >&2; exit 1; }
    start=$(date +%s)
    rm -rf "$n2p2"  # a fresh tree: the patch state must match the build
    tar -xzf "$tarball" -C "$cache"   # the archive's top directory is n2p2/
    mode="$n2p2/src/libnnp/Mode.cpp"
    if [ "$patch" = 1 ]; then
        if grep -q 'ai.neighborsUnique.begin() + 1;' "$mode"; then
            sed -i 's/ai\.neighborsUnique\.begin() + 1;/ai.neighborsUnique.begin();/' "$mode"
            echo "n2p2: patched Mode::calculateForces (forces from periodic images of the centre atom)"
        else
            echo "n2p2: WARNING: Mode::calculateForces does not look as expected; not patched" >&2
        fi
    fi
    (
        cd "$n2p2/src"
        # -march=native (n2p2's default) is fine: the binary runs where it was built.
        nice -n 19 make -j"$jobs" libnnp PROJECT_OPTIONS+=-DN2P2_NO_MPI
        nice -n 19 make nnp-predict PROJECT_OPTIONS+=-DN2P2_NO_MPI
    )
    printf '%s\n%s\n' "source=$(basename "$tarball")" "$want_note" > "$n2p2/BPNN_BUILD"
    echo "n2p2: built $n2p2/bin/nnp-predict in $(( $(date +%s) - start )) s"
fi

[ "$want_lammps" -eq 1 ] || exit 0

# -------------------------------------------------------------- LAMMPS ----
lmp_root="$cache/lammps"
if [ -x "$lmp_root/build/lmp" ]; then
    echo "LAMMPS: $lmp_root/build/lmp exists, skipping"
    exit 0
fi
need_debs g++ make cmake mpi-default-dev mpi-default-bin dpkg-dev libeigen3-dev libgsl-dev
start=$(date +%s)
# libnnpif needs MPI; build it in a separate copy of n2p2 so that the serial
# libnnp above stays as it is.
n2p2_mpi="$lmp_root/n2p2"
# libnnpif is compiled with mpic++; without OMPI_SKIP_MPICXX/MPICH_SKIP_MPICXX (as LAMMPS compiles) it
# pulls in Open MPI's C++ bindings (libmpi_cxx), which LAMMPS does not link: undefined MPI::Comm::Comm().
nnpif_note="libnnpif-mpicxx-skipped=1"
if [ ! -f "$n2p2_mpi/lib/libnnpif.a" ] || ! grep -qx "$nnpif_note" "$n2p2_mpi/BPNN_BUILD" 2>/dev/null; then
    mkdir -p "$lmp_root"
    [ -d "$n2p2_mpi/src" ] || tar -xzf "$tarball" -C "$lmp_root"
    rm -f "$n2p2_mpi/lib/libnnpif.a" "$n2p2_mpi/src/libnnpif/libnnpif.a" "$n2p2_mpi"/src/libnnpif/LAMMPS/*.o
    (
        cd "$n2p2_mpi/src"
        [ -f "$n2p2_mpi/lib/libnnp.a" ] || nice -n 19 make -j"$jobs" libnnp
        nice -n 19 make -j"$jobs" libnnpif INTERFACES=LAMMPS \
            PROJECT_CFLAGS_MPI="-Wno-long-long -DOMPI_SKIP_MPICXX -DMPICH_SKIP_MPICXX"
    )
    printf '%s\n' "source=$(basename "$tarball") (not patched: LAMMPS does not use Mode::calculateForces)" \
        "$nnpif_note" > "$n2p2_mpi/BPNN_BUILD"
    rm -f "$lmp_root/build/lmp"  # relink
fi
src_dir=$(ls -d "$lmp_root"/lammps-20220106* 2>/dev/null | head -n 1 || true)
# An earlier version of this script copied n2p2's ML-HDNNP files over LAMMPS's; that copy needs LAMMPS's
# newer neighbour-request API (Neighbor::add_request, LAMMPS >= 2022-06) and brings pair_hdnnp_develop and
# pair_hdnnp_external, which CMake would compile too: unpack a tree that has them afresh.
if [ -n "$src_dir" ] && { [ -e "$src_dir/src/ML-HDNNP/pair_hdnnp_develop.cpp" ] || \
        grep -q add_request "$src_dir/src/ML-HDNNP/pair_hdnnp.cpp"; }; then
    echo "LAMMPS: $src_dir has n2p2's ML-HDNNP copy; unpacking it again"
    rm -rf "$src_dir" "$lmp_root/build"
    src_dir=""
fi
if [ -z "$src_dir" ]; then
    (
        cd "$lmp_root"
        ls lammps_*.dsc >/dev/null 2>&1 || apt-get source --download-only lammps || {
            echo "apt-get source lammps failed: add a deb-src entry for bookworm (see docs/n2p2.md) and run apt-get update" >&2
            exit 1
        }
        dpkg-source --no-check -x lammps_*.dsc
    )
    src_dir=$(ls -d "$lmp_root"/lammps-20220106* 2>/dev/null | head -n 1 || true)
    [ -n "$src_dir" ] || { echo "Debian's lammps source is not version 2022-01-06 (see $lmp_root)" >&2; exit 1; }
fi
# LAMMPS 2022-01-06's own pair_hdnnp is used as it is: it calls only InterfaceLammps functions that this
# n2p2 has (setLocalAtoms, setLocalTags, addNeighbor, process, getForces, getEnergy, ...), and it is the
# same code as n2p2's copy up to that API change and cosmetics. n2p2's copy does not compile here.
grep -q 'neighbor->request' "$src_dir/src/ML-HDNNP/pair_hdnnp.cpp" || {
    echo "LAMMPS: $src_dir/src/ML-HDNNP/pair_hdnnp.cpp is not LAMMPS 2022-01-06's" >&2; exit 1; }
mkdir -p "$lmp_root/build"
(
    cd "$lmp_root/build"
    # Only what the cross-check needs: MPI, ML-HDNNP (against the libnnpif above), MANYBODY. No OpenMP
    # (no package here uses it; one thread per rank keeps the timings simple).
    cmake "$src_dir/cmake" -DCMAKE_BUILD_TYPE=Release -DBUILD_MPI=on -DBUILD_OMP=off \
        -DPKG_ML-HDNNP=on -DPKG_MANYBODY=on \
        -DDOWNLOAD_N2P2=off -DN2P2_DIR="$n2p2_mpi"
    # n2p2's headers (Structure.h) include <Eigen/Core>, which LAMMPS's CMake does not look for: give the
    # compiler Debian's Eigen through CPATH (only dynamic-size Eigen types there, so n2p2's -march=native
    # and LAMMPS's flags agree on every layout).
    eigen_inc=$(pkg-config --cflags-only-I eigen3 2>/dev/null | sed 's/^-I//; s/ *$//')
    CPATH="${eigen_inc:-/usr/include/eigen3}${CPATH:+:$CPATH}" nice -n 19 make -j"$jobs"
)
[ -x "$lmp_root/build/lmp" ] || { echo "LAMMPS: build failed (no $lmp_root/build/lmp)" >&2; exit 1; }
secs=$(( $(date +%s) - start ))
printf '%s\n' "source=$(basename "$src_dir")" "n2p2=$(basename "$tarball") (libnnpif with MPI, unpatched)" \
    "pair_hdnnp=LAMMPS 2022-01-06's" "build_seconds_this_run=$secs" "jobs=$jobs" > "$lmp_root/BPNN_BUILD"
"$lmp_root/build/lmp" -h | sed -n '/^Installed packages:/,/^List of individual/p' | grep -v '^List' || true
echo "LAMMPS: built $lmp_root/build/lmp in $secs s"
