#!/usr/bin/env bash
# Compiles every ```swift block of README.md and the DocC articles, each as the main.swift
# of an executable of a scratch package that depends on this one by path, so that the
# docs show code that builds against the current API. A block is compiled as written,
# after `import FastVideoDistributed` and `import Foundation` (which an article's later
# blocks leave out) and the lines of an HTML comment right above it that starts with
# `<!-- prelude` (declarations the block assumes, e.g. `let state: ParallelState =
# placeholder()`; `placeholder()` is a value of any type for code that is compiled only). A block that
# starts with `// swift-tools-version` is a package manifest: it is checked with
# `swift package dump-package`. Fails, naming the file and line of each block that does
# not build.
#
#   Tests/snippets/check.sh [SCRATCH_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/fvd-snippets.XXXXXX")}
mkdir -p "$WORK"

python3 - "$ROOT" "$WORK" <<'PY'
import glob, json, os, re, shutil, subprocess, sys

root, work = sys.argv[1:]
files = [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "Sources/FastVideoDistributed/FastVideoDistributed.docc/*.md")))
blocks = []  # (file, line, prelude, code)
for path in files:
    lines = open(path).read().split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```swift\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, start = len(m.group(1)), i + 1
        j = start
        while not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        code = "\n".join(l[indent:] for l in lines[start:j])
        prelude = ""
        k = i - 1
        if k >= 0 and lines[k].strip() == "-->":
            top = k
            while not lines[top].lstrip().startswith("<!--"):
                top -= 1
            if lines[top].strip().startswith("<!-- prelude"):
                prelude = "\n".join(lines[top + 1:k])
        blocks.append((os.path.relpath(path, root), start, prelude, code))
        i = j + 1

package = os.path.join(work, "snippets")
shutil.rmtree(os.path.join(package, "Sources"), ignore_errors=True)
os.makedirs(package, exist_ok=True)
targets, manifests = [], []
for n, (path, line, prelude, code) in enumerate(blocks):
    name = f"Snippet{n:02d}"
    if code.lstrip().startswith("// swift-tools-version"):
        manifests.append((name, path, line, code))
        continue
    folder = os.path.join(package, "Sources", name)
    os.makedirs(folder)
    with open(os.path.join(folder, "main.swift"), "w") as f:
        f.write(f"// {path}:{line}\nimport FastVideoDistributed\nimport Foundation\n"
                + "func placeholder<T>() -> T { fatalError(\"the docs' snippets are compiled, not run\") }\n" + (prelude + "\n" if prelude else "") + code + "\n")
    targets.append((name, path, line))
identity = os.path.basename(root)

def write_manifest(targets):
    lines = "".join(
        f'        .executableTarget(name: "{t}", dependencies: [.product(name: "FastVideoDistributed", package: "{identity}")]),\n'
        for t, _, _ in targets)
    open(os.path.join(package, "Package.swift"), "w").write(
        "// swift-tools-version: 6.1\nimport PackageDescription\nlet package = Package(\n    name: \"Snippets\",\n"
        f"    dependencies: [.package(path: {json.dumps(root)})],\n    targets: [\n{lines}    ],\n"
        "    swiftLanguageModes: [.v6]\n)\n")

failed = []
for name, path, line, code in manifests:
    folder = os.path.join(work, "manifests", name)
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "Package.swift"), "w").write(code + "\n")
    result = subprocess.run(["swift", "package", "dump-package"], cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        failed.append(f"{path}:{line}: the package manifest does not load:\n{result.stderr}")
# A failed build stops before every target has been compiled: drop the blocks that
# failed and build again, until the rest builds.
remaining = list(targets)
while remaining:
    write_manifest(remaining)
    result = subprocess.run(["swift", "build", "--package-path", package], capture_output=True, text=True)
    if result.returncode == 0:
        break
    output = result.stdout + result.stderr
    broken = []
    for name, path, line in remaining:
        errors = [l for l in output.split("\n") if f"/{name}/main.swift:" in l and "error:" in l]
        if errors:
            broken.append(name)
            failed.append(f"{path}:{line}: the block does not compile:\n  " + "\n  ".join(sorted(set(errors))))
    if not broken:
        failed.append("the snippet package does not build:\n" + output[-4000:])
        break
    remaining = [t for t in remaining if t[0] not in broken]
print(f"snippets: {len(targets)} Swift blocks and {len(manifests)} manifests from {len(files)} files")
if failed:
    print("\n".join(failed), file=sys.stderr)
    sys.exit(1)
print("snippets: all build")
PY
