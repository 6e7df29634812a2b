#!/usr/bin/env bash
# Smoke check of what users install: build the sdist and wheel, install the wheel (not editable) into
# a fresh venv without the system site-packages, and drive every command from a directory outside
# the checkout, on real MNIST. The test suite runs on an editable install, which finds modules in the
# source tree whether or not the wheel ships them; this check is what catches a missing package.
#
# Usage: bash .ci/wheel_check.sh   (PYTHON: the interpreter that builds; SPARSEBENCH_DATA: the data
# root, default ../shared/data beside the checkout; KEEP_WORK=1 keeps the temporary folder)
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
DATA="${SPARSEBENCH_DATA:-$REPO/../shared/data}"
PLUGIN="$REPO/examples/sparsebench-l1prune"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sparsebench-wheel.XXXXXX")"
START=$SECONDS

step() { echo "[wheel-check +$((SECONDS - START))s] $*"; }
fail() {
    echo "[wheel-check] FAILED: $*" >&2
    exit 1
}
cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ] || [ -n "${KEEP_WORK:-}" ]; then
        echo "[wheel-check] work folder kept for inspection: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

[ -d "$DATA/mnist" ] || fail "no MNIST under $DATA (set SPARSEBENCH_DATA to the data root)"
DATA="$(cd "$DATA" && pwd)"

step "building the sdist and the wheel"
if "$PY" -m pip install -q build >"$WORK/pip-build.log" 2>&1; then
    "$PY" -m build --outdir "$WORK/dist" "$REPO" >"$WORK/build.log" 2>&1 ||
        { tail -n 40 "$WORK/build.log"; fail "python -m build"; }
else
    echo "[wheel-check] the 'build' package is not installable; building the wheel with pip only" >&2
    "$PY" -m pip wheel -q --no-deps -w "$WORK/dist" "$REPO" >"$WORK/build.log" 2>&1 ||
        { tail -n 40 "$WORK/build.log"; fail "pip wheel"; }
fi
WHEEL="$(ls "$WORK"/dist/sparsebench-*.whl)"
VERSION="$(basename "$WHEEL" | cut -d- -f2)"
step "built $(cd "$WORK/dist" && ls | tr '\n' ' ')"

step "comparing the wheel's files with the source tree"
"$PY" - "$WHEEL" "$REPO" <<'EOF'
import sys
import zipfile
from pathlib import Path

wheel, repo = sys.argv[1], Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
# Source folder -> where it lands in the wheel, and which of its files must be there.
layout = {
    "sparsebench": ("sparsebench", ("*.py",)),
    "methods": ("sparsebench/methods", ("*.py",)),
    "tasks": ("sparsebench/tasks", ("*.py",)),
    "sweeps": ("sparsebench/sweeps", ("*.py", "*.yaml", "*.yml")),
}
expected = set()
for folder, (target, patterns) in layout.items():
    for pattern in patterns:
        for path in (repo / folder).rglob(pattern):
            if "__pycache__" not in path.parts:
                expected.add(f"{target}/{path.relative_to(repo / folder).as_posix()}")
missing = sorted(expected - names)
stray = sorted(n for n in names if n.split("/")[0] in ("methods", "tasks", "sweeps", "tests", "examples"))
for name in missing:
    print(f"  missing from the wheel: {name}")
for name in stray:
    print(f"  outside the sparsebench package: {name}")
if missing or stray:
    sys.exit(1)
print(f"  all {len(expected)} source files are in the wheel ({len(names)} entries)")
EOF

step "fresh venv (no system site-packages); installing torch==2.13.0 and the wheel"
"$PY" -m venv "$WORK/venv"
export PATH="$WORK/venv/bin:$PATH"
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV
python -m pip install -q --no-compile torch==2.13.0 "$WHEEL" >"$WORK/pip.log" 2>&1 ||
    { tail -n 40 "$WORK/pip.log"; fail "installing the wheel"; }
[ "$(command -v sparsebench)" = "$WORK/venv/bin/sparsebench" ] || fail "sparsebench is not the venv's script"

OUT="$WORK/outside"
mkdir -p "$OUT"
cd "$OUT"
export SPARSEBENCH_DATA="$DATA"
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"
export SPARSEBENCH_CHECKPOINTS="$OUT/checkpoints"

step "importing every module of the installed package (from $OUT)"
python - "$REPO" <<'EOF'
import importlib
import pkgutil
import sys
from pathlib import Path

import sparsebench

repo, origin = Path(sys.argv[1]).resolve(), Path(sparsebench.__file__).resolve()
if repo in origin.parents:
    sys.exit(f"  sparsebench was imported from the checkout ({origin}), not from the wheel")
failed = []
modules = pkgutil.walk_packages(sparsebench.__path__, "sparsebench.", failed.append)
names = [m.name for m in modules if not m.name.endswith(".__main__")]  # __main__ would run the CLI
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
for line in failed:
    print(f"  import failed: {line}")
print(f"  imported {len(names) + 1} modules from {origin.parent}")
sys.exit(1 if failed else 0)
EOF

step "sparsebench --version"
got="$(sparsebench --version)"
echo "  $got"
[ "$got" = "sparsebench $VERSION" ] || fail "--version printed '$got', the wheel is $VERSION"

step "sparsebench list"
sparsebench list | sed 's/^/  /'

step "sparsebench run: sparse_vd on lenet300_100, 1 epoch of real MNIST"
sparsebench run --method sparse_vd --task lenet300_100 --set train.epochs=1 --no-progress --json \
    >"$OUT/run.json" 2>"$OUT/run.err" || { tail -n 30 "$OUT/run.err"; fail "sparsebench run"; }
RUN="$(python - "$OUT/run.json" <<'EOF'
import json
import sys

result = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"  {result['row']}", file=sys.stderr)
if not result["test_metric"] < 10.0:  # one epoch of real MNIST reaches about 3 %
    sys.exit(f"  test error {result['test_metric']} %: the run did not learn")
print(result["run_id"])
EOF
)"

step "sparsebench bench $RUN"
sparsebench bench "$RUN" --threads 1 --batch-sizes 1 100 --repeats 2 --warmup 1 2>"$OUT/bench.err" |
    sed 's/^/  /' || { tail -n 30 "$OUT/bench.err"; fail "sparsebench bench"; }

step "sparsebench report --run $RUN"
sparsebench report --run "$RUN" --name smoke --out "$OUT/report" 2>"$OUT/report.err" | sed 's/^/  /' ||
    { tail -n 30 "$OUT/report.err"; fail "sparsebench report"; }
for file in report.md report.html; do
    [ -s "$OUT/report/$file" ] || fail "report wrote no $file"
done

# A shipped spec addressed by name (package data); magnitude trains at dense speed, which keeps CI short.
step "sparsebench sweep: 2 trials of the shipped spec magnitude_lenet300_100, 1 epoch each"
sparsebench sweep magnitude_lenet300_100 --n-trials 2 --epochs 1 --storage "$OUT/optuna.journal" \
    2>"$OUT/sweep.err" | sed 's/^/  /' || { tail -n 30 "$OUT/sweep.err"; fail "sparsebench sweep"; }

step "example plugin: install, list, run, conformance tests"
cp -r "$PLUGIN" "$WORK/plugin"  # a copy: building it in place would leave build/ and egg-info in the checkout
python -m pip install -q --no-compile "$WORK/plugin" pytest >"$WORK/pip-plugin.log" 2>&1 ||
    { tail -n 40 "$WORK/pip-plugin.log"; fail "installing the example plugin"; }
sparsebench list methods | grep -E "^ *l1_prune " | sed 's/^/  /' || fail "list methods does not show l1_prune"
sparsebench run --method l1_prune --task lenet300_100 --set train.epochs=1 --no-progress \
    2>"$OUT/plugin-run.err" | tail -n 1 | sed 's/^/  /' ||
    { tail -n 30 "$OUT/plugin-run.err"; fail "sparsebench run --method l1_prune"; }
cp -r "$WORK/plugin/tests" "$OUT/plugin-tests"
python -m pytest -q -p no:cacheprovider "$OUT/plugin-tests" >"$OUT/plugin-tests.log" 2>&1 ||
    { tail -n 40 "$OUT/plugin-tests.log"; fail "the example plugin's conformance tests"; }
tail -n 1 "$OUT/plugin-tests.log" | sed 's/^/  /'

step "all wheel checks passed in $((SECONDS - START)) s"
