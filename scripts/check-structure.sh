#!/usr/bin/env bash
# The structure rules of src/ (written out in src/lib.rs's module doc), as a
# check that fails:
#   - on an import that runs up the layers below, or a circle of imports
#     (between modules, or between the files of one directory module);
#   - on a src/ file longer than 700 lines before its #[cfg(test)].
# Imports are every `crate::` and `super::` path in the code (comments
# stripped), resolved to the file they name: a plain text scan, so a path
# written out in full counts as much as a `use`.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - "$@" <<'EOF'
import os, re, sys

# The layers, lowest first. A module may import from its own layer or any
# below it, never from one above; circles are refused in any case.
LAYERS = [
    ("ground", "config error text digest rfc3339 cpus dirfd clone"),
    ("names", "reference manifest select mirrors auth"),
    ("services and content", "cloud model_registry format unpack cache hf_cache"),
    ("transport", "registry"),
    ("sources", "source"),
    ("stages", "fetch progress s3 verify install settings plan push"),
    ("pipeline", "pull"),
    ("front", "inspect serve cli"),
]
# Files allowed over 700 lines before their tests, each with the issue
# that splits it.
LONG_OK = {}
MAX_LINES = 700

layer = {}
for i, (_, mods) in enumerate(LAYERS):
    for m in mods.split():
        layer[m] = i

files = []
for d, _, fs in os.walk("src"):
    files += [os.path.join(d, f) for f in fs if f.endswith(".rs")]
files.sort()

def node(path):
    parts = os.path.relpath(path, "src")[:-3].split("/")
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "/".join(parts)

nodes = {node(f) for f in files}
problems = []

# Every top-level module must have a layer (a new one is placed on purpose).
for n in sorted(nodes):
    top = n.split("/")[0]
    if top not in ("lib", "main") and top not in layer:
        problems.append(f"src/{top}: module '{top}' has no layer; add it to LAYERS in scripts/check-structure.sh and to src/lib.rs's map")

def resolve(base, segs):
    for k in range(len(segs), 0, -1):
        cand = "/".join(base + segs[:k])
        if cand in nodes:
            return cand
    return "/".join(base) or None

edges = {}  # node -> {target: (file, line)}
for f in files:
    me = node(f)
    for no, line in enumerate(open(f, encoding="utf-8"), 1):
        code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', line).split("//", 1)[0]
        for m in re.finditer(r"\b(crate|super)((?:::[a-z_0-9]+)+|::\{|::\*)", code):
            segs = [s for s in m.group(2).split("::") if s and s not in ("{", "*")]
            if m.group(1) == "crate":
                base = []
            else:
                # The module above this file's: for src/registry/auth.rs,
                # registry; for src/registry/mod.rs, the crate.
                base = me.split("/")[:-1]
            t = resolve(base, segs)
            if not t or t == me or t == "lib":
                continue
            edges.setdefault(me, {}).setdefault(t, (f, no))

def top(n):
    return n.split("/")[0]

# 0. src/lib.rs's module doc states the same layers, and names every module
# and every file of a directory module (its map is a newcomer's first page).
doc = "\n".join(l[3:].strip() for l in open("src/lib.rs", encoding="utf-8") if l.startswith("//!"))
stated = re.findall(r"^\d+\. ([a-z ]+): ((?:`[a-z_0-9]+`(?:,|;|\.)?\s*)+)", doc, re.M)
stated = [(name, " ".join(re.findall(r"`([a-z_0-9]+)`", mods))) for name, mods in stated]
if stated != LAYERS:
    problems.append("src/lib.rs: its '# Layers' list differs from LAYERS in scripts/check-structure.sh; keep them the same")
for n in sorted(nodes):
    if n in ("lib", "main"):
        continue
    name = n.split("/")[-1]
    if not re.search(r"`(?:[a-z_]+/)?%s(?:\.rs)?`" % re.escape(name), doc):
        problems.append(f"src/lib.rs: its module map does not name '{n}'")

# 1. No import runs up the layers.
for a, ts in sorted(edges.items()):
    for b, (f, no) in sorted(ts.items()):
        ta, tb = top(a), top(b)
        if ta == tb or ta not in layer or tb not in layer:
            continue
        if layer[tb] > layer[ta]:
            problems.append(
                f"{f}:{no}: '{ta}' ({LAYERS[layer[ta]][0]}) imports '{tb}' "
                f"({LAYERS[layer[tb]][0]}), a layer above it"
            )

# 2. No circles: between top-level modules, and between the files of one
# directory module (a directory's mod.rs and its own files are one module
# split into files, so edges between them are not counted).
def cycles(graph):
    seen, out = {}, []
    def visit(n, path):
        seen[n] = 1
        for t in sorted(graph.get(n, ())):
            if seen.get(t) == 1:
                out.append(path[path.index(t):] + [t])
            elif t not in seen:
                visit(t, path + [t])
        seen[n] = 2
    for n in sorted(graph):
        if n not in seen:
            visit(n, [n])
    return out

tops = {}
for a, ts in edges.items():
    for b in ts:
        if top(a) != top(b):
            tops.setdefault(top(a), set()).add(top(b))
files_graph = {}
for a, ts in edges.items():
    for b in ts:
        if top(a) == top(b) and "/" in a and "/" in b:
            files_graph.setdefault(a, set()).add(b)
for c in cycles(tops) + cycles(files_graph):
    problems.append("circle of imports: " + " -> ".join(c))

# 3. File length before the tests.
for f in files:
    lines = open(f, encoding="utf-8").read().split("\n")
    n = next((i for i, l in enumerate(lines) if l.startswith("#[cfg(test)]")), len(lines))
    if n > MAX_LINES and f not in LONG_OK:
        problems.append(f"{f}: {n} lines before its tests (at most {MAX_LINES}); split it by concern")

if problems:
    print("scripts/check-structure.sh: the structure rules of src/lib.rs are broken:", file=sys.stderr)
    for p in problems:
        print("  " + p, file=sys.stderr)
    sys.exit(1)
print(f"structure ok: {len(nodes)} files, {sum(len(t) for t in edges.values())} imports, "
      f"{len(LAYERS)} layers, no circle, no import upwards")
EOF
