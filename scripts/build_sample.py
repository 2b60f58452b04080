"""Rebuild the bundled sample in iimed_assets/sources/sample/ from ../shared/data.

For every file the registry's sample slices use, copy its first N lines verbatim (N = the furthest
slice end; the whole file when a slice reads to the end), copy the folder's SOURCE.md, and write the
sample README that maps registry sources to files. Run: python scripts/build_sample.py [SHARED_DATA]
"""

from __future__ import annotations

import shutil
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iimed_assets.sources.registry import SOURCES  # noqa: E402

SAMPLE = ROOT / "iimed_assets" / "sources" / "sample"


def main(shared: Path) -> None:
    need: dict[str, int | None] = {}
    users: dict[str, list[str]] = defaultdict(list)
    for spec in SOURCES:
        for sl in spec.sample:
            prev = need.get(sl.path, 0)
            need[sl.path] = None if (prev is None or sl.stop is None) else max(prev, sl.stop)
            users[sl.path].append(f"{spec.name}[{sl.start}:{'' if sl.stop is None else sl.stop}]")
    if SAMPLE.exists():
        for child in SAMPLE.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
    lines_out = {}
    for rel, stop in sorted(need.items()):
        src, dst = shared / rel, SAMPLE / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        kept = 0
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            for raw in fin:
                if stop is not None and kept >= stop:
                    break
                fout.write(raw)
                if raw.strip():
                    kept += 1
        lines_out[rel] = kept
        source_md = src.parent / "SOURCE.md"
        if source_md.exists():
            shutil.copyfile(source_md, dst.parent / "SOURCE.md")

    readme = [
        "# Bundled sample",
        "",
        "Small real public data, copied from the project's shared reference data (`../shared/data`) by",
        "`scripts/build_sample.py`, so that the default configuration materializes every source partition",
        "offline. Every file is a verbatim prefix (the first N lines) or a complete copy of the file of the same",
        "path there; each folder keeps its `SOURCE.md` (origin, commit, licence, counts). No row was written by us.",
        "",
        "Evaluation sets are only ever `eval_items`. The R1 section deliberately mixes real medical `<think>` traces",
        "(model outputs on *test* questions, which decontamination must remove) with non-medical prompts",
        "(GSM8K, MBPP, HumanEval, MATH-500, ARC, MMLU) so that the domain filter has something to reject.",
        "",
        "## Files",
        "",
        "| file | lines bundled | used by (source[start:stop]) |",
        "|---|---|---|",
    ]
    for rel in sorted(need):
        readme.append(f"| `{rel}` | {lines_out[rel]} | {', '.join(users[rel])} |")
    readme += ["", "## Stand-ins", "",
               "Where a card source has no real offline copy, the closest real data stands in:", "",
               "| source | section | stand-in |", "|---|---|---|"]
    for spec in SOURCES:
        readme.append(f"| `{spec.name}` ({spec.title}) | {spec.section} | {spec.sample_note or '-'} |")
    (SAMPLE / "README.md").write_text("\n".join(readme) + "\n")
    print(f"wrote {len(need)} files to {SAMPLE}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data")
