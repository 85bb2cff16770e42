#!/usr/bin/env python3
"""Read an Apptainer/Singularity definition file: its header and its %sections, as Apptainer splits them.

Used by containers/image-check.sh (so the check follows the .def, not a copy of it) and by the tests.

  python3 containers/def_sections.py FILE header KEY      value of a header line ("From", "Bootstrap")
  python3 containers/def_sections.py FILE section NAME    body of %NAME (dedented); exit 1 when absent
  python3 containers/def_sections.py FILE files           %files as "SRC<TAB>DEST" lines (DEST defaults to SRC)
  python3 containers/def_sections.py FILE list            the section names present

Standard library only: it runs on a bare host python3 before any virtual environment exists.
"""
from __future__ import annotations

import re
import sys
import textwrap

# The sections Apptainer knows; a line starting with one of them (plus optional arguments) opens a section.
SECTIONS = ("setup", "files", "post", "test", "environment", "runscript", "startscript", "labels", "help",
            "appinstall", "appfiles", "appenv", "apphelp", "applabels", "apprun", "apptest", "appstart", "arguments")
_SECTION = re.compile(r"^%(" + "|".join(SECTIONS) + r")\b(.*)$")


def parse(text: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Return (header, sections, section_args): header keys as written, section bodies dedented."""
    header: dict[str, str] = {}
    bodies: dict[str, list[str]] = {}
    args: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            current = m.group(1)
            if current in bodies:
                raise ValueError(f"section %{current} appears twice")
            bodies[current] = []
            args[current] = m.group(2).strip()
            continue
        if current is None:
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            key, sep, value = s.partition(":")
            if not sep:
                raise ValueError(f"header line without 'Key: value': {line!r}")
            header[key.strip()] = value.strip()
        else:
            bodies[current].append(line)
    sections = {k: textwrap.dedent("\n".join(v)).strip("\n") + "\n" for k, v in bodies.items()}
    return header, sections, args


def files_pairs(body: str) -> list[tuple[str, str]]:
    """%files lines: 'SRC [DEST]' (DEST defaults to SRC), comments and blank lines skipped."""
    pairs = []
    for line in body.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        if len(parts) > 2:
            raise ValueError(f"%files line with more than SRC DEST (spaces in paths are not supported): {s!r}")
        pairs.append((parts[0], parts[-1]))
    return pairs


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path, what, *rest = argv
    with open(path, encoding="utf-8") as f:
        header, sections, _ = parse(f.read())
    if what == "header" and len(rest) == 1:
        if rest[0] not in header:
            print(f"def_sections: {path} has no header line '{rest[0]}:'", file=sys.stderr)
            return 1
        print(header[rest[0]])
    elif what == "section" and len(rest) == 1:
        if rest[0] not in sections:
            print(f"def_sections: {path} has no %{rest[0]} section", file=sys.stderr)
            return 1
        sys.stdout.write(sections[rest[0]])
    elif what == "files" and not rest:
        for src, dest in files_pairs(sections.get("files", "")):
            print(f"{src}\t{dest}")
    elif what == "list" and not rest:
        print("\n".join(sections))
    else:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
