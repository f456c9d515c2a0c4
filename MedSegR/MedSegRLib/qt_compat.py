"""Small helpers that read Qt objects the same way under PythonQt and PySide.

3D Slicer's PythonQt exposes Qt *properties* as attributes (``lineEdit.text`` is a
string, and calling it fails), while PySide exposes getter methods
(``lineEdit.text()``). Setters (``setText``) and signals (``clicked.connect``) are the
same in both. The module reads properties through :func:`qt_value`, so one widget
code runs in Slicer and in the PySide6 test shell. No Qt import here.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def qt_value(obj: Any, name: str) -> Any:
    """A Qt property's value (``obj.name`` in PythonQt, ``obj.name()`` in PySide)."""
    value = getattr(obj, name)
    return value() if callable(value) else value


def named_children(widget: Any, widget_class: Any) -> SimpleNamespace:
    """Every named child widget as an attribute (``ui.sendButton``)."""
    ui = SimpleNamespace()
    for child in widget.findChildren(widget_class):
        name = qt_value(child, "objectName")
        if name:
            setattr(ui, name, child)
    return ui


def exec_dialog(dialog: Any) -> Any:
    """Run a modal dialog (``exec_`` in PythonQt, ``exec`` in PySide)."""
    run = getattr(dialog, "exec_", None) or getattr(dialog, "exec")
    return run()


def file_name(result: Any) -> str:
    """A file dialog's result: a string in PythonQt, ``(path, filter)`` in PySide."""
    if isinstance(result, (tuple, list)):
        result = result[0] if result else ""
    return str(result or "")


def url_text(url: Any) -> str:
    """A QUrl (or string) as text."""
    return url if isinstance(url, str) else str(url.toString())
