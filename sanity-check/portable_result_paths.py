#!/usr/bin/env python3
"""Rewrite the absolute paths in committed result JSON files the way results record paths now.

Results made before `fair_gptq.paths.portable_path` existed hold the absolute paths of the machine that ran them
(`/…/shared/data/crows_pairs/…`, `/…/.cache/fair_gptq/models/…`, `/…/outputs/study-models/…`). This rewrites
each such JSON string literal in place, as text, so that nothing else in the file changes (numbers, order,
indentation):

    …/shared/data/X          -> <data>/X
    …/.cache/fair_gptq/X     -> <cache>/X
    …/outputs/X              -> outputs/X        (the repository's own output folder)
    any other absolute path  -> <elsewhere>/<last component>

    python sanity-check/portable_result_paths.py results            # rewrite
    python sanity-check/portable_result_paths.py results --check    # list what would change; exit 1 if any
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

_RULES = ((re.compile(r"^/(?:.*/)?shared/data/(.+)$"), r"<data>/\1"),
          (re.compile(r"^/(?:.*/)?\.cache/fair_gptq/(.+)$"), r"<cache>/\1"),
          (re.compile(r"^/(?:.*/)?(outputs/.+)$"), r"\1"))
# a JSON string literal holding an absolute path (no escapes inside: paths here have none)
_ABSOLUTE_LITERAL = re.compile(r'"(/[^"\\\n]*)"')


def portable(path: str) -> str:
    for pattern, replacement in _RULES:
        if pattern.match(path):
            return pattern.sub(replacement, path)
    return f"<elsewhere>/{path.rstrip('/').rsplit('/', 1)[-1]}"


def rewrite(text: str) -> tuple[str, int]:
    return _ABSOLUTE_LITERAL.subn(lambda m: json.dumps(portable(m.group(1)), ensure_ascii=False), text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    args = parser.parse_args(argv)
    changed = 0
    for file in sorted(args.folder.rglob("*.json")):
        text = file.read_text(encoding="utf-8")
        new, count = rewrite(text)
        if count:
            changed += 1
            json.loads(new)  # still valid JSON
            print(f"{file}: {count} path(s)")
            if not args.check:
                file.write_text(new, encoding="utf-8")
    print(f"{changed} file(s) {'to rewrite' if args.check else 'rewritten'}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
