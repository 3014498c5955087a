"""Side-by-side benchmarks of the shipped model against the dense one (`make benchmarks`)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def splice(md: str, tag: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Put `md` (which carries its own `<!-- tag:begin/end -->` markers) into `path` between those markers,
    or append it the first time; `make benchmarks` keeps such sections when it rewrites the file."""
    import re

    from edge_sparse import _io

    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", lambda _: md, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + md
    _io.write_text(path, text)


def publish(md: str, tag: str, write: bool) -> int:
    """A benchmark's last step: print its markdown section and, with --write, splice it into BENCHMARKS.md."""
    print(md)
    if write:
        splice(md, tag)
    return 0
