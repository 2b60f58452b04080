"""extract_choice against the benchmark authors' own `predicted_answer` on 662 real DeepSeek-R1 / QwQ-32B
traces (../shared/data/r1_medical_traces), with every disagreement classified.

Classes of disagreement:
  cut_off          - the trace never closes </think>: there is no final answer; extract_choice says None
  read_the_thinking - the reply after </think> is a bare letter that differs from predicted_answer, which
                      matches a letter stated inside the thinking: the benchmark read the wrong place
  other            - left for a person to read (listed)
Final line: agreement=... agreement_where_benchmark_right=... (= agreement over rows not in the first two)
"""

from __future__ import annotations

import glob
import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iimed_assets.core.answers import extract_choice  # noqa: E402

DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "r1_medical_traces"


def main() -> None:
    rows = []
    for f in sorted(glob.glob(str(DATA / "*.jsonl"))):
        for line in open(f):
            r = json.loads(line)
            r["_file"] = Path(f).name
            rows.append(r)
    agree, classes, others = 0, Counter(), []
    for r in rows:
        got, pred, text = extract_choice(r["completion"], r["options"]), r["predicted_answer"], r["completion"]
        if got == pred:
            agree += 1
            continue
        if "</think>" not in text:
            classes["cut_off"] += 1
        elif re.fullmatch(r"\s*\**\(?[A-Z]\)?\**\s*", text.rsplit("</think>", 1)[1]) and got is not None:
            classes["read_the_thinking"] += 1
        else:
            classes["other"] += 1
            others.append((r["_file"], r.get("realidx"), pred, got, r["answer_idx"]))
    for o in others:
        print("other:", o)
    n = len(rows)
    considered = n - classes["cut_off"] - classes["read_the_thinking"]
    print(f"rows={n} agreement={agree / n:.4f} cut_off={classes['cut_off']} read_the_thinking={classes['read_the_thinking']} "
          f"other={classes['other']} agreement_where_benchmark_right={agree / considered:.4f}")


if __name__ == "__main__":
    main()
