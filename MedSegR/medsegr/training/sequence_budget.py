"""Where the tokens of a training conversation go (the LLM's cost in a training step
grows with them): ``python -m medsegr.training.sequence_budget CONFIG [--limit N]``.

For the training split of a training config, prints the mean tokens per conversation
of each part: the system prompt, the visual tokens, the questions, the answers (the
trained positions) and the chat template around them; once with the config's system
prompt and once with the engine's default one.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np


def budget(model: Any, records: list[Any], system_prompt: str) -> dict[str, float]:
    """Mean tokens per conversation by part, with ``system_prompt``."""
    from medsegr.training.examples import IGNORE, conversation_tokens

    tok = model.tokenizer
    saved = model.config.llm.system_prompt
    model.config.llm.system_prompt = system_prompt
    try:
        parts: dict[str, list[int]] = {k: [] for k in
                                       ("total", "system", "visual", "questions", "answers", "template")}
        system = len(tok.encode(system_prompt, add_special_tokens=False))
        for record in records:
            ids, labels = conversation_tokens(model, record.conversation)
            questions = sum(len(tok.encode(t.question, add_special_tokens=False))
                            for t in record.conversation)
            answers = sum(1 for label in labels if label != IGNORE)
            visual = model.num_visual_tokens
            parts["total"].append(len(ids))
            parts["system"].append(system)
            parts["visual"].append(visual)
            parts["questions"].append(questions)
            parts["answers"].append(answers)
            parts["template"].append(len(ids) - system - visual - questions - answers)
    finally:
        model.config.llm.system_prompt = saved
    return {k: round(float(np.mean(v)), 1) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="training config (TOML/JSON)")
    parser.add_argument("--limit", type=int, default=400, help="conversations measured (default 400)")
    args = parser.parse_args(argv)

    from medsegr.config import MedSegRConfig
    from medsegr.data.records import load_dataset
    from medsegr.modeling.builder import build_model
    from medsegr.training.config import TrainConfig

    config = TrainConfig.from_file(args.config)
    model = build_model(config.engine_config(), device="cpu")
    records = load_dataset(config.data_root, config.data.train_split)
    step = max(1, len(records) // max(1, args.limit))
    sample = records[::step][: args.limit]
    result = {"conversations": len(sample),
              "config_system_prompt": budget(model, sample, model.config.llm.system_prompt),
              "default_system_prompt": budget(model, sample, MedSegRConfig().llm.system_prompt)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
