#!/bin/sh
# finish-venv.sh PKGROOT VENV PYTHON: make a freshly pip-installed virtualenv fit to ship
# in an OS package. Used by debian/rules (after dh_virtualenv) and by
# rpm/cri-resource-manager.spec (%install), so both packages get the same venv.
#   PKGROOT  the package's root directory (debian/cri-resource-manager, %{buildroot})
#   VENV     where the venv is installed (/opt/venvs/cri-resource-manager)
#   PYTHON   the interpreter it was made with (/usr/bin/python3.11)
# The result does not depend on the build directory: the packages are reproducible.
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

# No build paths: in the scripts (rpm makes the venv inside the buildroot), in
# pyvenv.cfg's record of the creating command, in pip's record of where our wheel
# came from.
grep -rlF "$root" "$dir/bin" | while IFS= read -r f; do
    sed -i "s|$root||g" "$f"
done
sed -i '/^command = /d' "$dir/pyvenv.cfg"
for f in "$dir"/lib/python*/site-packages/*.dist-info/direct_url.json; do
    [ -e "$f" ] || continue
    rm "$f"
    sed -i '/direct_url\.json/d' "${f%/*}/RECORD"
done

# Console scripts start with one line naming the venv's interpreter. pip writes a
# /bin/sh wrapper instead when the build path makes the shebang too long; without
# this the package would depend on where it was built.
"$python" - "$dir" "$venv/bin/python" <<'PY'
import glob, os, sys
bindir, interpreter = sys.argv[1] + "/bin", sys.argv[2]
for path in glob.glob(bindir + "/*"):
    if os.path.islink(path) or not os.path.isfile(path):
        continue
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines[0] == b"#!/bin/sh" and lines[1].startswith(b"'''exec' "):
        del lines[:3]  # #!/bin/sh, '''exec' PYTHON "$0" "$@", ' '''
    elif lines[0].startswith(b"#!") and b"python" in lines[0]:
        del lines[:1]
    else:
        continue
    with open(path, "wb") as f:
        f.write(b"\n".join([b"#!" + interpreter.encode()] + lines))
PY

# Library modules are not scripts: no shebang (kept as an empty comment so line
# numbers stay), no execute bit (some wheels ship +x files).
find "$dir/lib" -name '*.py' -exec sed -i '1{/^#!/s/.*/#/}' {} +
find "$dir/lib" -type f -perm /111 ! -name '*.so' -exec chmod a-x {} +

# The venv's include/ directory is empty (nothing is compiled against the venv).
rm -rf "$dir/include"

# Shared objects stripped like dh_strip does.
find "$dir/lib" -name '*.so' -type f -exec strip --remove-section=.comment \
    --remove-section=.note --strip-unneeded {} +

# pip's RECORD has the hashes of the files as pip wrote them; several changed above.
"$python" - "$dir" <<'PY'
import base64, csv, glob, hashlib, io, os, sys
for record in glob.glob(sys.argv[1] + "/lib/python*/site-packages/*.dist-info/RECORD"):
    base = os.path.dirname(os.path.dirname(record))
    with open(record, newline="") as f:
        rows = list(csv.reader(f))
    for row in rows:
        path = os.path.normpath(os.path.join(base, row[0]))
        if len(row) == 3 and row[1] and os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            row[1], row[2] = "sha256=" + digest.decode(), str(len(data))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    with open(record, "w", newline="") as f:
        f.write(out.getvalue())
PY

# Bytecode made here, reproducibly: paths as installed, validated by source hash (so
# the service, which cannot write there, never needs to write bytecode).
find "$dir" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m compileall -q -f -s "$root" -p / --invalidation-mode checked-hash "$dir/lib"
