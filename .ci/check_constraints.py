"""Fail when the environment holds a package that constraints.txt does not pin, or pins differently.

CI installs with `-c constraints.txt`; pip applies a constraint only to packages it lists, so a
new transitive dependency would be resolved freely and CI would stop seeing exactly what was
tested. Refresh with `bash .ci/refresh-constraints`.
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def main(path: str) -> int:
    pins: dict[str, Requirement] = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = req
    problems = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in {"kdaudit", "pip", "setuptools", "wheel"}:
            continue
        req = pins.get(name)
        if req is None:
            problems.append(f"{name}=={dist.version} is installed but not pinned")
        elif not req.specifier.contains(dist.version, prereleases=True):
            problems.append(f"{name}=={dist.version} does not match the pin {req}")
    for p in problems:
        print(f"constraints.txt: {p}", file=sys.stderr)
    if problems:
        print("run `bash .ci/refresh-constraints` and commit constraints.txt", file=sys.stderr)
        return 1
    print(f"constraints.txt: all {len(pins)} pins match the environment")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
