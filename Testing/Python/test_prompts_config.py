"""Question validation, answer parsing, and model config files."""

from __future__ import annotations

import pytest

from medsegr.config import MedSegRConfig
from medsegr.errors import ConfigError, InputError
from medsegr.prompts import clean_answer, segment_names, validate_question


def test_segment_names_follow_the_p_tags():
    text = "The <p>left kidney</p> [SEG] is larger than the <p>right kidney</p> [SEG]."
    assert segment_names(text, "[SEG]") == ["left kidney", "right kidney"]
    assert segment_names("it is here [SEG] and [SEG]", "[SEG]") == ["segment 1", "segment 2"]
    assert segment_names("no structure is present.", "[SEG]") == []
    assert clean_answer(text, "[SEG]") == "The left kidney is larger than the right kidney."


def test_question_validation():
    assert validate_question("  Where is the liver? ", ()) == "Where is the liver?"
    with pytest.raises(InputError, match="empty"):
        validate_question("   ", ())
    with pytest.raises(InputError, match="2001 characters"):
        validate_question("a" * 2001, ())
    with pytest.raises(InputError, match="reserved token"):
        validate_question("show <image> now", ("[SEG]", "<image>"))
    with pytest.raises(InputError, match="control characters"):
        validate_question("bad\x00question", ())
    with pytest.raises(InputError, match="text"):
        validate_question(None, ())


def test_config_files(tmp_path):
    cfg = MedSegRConfig()
    assert cfg.model.visual_grid == 8 and cfg.llm.source == "smollm2-135m-instruct"
    good = tmp_path / "model.toml"
    good.write_text('[model]\nvisual_grid = 16\n[llm]\nsource = "/models/llm"\n', encoding="utf-8")
    loaded = MedSegRConfig.from_file(good)
    assert loaded.model.visual_grid == 16 and loaded.llm.source == "/models/llm"
    json_path = tmp_path / "model.json"
    loaded.save(json_path)
    assert MedSegRConfig.from_file(json_path) == loaded
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nvisual_gird = 16\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key.*visual_gird"):
        MedSegRConfig.from_file(bad)
    bad.write_text("[modle]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown config section"):
        MedSegRConfig.from_file(bad)
    bad.write_text('[model]\nvisual_grid = "big"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="must be int"):
        MedSegRConfig.from_file(bad)
    bad.write_text("[model\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot parse"):
        MedSegRConfig.from_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        MedSegRConfig.from_file(tmp_path / "missing.toml")


def test_grounding_config_and_the_removed_mask_head_keys(tmp_path):
    cfg = MedSegRConfig()
    assert cfg.grounding.size == 256 and cfg.grounding.slices == 3 and cfg.model.presence_threshold == 0.5
    path = tmp_path / "model.toml"
    path.write_text("[model]\npresence_threshold = 0.3\nvolume_fill_holes = true\n"
                    "[grounding]\nsize = 128\nslices = 1\nwidths = [8, 16, 32, 64]\nuse_embedding = false\n",
                    encoding="utf-8")
    loaded = MedSegRConfig.from_file(path)
    assert loaded.model.presence_threshold == 0.3 and loaded.model.volume_fill_holes
    assert (loaded.grounding.size, loaded.grounding.slices, loaded.grounding.widths) == (128, 1, [8, 16, 32, 64])
    assert not loaded.grounding.use_embedding
    saved = tmp_path / "model.json"
    loaded.save(saved)
    assert MedSegRConfig.from_file(saved) == loaded
    for text, match in [("[model]\nbox_refine = true\n", "unknown key.*box_refine"),
                        ("[model]\npixel_refiner = 16\n", "unknown key.*pixel_refiner"),
                        ("[model]\nseg_projector_hidden = 0\n", "unknown key.*seg_projector_hidden"),
                        ("[model]\npresence_threshold = 1.5\n", "presence_threshold"),
                        ("[grounding]\nslices = 0\n", "slices"),
                        ("[grounding]\nwidths = [8, 0, 32, 64]\n", "widths")]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=match):
            MedSegRConfig.from_file(path)
