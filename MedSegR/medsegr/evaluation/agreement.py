"""How often two evaluations of the same split gave the same answer text:
``python -m medsegr.evaluation.agreement A/eval.json B/eval.json``.

Used for the reduced-precision check of the model card: the bundled checkpoint is
evaluated with its LLM in bfloat16 (the CPU default where it is native) and in
float32 (``MEDSEGR_CPU_LLM_PRECISION=float32``), and the answers are compared
question by question (raw text, ``<p>`` names and ``[SEG]`` markers included).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def agreement(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Share of questions (matched by record and turn) whose answers are equal."""
    def keyed(report: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
        return {(t["record_id"], int(t["turn"])): t for t in report["turns"]}

    left, right = keyed(a), keyed(b)
    common = sorted(set(left) & set(right))
    if not common:
        raise ValueError("the two evaluations share no question")
    same = [k for k in common if left[k]["answer"] == right[k]["answer"]
            and left[k]["predicted"] == right[k]["predicted"]]
    differ = [k for k in common if k not in set(same)]
    return {"questions": len(common), "same_answer": len(same),
            "same_answer_rate": round(len(same) / len(common), 4),
            "examples_of_differences": [
                {"record_id": k[0], "turn": k[1], "a": left[k]["answer"], "b": right[k]["answer"]}
                for k in differ[:5]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="eval.json of the first evaluation")
    parser.add_argument("b", help="eval.json of the second evaluation")
    args = parser.parse_args(argv)
    result = agreement(json.loads(Path(args.a).read_text(encoding="utf-8")),
                       json.loads(Path(args.b).read_text(encoding="utf-8")))
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
