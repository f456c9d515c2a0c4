"""The LLM's CPU precision choice, its environment override, and the answer agreement
of two evaluations (the model card's bfloat16-vs-float32 check)."""

from __future__ import annotations

import pytest


def test_the_environment_forces_a_precision_and_rejects_nonsense(monkeypatch):
    import medsegr.modeling.device as device
    from medsegr.errors import InputError

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv(device.PRECISION_ENV, "float32")
    assert device.cpu_llm_precision(True, True) == "float32"
    monkeypatch.setenv(device.PRECISION_ENV, "INT8")
    assert device.cpu_llm_precision(True, False) == "int8"
    monkeypatch.setenv(device.PRECISION_ENV, "fp8")
    with pytest.raises(InputError, match="MEDSEGR_CPU_LLM_PRECISION"):
        device.cpu_llm_precision(True, True)


def test_no_int8_cache_is_made_when_the_llm_runs_in_bfloat16(monkeypatch):
    import medsegr.modeling.device as device
    from medsegr.config import MedSegRConfig
    from medsegr.pipeline import _int8_cache

    config = MedSegRConfig()
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert _int8_cache(config, None, "cpu") is None
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert _int8_cache(config, None, "cpu") is not None


def test_answer_agreement_matches_questions_by_record_and_turn():
    from medsegr.evaluation.agreement import agreement

    def report(*answers):
        return {"turns": [{"record_id": f"r{i}", "turn": 1, "answer": a, "predicted": ["x"]}
                          for i, a in enumerate(answers)]}

    result = agreement(report("a", "b", "c", "d"), report("a", "b", "c", "e"))
    assert result["questions"] == 4 and result["same_answer"] == 3
    assert result["same_answer_rate"] == 0.75
    assert result["examples_of_differences"][0]["record_id"] == "r3"
    with pytest.raises(ValueError):
        agreement(report("a"), {"turns": []})
