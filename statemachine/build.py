"""Writes the ASL of amiflow's state machines (statemachine/<workflow>.asl.json) from their
sources (statemachine/src/<workflow>.yaml), where Retry and Catch name the policies of
statemachine/src/policies.yaml. `make statemachines` runs it; tests/workflows checks that the
ASL in the repository is what it writes.

    python statemachine/build.py           write every ASL file
    python statemachine/build.py --check   exit 1, naming the files, if any is not up to date
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"


def policies() -> dict:
    return yaml.safe_load((SOURCES / "policies.yaml").read_text())


def retry_entry(entry, named: dict, where: str) -> dict:
    if isinstance(entry, str):
        if entry not in named:
            raise ValueError(f"{where}: no retry policy {entry!r} (known: {sorted(named)})")
        return copy.deepcopy(named[entry])
    if isinstance(entry, dict) and "policy" in entry:
        out = retry_entry(entry["policy"], named, where)
        out["ErrorEquals"] = out["ErrorEquals"] + list(entry.get("also", []))
        return out
    return entry


def expand(states: dict, known: dict, where: str) -> None:
    for name, state in states.items():
        at = f"{where}.{name}"
        if "Retry" in state:
            state["Retry"] = [retry_entry(e, known["retry"], at) for e in state["Retry"]]
        if isinstance(state.get("Catch"), str):
            if state["Catch"] not in known["catch"]:
                raise ValueError(f"{at}: no catch policy {state['Catch']!r} (known: {sorted(known['catch'])})")
            state["Catch"] = copy.deepcopy(known["catch"][state["Catch"]])
        for key in ("Iterator", "ItemProcessor"):
            if key in state:
                expand(state[key]["States"], known, f"{at}.{key}")
        for index, branch in enumerate(state.get("Branches", [])):
            expand(branch["States"], known, f"{at}.Branches[{index}]")


def build(source: Path, known: dict) -> str:
    definition = yaml.safe_load(source.read_text())
    expand(definition["States"], known, source.stem)
    return json.dumps(definition, indent=2, ensure_ascii=False) + "\n"


def outputs() -> dict[Path, str]:
    known = policies()
    return {
        HERE / f"{source.stem}.asl.json": build(source, known)
        for source in sorted(SOURCES.glob("*.yaml"))
        if source.name != "policies.yaml"
    }


def main(argv: list[str]) -> int:
    stale = [path for path, text in outputs().items() if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(HERE.parent)} is not what statemachine/build.py writes; run make statemachines", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
