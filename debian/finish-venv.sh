#!/bin/sh
# finish-venv.sh PKGROOT VENV PYTHON: make a freshly pip-installed virtualenv fit to ship
# in an OS package. Used by debian/rules (after dh_virtualenv) and by
# rpm/cri-resource-manager.spec (%install), so both packages get the same venv.
#   PKGROOT  the package's root directory (debian/cri-resource-manager, %{buildroot})
#   VENV     where the venv is installed (/opt/venvs/cri-resource-manager)
#   PYTHON   the interpreter it was made with (/usr/bin/python3.11)
set -eu

[ $# -eq 3 ] || { echo "usage: $0 PKGROOT VENV PYTHON" >&2; exit 2; }
root=$1
venv=$2
python=$3
dir=$root$venv
[ -x "$dir/bin/python" ] || { echo "$0: no venv at $dir" >&2; exit 1; }

# Build tools are not needed at run time (and would only let someone change files
# the package manager owns): the venv holds the program and its dependencies only.
PYTHONDONTWRITEBYTECODE=1 "$dir/bin/python" -m pip uninstall -q -y setuptools pip

# No build paths: scripts (rpm builds the venv inside the buildroot), pyvenv.cfg's
# record of the creating command, pip's record of where our wheel came from.
grep -rlF "$root" "$dir/bin" | while IFS= read -r f; do
    sed -i "s|$root||g" "$f"
done
sed -i '/^command = /d' "$dir/pyvenv.cfg"
# pip's RECORD hashes the scripts as it wrote them (with the build path): rehash.
"$python" - "$dir" <<'PY'
import base64, csv, glob, hashlib, io, os, sys
for record in glob.glob(os.path.join(sys.argv[1], "lib/python*/site-packages/*.dist-info/RECORD")):
    base = os.path.dirname(os.path.dirname(record))
    with open(record, newline="") as f:
        rows = list(csv.reader(f))
    for row in rows:
        path = os.path.normpath(os.path.join(base, row[0]))
        if row[0].startswith("../") and row[1] and os.path.isfile(path):
            data = open(path, "rb").read()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            row[1], row[2] = "sha256=" + digest.decode(), str(len(data))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    with open(record, "w", newline="") as f:
        f.write(out.getvalue())
PY
for f in "$dir"/lib/python*/site-packages/*.dist-info/direct_url.json; do
    [ -e "$f" ] || continue
    rm "$f"
    sed -i '/direct_url\.json/d' "${f%/*}/RECORD"
done

# Library modules are not scripts: no shebang (kept as an empty comment so line
# numbers stay), no execute bit (some wheels ship +x files).
find "$dir/lib" -name '*.py' -exec sed -i '1{/^#!/s/.*/#/}' {} +
find "$dir/lib" -type f -perm /111 ! -name '*.so' -exec chmod a-x {} +

# The venv's include/ directory is empty (nothing is compiled against the venv).
rm -rf "$dir/include"

# Shared objects stripped like dh_strip does.
find "$dir/lib" -name '*.so' -type f -exec strip --remove-section=.comment \
    --remove-section=.note --strip-unneeded {} +

# Bytecode made here, reproducibly: paths as installed, validated by source hash (so
# the service, which cannot write there, never needs to write bytecode).
find "$dir" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m compileall -q -f -s "$root" -p / --invalidation-mode checked-hash "$dir/lib"
