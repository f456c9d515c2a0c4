"""Evaluation: metric definitions, the two references, the report, and `medsegr eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import make_dataset
from medsegr.evaluation.metrics import MaskScore, summarise


def test_dice_iou_giou_ciou():
    truth = np.zeros((10, 10), bool)
    truth[:4, :5] = True                       # 20 px
    pred = np.zeros((10, 10), bool)
    pred[:4, :4] = True                        # 16 px, all inside
    s = MaskScore.of(pred, truth)
    assert (s.intersection, s.union) == (16, 20)
    assert s.iou == pytest.approx(0.8) and s.dice == pytest.approx(32 / 36)
    small = MaskScore.of(np.eye(10, dtype=bool)[:2], np.zeros((2, 10), bool))  # 2 px wrong
    agg = summarise([s, small])
    assert agg["giou"] == pytest.approx((0.8 + 0.0) / 2)      # mean of per-mask IoU
    assert agg["ciou"] == pytest.approx(16 / 22)              # total I / total U
    assert MaskScore.of(np.zeros(3, bool), np.zeros(3, bool)).dice == 1.0
    with pytest.raises(ValueError):
        MaskScore.of(np.zeros(3, bool), np.zeros(4, bool))


def test_each_expected_mask_is_scored_against_the_segment_named_for_it():
    from medsegr.evaluation.evaluate import pair_segments

    # the answer names the two lungs in the other order than the dataset lists them
    assert pair_segments(["right lung", "left lung"], ["left lung", "right lung"]) == [1, 0]
    assert pair_segments(["Right Lung"], ["left lung", "right lung"]) == [1]
    # a wrong name keeps its position; a name taken by another structure is not reused
    assert pair_segments(["brain", "head"], ["skull", "brain"]) == [1, 0]
    assert pair_segments(["liver", "spleen"], ["kidney"]) == [0, None]
    assert pair_segments(["lungs"], []) == [None]
    assert pair_segments(["left lung", "right lung"], ["left lung", "left lung"]) == [0, 1]


def test_a_structure_is_named_by_its_name_or_by_a_segment_coded_as_it():
    from medsegr.evaluation.evaluate import codes_structure, names_structure

    assert names_structure("The Left_Lung, on the left.", "left lung")
    assert not names_structure("The splenic parenchyma.", "spleen")
    # a synonym of the vocabulary: the segment carries the spleen's code
    assert codes_structure(["splenic parenchyma"], "spleen")
    assert codes_structure(["scalp skull"], "scalp and skull")
    # another structure, a side that differs, or a name the vocabulary does not know
    assert not codes_structure(["left lung"], "lungs") and not codes_structure(["skull"], "scalp and skull")
    assert not codes_structure(["right kidney"], "left kidney")
    assert not codes_structure(["spinal vascular cap"], "aorta") and not codes_structure([], "aorta")


def test_otsu_floor_takes_the_bright_side():
    from medsegr.evaluation.references import otsu_floor

    img = np.full((40, 40), 0.1, np.float32)
    img[10:20, 5:30] = 0.9
    assert np.array_equal(otsu_floor(img), img > 0.5)
    assert not otsu_floor(np.zeros((5, 5), np.float32)).any()


@pytest.mark.real
def test_oracle_box_on_the_real_litemedsam():
    from medsegr.config import MedSegRConfig
    from medsegr.evaluation.references import OracleBox

    yy, xx = np.mgrid[0:120, 0:100]
    disc = (yy - 60) ** 2 + (xx - 45) ** 2 <= 25 ** 2
    img = np.where(disc, 0.85, 0.15).astype(np.float32)
    oracle = OracleBox(MedSegRConfig().vision)
    pred = oracle.predict(img, disc, (1.0, 1.0))
    assert pred.shape == disc.shape
    assert MaskScore.of(pred, disc).dice > 0.9


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("evaldata"))


def test_evaluate_a_split_and_write_the_report(dataset, tiny_pipeline, tmp_path):
    from medsegr.evaluation.evaluate import evaluate
    from medsegr.evaluation.report import write_report

    model = tiny_pipeline.model

    prefill = {"now": False}

    def note_prefill(module, args, kwargs):  # a prompt (several positions) or one new token
        prefill["now"] = kwargs["inputs_embeds"].shape[1] > 1

    def seg_first(module, args, output):  # every answer begins with one [SEG], and only one
        output = output.clone()
        output[..., -1, model.seg_token_id] += 1e4 if prefill["now"] else -1e4
        return output

    handles = [model.llm.register_forward_pre_hook(note_prefill, with_kwargs=True),
               model.llm.get_output_embeddings().register_forward_hook(seg_first)]
    try:
        report = evaluate(tiny_pipeline, dataset, "val", references=True, limit=2,
                          progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert len(report.turns) == 6                          # 2 records x 3 turns
    types = [t.question_type for t in report.turns]
    assert types == ["implicit", "multi-turn", "absent"] * 2
    absent = [t for t in report.turns if t.question_type == "absent"]
    assert all(t.absent_ok is False for t in absent)      # it wrongly gave a mask
    kidney = report.turns[0]
    assert kidney.expected == ["kidney"] and len(kidney.scores) == 1
    # every [SEG] the answer wrote has its presence probability beside its name
    assert all(len(t.presence) == len(t.seg_names) >= 1 for t in report.turns)
    assert all(0.0 <= p <= 1.0 for t in report.turns for p in t.presence)
    assert set(kidney.references) == {"oracle_box", "otsu"}
    data = report.to_dict()
    assert data["text"]["false_claim_rate"] == 1.0
    assert 0.0 <= data["text"]["named_as_written_rate"] <= data["text"]["named_right_rate"] <= 1.0
    assert data["text"]["answers_with_engine_words"] == 0  # no measured spans on the tiny model
    assert set(data["by_question_type"]["medsegr"]) == {"implicit", "multi-turn"}
    assert set(data["by_structure"]["otsu"]) == {"kidney", "lesion"}
    # the floor: Otsu finds the bright kidney (the lesion is dark inside it)
    assert data["by_structure"]["otsu"]["kidney"]["dice"] > 0.7
    paths = write_report(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["split"] == "val"
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "By question type" in md and "Otsu" in md and "absent" in md


def test_the_heldout_wordings_are_evaluated_apart(dataset, tiny_pipeline):
    """``templates``: the split's records asked in the training wordings, in the held-out
    ones (the test split's ``-t`` records) or all; this validation split has none of
    the held-out kind."""
    from types import SimpleNamespace

    from medsegr.evaluation.evaluate import evaluate, is_heldout_wording

    assert is_heldout_wording(SimpleNamespace(attributes={"templates": "heldout"}))
    assert not is_heldout_wording(SimpleNamespace(attributes={}))
    none = evaluate(tiny_pipeline, dataset, "val", references=False, limit=1, progress=False,
                    templates="heldout")
    assert none.turns == [] and none.split == "val, heldout wordings"
    with pytest.raises(ValueError, match="templates"):
        evaluate(tiny_pipeline, dataset, "val", references=False, templates="new")


def test_eval_command_bad_input(tmp_path, capsys):
    from medsegr.cli.commands import main

    assert main(["eval", "base", str(tmp_path / "missing")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_per_source_sample_spreads_evenly_over_every_source_in_dataset_order():
    from types import SimpleNamespace

    from medsegr.evaluation.evaluate import per_source_sample

    records = [SimpleNamespace(id=f"a{i}", source="a") for i in range(90)]
    records[40:40] = [SimpleNamespace(id=f"b{i}", source="b") for i in range(3)]
    picked = [r.id for r in per_source_sample(records, 8)]
    assert picked == ["a0", "a11", "a22", "a33", "b0", "b1", "b2", "a45", "a56", "a67", "a78"]
    assert [r.id for r in per_source_sample(records, 1)] == ["a0", "b0"]
    with pytest.raises(ValueError):
        per_source_sample(records, 0)


def test_model_card_target_table_from_eval_reports(tmp_path, capsys):
    """``python -m medsegr.evaluation.targets``: the model card's rows from eval reports."""
    from pathlib import Path

    from medsegr.evaluation import targets

    report_file = Path(__file__).resolve().parents[2] / "docs" / "eval" / "bundled-checkpoint-test-per-source-8.json"
    report = json.loads(report_file.read_text(encoding="utf-8"))
    brain = [d for t in report["turns"] if t["subject"] == "colin27"
             for n, d in zip(t["expected"], t["dice"]) if n == "brain"]
    assert brain
    assert targets.main([str(report_file), str(report_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + len(targets.ROWS)
    row = next(line for line in lines if line.startswith("| real MR brain"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == cells[3] and cells[2].split(" / ")[0] == f"{sum(brain) / len(brain):.2f}"
    overall = report["overall"]["medsegr"]
    assert f"{overall['dice']:.3f} / {overall['giou']:.3f} / {overall['ciou']:.3f}" in lines[2]
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        targets.main([str(bad)])
    assert exited.value.code == 2 and "cannot read" in capsys.readouterr().err
