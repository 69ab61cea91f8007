"""Keep the README's result tables equal to the tables the notebooks write.

A README block ::

    <!-- table: fmnist/table1_verdicts -->
    | setting | method | ... |
    <!-- end table -->

holds ``results/tables/fmnist/table1_verdicts.md`` without its caption (the caption names where the numbers were
read from, which differs between machines). ``python -m bmrs.report.readme`` rewrites every block from the
tables directory (after the notebooks ran, e.g. with ``--param source=reference``); ``--check`` changes
nothing and exits 1 naming the blocks that differ. The tests regenerate the fmnist tables from the committed
summaries and hold the README to them, so its headline numbers cannot drift from what is committed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bmrs.util.atomic import atomic_path

README = Path(__file__).resolve().parents[2] / "README.md"
TABLES_DIR = README.parent / "results" / "tables"

START, END = "<!-- table:", "<!-- end table -->"
#: a block's body stops at the first marker, so a mistyped end marker cannot swallow the text up to the next block
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w./-]+) -->\n)(?P<body>(?:(?!<!-- (?:end )?table)[\s\S])*?)(<!-- end table -->)")


def _check_markers(readme_text: str) -> None:
    """ValueError unless every start marker has its end marker (so that filling changes nothing but tables)."""
    starts, ends, blocks = readme_text.count(START), readme_text.count(END), len(BLOCK.findall(readme_text))
    if not starts == ends == blocks:
        raise ValueError(f"the README has {starts} '{START} NAME -->' marker(s), {ends} '{END}' marker(s) and "
                         f"{blocks} well-formed block(s); give every '{START} NAME -->' line its own '{END}' line")


def body_of(table_md: str) -> str:
    """A table file's text without its caption paragraph (a first line in bold), newline-terminated."""
    text = table_md.strip("\n")
    if text.startswith("**"):
        text = text.split("\n\n", 1)[1] if "\n\n" in text else ""
    return text.strip("\n") + "\n"


def block_names(readme_text: str) -> list[str]:
    _check_markers(readme_text)
    return [m.group("name") for m in BLOCK.finditer(readme_text)]


def render(readme_text: str, tables_dir: Path | str = TABLES_DIR, prefix: str = "") -> str:
    """The README with every block whose name starts with ``prefix`` filled from ``<tables_dir>/<name>.md``.
    A block whose table does not exist raises FileNotFoundError naming the notebook run that writes it; unpaired
    markers raise ValueError."""
    _check_markers(readme_text)
    def fill(m: re.Match) -> str:
        name = m.group("name")
        if not name.startswith(prefix):
            return m.group(0)
        path = Path(tables_dir) / f"{name}.md"
        if not path.is_file():
            profile = name.split("/")[0] if "/" in name else "quick"
            raise FileNotFoundError(f"{path} does not exist (README block {name!r}); write it with "
                                    f"python -m bmrs.notebook_runner --profile {profile} --force --param "
                                    f"source=reference")
        return m.group(1) + body_of(path.read_text(encoding="utf-8")) + m.group(4)
    return BLOCK.sub(fill, readme_text)


def stale(readme_text: str, tables_dir: Path | str = TABLES_DIR, prefix: str = "") -> list[str]:
    """The names of the blocks (those starting with ``prefix``) that differ from their tables."""
    fresh = dict((m.group("name"), m.group("body")) for m in BLOCK.finditer(render(readme_text, tables_dir, prefix)))
    return [m.group("name") for m in BLOCK.finditer(readme_text)
            if m.group("name").startswith(prefix) and m.group("body") != fresh[m.group("name")]]


def _main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bmrs.report.readme", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", default=str(README))
    parser.add_argument("--tables-dir", default=str(TABLES_DIR))
    parser.add_argument("--only", default="", metavar="PREFIX", help="only the blocks whose name starts so (fmnist/)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs")
    args = parser.parse_args()
    path = Path(args.readme)
    text = path.read_text(encoding="utf-8")
    try:
        if args.check:
            names = stale(text, args.tables_dir, args.only)
            for name in names:
                print(f"stale: {name}")
            return 1 if names else 0
        new = render(text, args.tables_dir, args.only)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if new != text:
        with atomic_path(path) as tmp:
            tmp.write_text(new, encoding="utf-8")
    print(f"{path}: {len([n for n in block_names(text) if n.startswith(args.only)])} block(s) filled")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
