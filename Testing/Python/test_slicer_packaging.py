"""The 3D Slicer extension's packaging: every script and resource of the module is in
its CMakeLists.txt (and every listed file exists), the extension metadata agrees
across CMakeLists.txt, MedSegR.s4ext and the ExtensionsIndex entry MedSegR.json, its
icon and screenshot URLs point at the extension-level ``Resources/`` folder of the
repository (the module's own resources stay in ``MedSegR/Resources/``), the icon and
the screenshot are real images, no class of the module defines a method twice, and
importing the module at Slicer start-up pulls in no torch, transformers or SimpleITK."""

from __future__ import annotations

import ast
import glob
import json
import py_compile
import re
from pathlib import Path

import pytest

from helpers import HEAVY, heavy_modules_after

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MedSegR"
#: the extension-level resources (what the extension's metadata shows in the catalog)
EXTENSION_ICON = ROOT / "Resources" / "Icons" / "MedSegR.png"
EXTENSION_SCREENSHOT = ROOT / "Resources" / "Screenshots" / "screenshot.png"
#: the ExtensionsIndex catalog entry schema: required and allowed fields
INDEX_REQUIRED = {"$schema", "category", "scm_url"}
INDEX_ALLOWED = INDEX_REQUIRED | {"scm_revision", "scm_type", "build_dependencies", "build_subdirectory",
                                  "enabled", "tier"}
IGNORED_PARTS = {"__pycache__", "medsegr.egg-info"}


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set"
    entries = [line.split("#", 1)[0].strip() for line in match.group(1).splitlines()]
    return [e.replace("${MODULE_NAME}", "MedSegR") for e in entries if e]


def module_files(suffix: str | None = None, under: Path = MODULE) -> set[str]:
    files = set()
    for path in under.rglob("*"):
        if path.is_file() and not IGNORED_PARTS & set(path.parts) and (suffix is None or path.suffix == suffix):
            files.add(path.relative_to(MODULE).as_posix())
    return files


def test_every_module_script_and_resource_is_listed_and_every_listed_file_exists():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    globbed: set[str] = set()
    for pattern in re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)", text.split("GLOB_RECURSE", 1)[1].split(")", 1)[0]):
        globbed |= {Path(p).relative_to(MODULE).as_posix()
                    for p in glob.glob(str(MODULE / pattern.replace("*.py", "**/*.py")), recursive=True)
                    if not IGNORED_PARTS & set(Path(p).parts)}
    assert "medsegr/client.py" in globbed and "medsegr/io/nrrd_codec.py" in globbed
    for listed in scripts + resources:
        assert (MODULE / listed).is_file(), f"{listed} is listed in MedSegR/CMakeLists.txt but does not exist"
    tests = {f"Testing/Python/{name}" for name in
             re.findall(r"slicer_add_python_unittest\(SCRIPT (\S+)\)", (MODULE / "Testing/Python/CMakeLists.txt").read_text(encoding="utf-8"))}
    for test in tests:
        assert (MODULE / test).is_file()
    unlisted = module_files(".py") - set(scripts) - globbed - tests
    assert not unlisted, f"scripts missing from MedSegR/CMakeLists.txt: {sorted(unlisted)}"
    checkpoint = {f for f in module_files(under=MODULE / "Resources")
                  if f.startswith("Resources/checkpoint/")}  # installed by its own loop
    assert "Resources/checkpoint/heads.safetensors" in checkpoint
    unlisted_resources = module_files(under=MODULE / "Resources") - set(resources) - checkpoint
    assert not unlisted_resources, f"resources missing from MedSegR/CMakeLists.txt: {sorted(unlisted_resources)}"
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "add_subdirectory(Testing)" in text
    for test in tests:
        py_compile.compile(str(MODULE / test), doraise=True, cfile=str(Path(__file__).parent / ".compiled.pyc"))
    Path(__file__).parent.joinpath(".compiled.pyc").unlink(missing_ok=True)


def extension_metadata() -> dict[str, str]:
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    values = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    assert re.search(r"^add_subdirectory\(MedSegR\)$", text, re.M), "the module is not added"
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text
    assert "include(${Slicer_EXTENSION_CPACK})" in text
    assert "find_package(Slicer REQUIRED)" in text
    return values


def s4ext() -> dict[str, str]:
    fields = {}
    for line in (ROOT / "MedSegR.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    return fields


def raw_url_to_path(url: str) -> Path:
    match = re.match(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/[^/]+/(.+)$", url)
    assert match, url
    return ROOT / match.group(1)


def test_extension_metadata_agrees_everywhere():
    meta = extension_metadata()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert meta.get(key), f"{key} is empty"
    assert raw_url_to_path(meta["EXTENSION_ICONURL"]) == EXTENSION_ICON
    screenshots = [raw_url_to_path(url) for url in meta["EXTENSION_SCREENSHOTURLS"].split()]
    assert screenshots == [EXTENSION_SCREENSHOT]
    for path in (EXTENSION_ICON, *screenshots):
        assert path.is_file() and path.parent.parent == ROOT / "Resources", path
    old = s4ext()
    assert old["category"] == meta["EXTENSION_CATEGORY"]
    assert old["homepage"] == meta["EXTENSION_HOMEPAGE"]
    assert old["iconurl"] == meta["EXTENSION_ICONURL"]
    assert old["screenshoturls"] == meta["EXTENSION_SCREENSHOTURLS"]
    assert old["depends"] == meta["EXTENSION_DEPENDS"]
    assert (ROOT / "LICENSE").is_file()

    entry = json.loads((ROOT / "MedSegR.json").read_text(encoding="utf-8"))
    assert set(entry) <= INDEX_ALLOWED, f"fields the catalog schema does not allow: {set(entry) - INDEX_ALLOWED}"
    assert INDEX_REQUIRED <= set(entry)
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-v1.0.")
    assert entry["category"] == meta["EXTENSION_CATEGORY"]
    assert entry["scm_url"] == old["scmurl"] and entry["scm_revision"] == old["scmrevision"]
    assert entry["scm_type"] == old["scm"] == "git"
    assert isinstance(entry["build_dependencies"], list) and isinstance(entry["enabled"], bool)
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5


def test_icon_is_the_drawn_128px_icon_and_the_screenshot_is_a_real_panel():
    from extension_images import ICON, draw_icon
    from PIL import Image, ImageChops

    icon = Image.open(ICON)
    assert icon.format == "PNG" and icon.size == (128, 128)
    difference = ImageChops.difference(icon.convert("RGBA"), draw_icon())
    assert max(band.getextrema()[1] for band in difference.split()) <= 2
    assert len(set(icon.convert("RGB").getdata())) > 200  # a drawing, not a flat square

    # the extension's icon is the module's icon (Slicer shows the module's in its menus)
    assert EXTENSION_ICON.read_bytes() == ICON.read_bytes()

    shot = Image.open(EXTENSION_SCREENSHOT)
    assert shot.format == "PNG" and shot.width >= 400 and shot.height >= 600
    assert len(set(shot.convert("RGB").getdata())) > 50


def test_extension_resources_hold_only_the_catalog_images():
    """Resources/ at the top is the extension's (icon, screenshots); what the module
    needs at run time stays in MedSegR/Resources/ (installed with the module)."""
    files = sorted(p.relative_to(ROOT / "Resources").as_posix()
                   for p in (ROOT / "Resources").rglob("*") if p.is_file())
    assert files == ["Icons/MedSegR.png", "Screenshots/screenshot.png"]
    assert (MODULE / "Resources" / "Icons" / "MedSegR.png").is_file()
    assert (MODULE / "Resources" / "UI" / "MedSegR.ui").is_file()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](Resources/Screenshots/screenshot.png)" in readme


def duplicate_methods(source: str) -> list[str]:
    """``Class.method`` for every method a class body defines more than once (the
    later definition silently replaces the earlier one)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            seen: set[str] = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if item.name in seen and not item.decorator_list:
                        found.append(f"{node.name}.{item.name}")
                    seen.add(item.name)
    return found


def test_no_class_of_the_module_defines_a_method_twice():
    assert duplicate_methods("class A:\n    def f(self): pass\n    def f(self): pass\n") == ["A.f"]
    sources = [MODULE / "MedSegR.py", *sorted((MODULE / "MedSegRLib").glob("*.py"))]
    for path in sources:
        assert duplicate_methods(path.read_text(encoding="utf-8")) == [], path


@pytest.mark.parametrize("entry", ["MedSegR", "MedSegRLib"])
def test_importing_the_module_at_start_up_pulls_in_no_heavy_packages(entry):
    """What Slicer imports at start-up (MedSegR.py; every MedSegRLib module) must not
    import torch, transformers, SimpleITK or the engine's web stack."""
    code = f"""
import importlib, pkgutil, sys, tempfile, pathlib
sys.path.insert(0, {str(Path(__file__).parent)!r})
from mrml_scene import new_scene
import slicer_shell
shell = slicer_shell.install(new_scene(), pathlib.Path(tempfile.mkdtemp()))
if {entry!r} == "MedSegR":
    import MedSegR
    MedSegR.MedSegRLogic()
else:
    import MedSegRLib
    for info in pkgutil.iter_modules(MedSegRLib.__path__):
        importlib.import_module("MedSegRLib." + info.name)
"""
    assert heavy_modules_after(code, HEAVY + ("medsegr.pipeline",)) == []


def test_the_installed_extension_finds_the_bundled_checkpoint(tmp_path):
    """The checkpoint lives in the module folder's Resources/checkpoint, beside the engine
    package; CMake installs it to the same place in the extension, where the engine
    finds it the same way."""
    import shutil

    from medsegr.pipeline import bundled_checkpoint

    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "set(MEDSEGR_CHECKPOINT_DIR ${CMAKE_CURRENT_SOURCE_DIR}/Resources/checkpoint)" in text
    assert "DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/Resources/checkpoint/" in text
    assert "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/Resources/checkpoint/" in text  # build tree

    assert bundled_checkpoint(MODULE / "medsegr") == MODULE / "Resources" / "checkpoint"
    modules = tmp_path / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    (modules / "medsegr").mkdir(parents=True)
    assert bundled_checkpoint(modules / "medsegr") is None
    shutil.copytree(MODULE / "Resources" / "checkpoint", modules / "Resources" / "checkpoint")
    assert bundled_checkpoint(modules / "medsegr") == modules / "Resources" / "checkpoint"
