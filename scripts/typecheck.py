"""mypy over the imshift package as it is installed, and over bench/.

The repo's top-level folders are subpackages of one namespace (pyproject's
[tool.setuptools.package-dir]: vendors/ is imshift.vendors), which mypy cannot
map by itself, and the editable install's import hook is invisible to it. So this
lays the package out as installed, as a tree of symbolic links under
build/mypy-src (mypy_path in pyproject.toml), runs mypy on it, and names each
finding by its file in the repo. Extra arguments go to mypy.
"""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "mypy-src"
FINDING = re.compile(r"^([^:\s]+\.pyi?)(:.*)$")


def lay_out() -> None:
    """build/mypy-src/imshift/...: a link per file of imshift/, a link per mapped folder."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools["package-dir"]
    top = TREE / "imshift"
    if TREE.exists():
        for path in sorted(TREE.rglob("*"), key=lambda p: -len(p.parts)):
            path.unlink() if path.is_symlink() or path.is_file() else path.rmdir()
    top.mkdir(parents=True)
    for entry in (ROOT / mapping["imshift"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        parts = package.split(".")
        parent = ".".join(parts[:-1])
        if len(parts) < 2 or (parent in mapping and Path(mapping[parent]) / parts[-1] == Path(folder)):
            continue  # imshift itself, or a subfolder already inside its parent's link
        (top.joinpath(*parts[1:])).symlink_to(ROOT / folder)


def main(argv: list[str]) -> int:
    lay_out()
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", *argv], cwd=ROOT, capture_output=True, text=True
    )
    for line in (mypy.stdout + mypy.stderr).splitlines():
        match = FINDING.match(line)
        if match:
            real = os.path.relpath(os.path.realpath(ROOT / match[1]), ROOT)
            line = real + match[2]
        print(line)
    return mypy.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
