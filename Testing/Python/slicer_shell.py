"""A stand-in for the parts of the 3D Slicer application shell that cannot exist here.

3D Slicer cannot run on the test machines; the ``slicer-core`` wheel gives the real
MRML scene, module logics and ``slicer.util``, but not Slicer's Qt shell. To build the
MedSegR module's widget from its real ``.ui`` file under PySide6 (offscreen), this
module provides *only* what is missing, as small, honest equivalents:

- ``qt``: PySide6's QtCore/QtGui/QtWidgets/QtUiTools/QtTest under one name (what
  PythonQt's ``qt`` module is in Slicer), with a ``QUiLoader`` that knows the CTK and
  MRML widget classes below;
- ``ctk``: ``ctkCollapsibleButton`` and ``ctkPathLineEdit`` (plain Qt widgets with the
  same properties and signals the module uses);
- ``slicer.qMRMLWidget`` and ``slicer.qMRMLNodeComboBox`` (a combo box listing the
  scene's nodes of the given classes);
- ``slicer.app`` (a QObject with ``aboutToQuit`` and ``testingEnabled``),
  ``slicer.mrmlScene``, ``slicer.i18n`` (identity translation);
- ``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper``: the base
  classes and the typed parameter-node wrapper (values and node references stored in
  a real ``vtkMRMLScriptedModuleNode``, two-way bound to widgets that carry a
  ``SlicerParameterName`` property), for the widget types the module's ``.ui`` uses.

Application settings go to an ini file in a temporary folder, never to the user's.
"""

from __future__ import annotations

import enum
import logging
import os
import sys
import types
import typing
import unittest
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import slicer  # noqa: E402  (the slicer-core wheel)
import slicer.util  # noqa: E402
from PySide6 import QtCore, QtGui, QtTest, QtUiTools, QtWidgets  # noqa: E402

PARAMETER_PROPERTY = "SlicerParameterName"


# --------------------------------------------------------------------------- ctk


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """A titled section that can be collapsed (hides its children)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._collapsed = False

    def _get_text(self) -> str:
        return self.title()

    def _set_text(self, text: str) -> None:
        self.setTitle(text)

    def _get_collapsed(self) -> bool:
        return self._collapsed

    def _set_collapsed(self, collapsed: bool) -> None:
        self._collapsed = bool(collapsed)
        self._apply()

    def _apply(self) -> None:
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)

    def showEvent(self, event: QtGui.QShowEvent) -> None:  # children exist once shown
        self._apply()
        super().showEvent(event)

    text = QtCore.Property(str, _get_text, _set_text)
    collapsed = QtCore.Property(bool, _get_collapsed, _set_collapsed)


class ctkPathLineEdit(QtWidgets.QLineEdit):
    """A line edit for a file or folder path (``currentPath``)."""

    Dirs = 1
    Files = 2
    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.filters = self.Files
        self.textChanged.connect(self.currentPathChanged.emit)

    def _get_path(self) -> str:
        return super().text()

    def setCurrentPath(self, path: str) -> None:
        self.setText(path or "")

    currentPath = QtCore.Property(str, _get_path, setCurrentPath)


# --------------------------------------------------------------------------- MRML widgets


class qMRMLWidget(QtWidgets.QWidget):
    """A widget that knows the MRML scene."""

    mrmlSceneChanged = QtCore.Signal(object)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene: Any) -> None:
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self) -> Any:
        return self._scene


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """The scene's nodes of ``nodeTypes`` (exact classes unless ``showChildNodeTypes``),
    optionally with "None"; emits ``currentNodeChanged(node)``."""

    currentNodeChanged = QtCore.Signal(object)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._types: list[str] = []
        self._none = False
        self._children = True
        self._scene = None
        self._tags: list[tuple[Any, int]] = []
        self._refreshing = False
        self.addEnabled = self.removeEnabled = False
        self.currentIndexChanged.connect(self._index_changed)

    def _get_types(self) -> list[str]:
        return list(self._types)

    def _set_types(self, types_: list[str]) -> None:
        self._types = list(types_)
        self._refresh()

    def _get_none(self) -> bool:
        return self._none

    def _set_none(self, enabled: bool) -> None:
        self._none = bool(enabled)
        self._refresh()

    def _get_children(self) -> bool:
        return self._children

    def _set_children(self, show: bool) -> None:
        self._children = bool(show)
        self._refresh()

    nodeTypes = QtCore.Property("QStringList", _get_types, _set_types)
    noneEnabled = QtCore.Property(bool, _get_none, _set_none)
    showChildNodeTypes = QtCore.Property(bool, _get_children, _set_children)

    def setMRMLScene(self, scene: Any) -> None:
        for old, tag in self._tags:
            old.RemoveObserver(tag)
        self._scene = scene
        self._tags = [(scene, scene.AddObserver(event, lambda *_: self._refresh()))
                      for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent)]
        self._refresh()

    def _matches(self, node: Any) -> bool:
        if node.GetHideFromEditors():
            return False
        if self._children:
            return any(node.IsA(t) for t in self._types)
        return node.GetClassName() in self._types

    def nodes(self) -> list[Any]:
        if self._scene is None:
            return []
        found = []
        for index in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(index)
            if self._matches(node):
                found.append(node)
        return found

    def _refresh(self) -> None:
        if self._refreshing:
            return
        self._refreshing = True
        try:
            current = self.currentNodeID()
            self.blockSignals(True)
            self.clear()
            if self._none:
                self.addItem("None", "")
            for node in self.nodes():
                self.addItem(node.GetName(), node.GetID())
            index = self.findData(current) if current else -1
            if index < 0:
                index = 0 if self.count() else -1
            self.setCurrentIndex(index)
            self.blockSignals(False)
            if self.currentNodeID() != current:
                self.currentNodeChanged.emit(self.currentNode())
        finally:
            self._refreshing = False

    def currentNodeID(self) -> str:
        data = self.currentData()
        return str(data) if data else ""

    def currentNode(self) -> Any:
        node_id = self.currentNodeID()
        return self._scene.GetNodeByID(node_id) if node_id and self._scene is not None else None

    def setCurrentNode(self, node: Any) -> None:
        index = self.findData(node.GetID()) if node is not None else (0 if self._none else -1)
        if index < 0 and node is not None:
            raise ValueError(f"{node.GetName()} is not offered by this combo box")
        self.setCurrentIndex(index)

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if node_id else None)

    def _index_changed(self, _index: int) -> None:
        if not self._refreshing:
            self.currentNodeChanged.emit(self.currentNode())


CUSTOM_WIDGETS = (ctkCollapsibleButton, ctkPathLineEdit, qMRMLWidget, qMRMLNodeComboBox)


class QUiLoader(QtUiTools.QUiLoader):
    """PySide6's loader, knowing the CTK/MRML classes the way Slicer's does."""

    def __init__(self, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        for widget_class in CUSTOM_WIDGETS:
            self.registerCustomWidget(widget_class)


# --------------------------------------------------------------------------- application


class ShellApplication(QtCore.QObject):
    """What the module uses of ``slicer.app``."""

    aboutToQuit = QtCore.Signal()

    def __init__(self, qapp: QtWidgets.QApplication) -> None:
        super().__init__()
        self.qapp = qapp
        qapp.aboutToQuit.connect(self.aboutToQuit.emit)

    def testingEnabled(self) -> bool:
        return True

    def processEvents(self) -> None:
        self.qapp.processEvents()


# --------------------------------------------------------------------------- ScriptedLoadableModule


def _scripted_loadable_module() -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    def resource_path(obj: Any, filename: str) -> str:
        source = sys.modules[type(obj).__module__].__file__
        return os.path.join(os.path.dirname(source), "Resources", filename)

    class ScriptedLoadableModule:
        def __init__(self, parent: Any) -> None:
            self.parent = parent
            self.moduleName = type(self).__name__

        def resourcePath(self, filename: str) -> str:
            return resource_path(self, filename)

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent: Any = None) -> None:
            self.moduleName = type(self).__name__[: -len("Widget")]
            if parent is None:
                parent = qMRMLWidget()
                parent.setLayout(QtWidgets.QVBoxLayout())
                parent.setMRMLScene(slicer.mrmlScene)
            self.parent = parent
            self.layout = parent.layout()

        def resourcePath(self, filename: str) -> str:
            return resource_path(self, filename)

        def setup(self) -> None:
            """Slicer adds its developer section (reload, test) here in developer mode."""

        def cleanup(self) -> None:
            pass

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent
            self.moduleName = type(self).__name__[: -len("Logic")]

        def getParameterNode(self) -> Any:
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
                node.UnRegister(None)
                node.SetSingletonTag(self.moduleName)
                node.SetModuleName(self.moduleName)
                node.SetName(scene.GenerateUniqueName(self.moduleName))
                node = scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message: str, msec: int | None = None) -> None:
            logging.info(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        cls.__module__ = module.__name__
        setattr(module, cls.__name__, cls)
    module.__all__ = [c.__name__ for c in (ScriptedLoadableModule, ScriptedLoadableModuleWidget,
                                           ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest)]
    return module


# --------------------------------------------------------------------------- parameterNodeWrapper


class Choice:
    """Annotation: the value is one of ``choices``."""

    def __init__(self, choices: list[Any]) -> None:
        self.choices = list(choices)


class _Parameter:
    def __init__(self, name: str, hint: Any, default: Any) -> None:
        self.name = name
        self.annotations: tuple = ()
        base = hint
        if typing.get_origin(hint) is typing.Annotated:
            base, *rest = typing.get_args(hint)
            self.annotations = tuple(rest)
        self.base = base
        args = typing.get_args(base) if typing.get_origin(base) is typing.Union else (base,)
        self.node_types = tuple(a for a in args if isinstance(a, type) and issubclass(a, slicer.vtkMRMLNode))
        self.is_node = bool(self.node_types)
        if not self.is_node and base not in (str, int, float, bool):
            raise TypeError(f"parameter {name!r}: the shell supports str, int, float, bool and nodes")
        self.choice = next((a for a in self.annotations if isinstance(a, Choice)), None)
        self.default = None if self.is_node else (default if default is not None else base())

    def present(self, node: Any) -> bool:
        return bool(node.HasParameter(self.name))

    def read(self, node: Any) -> Any:
        if self.is_node:
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        if self.base is bool:
            return text == "true"
        return self.base(text) if text != "" or self.base is str else self.default

    def write(self, node: Any, value: Any) -> None:
        if self.is_node:
            if value is not None and not any(value.IsA(t.__name__) for t in self.node_types):
                raise TypeError(f"{self.name} must be a {'/'.join(t.__name__ for t in self.node_types)}")
            node.SetParameter(self.name, "")
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            return
        if self.choice is not None and value not in self.choice.choices:
            raise ValueError(f"{self.name} must be one of {self.choice.choices}, got {value!r}")
        node.SetParameter(self.name, ("true" if value else "false") if self.base is bool else str(value))


class _Binding:
    """Two-way binding of one widget to one parameter."""

    def __init__(self, wrapper: Any, parameter: _Parameter, widget: QtWidgets.QWidget) -> None:
        self.wrapper, self.parameter, self.widget = wrapper, parameter, widget
        if isinstance(widget, qMRMLNodeComboBox):
            if not parameter.is_node:
                raise TypeError(f"{parameter.name}: a node combo box needs a node parameter")
            self.signal = widget.currentNodeChanged
        elif isinstance(widget, QtWidgets.QComboBox):
            if parameter.choice is None:
                raise TypeError(f"{parameter.name}: a combo box needs a Choice annotation")
            widget.blockSignals(True)
            widget.clear()
            widget.addItems([str(c) for c in parameter.choice.choices])
            widget.blockSignals(False)
            self.signal = widget.currentIndexChanged
        elif isinstance(widget, QtWidgets.QCheckBox):
            self.signal = widget.toggled
        elif isinstance(widget, QtWidgets.QLineEdit):
            self.signal = widget.textChanged
        else:
            raise TypeError(f"{parameter.name}: no connector for {type(widget).__name__}")
        self.signal.connect(self.to_node)

    def to_node(self, *_args: Any) -> None:
        if self.wrapper._updating_gui:
            return
        widget, parameter = self.widget, self.parameter
        if isinstance(widget, qMRMLNodeComboBox):
            value = widget.currentNode()
        elif isinstance(widget, QtWidgets.QComboBox):
            value = parameter.choice.choices[widget.currentIndex()]
        elif isinstance(widget, QtWidgets.QCheckBox):
            value = widget.isChecked()
        else:
            value = widget.text()
        setattr(self.wrapper, parameter.name, value)

    def to_widget(self) -> None:
        value = getattr(self.wrapper, self.parameter.name)
        widget = self.widget
        if isinstance(widget, qMRMLNodeComboBox):
            widget.setCurrentNode(value)
        elif isinstance(widget, QtWidgets.QComboBox):
            widget.setCurrentIndex(self.parameter.choice.choices.index(value))
        elif isinstance(widget, QtWidgets.QCheckBox):
            widget.setChecked(bool(value))
        else:
            widget.setText(str(value))

    def disconnect(self) -> None:
        self.signal.disconnect(self.to_node)


def parameterNodeWrapper(cls: type) -> type:
    """Typed access to a ``vtkMRMLScriptedModuleNode`` (see the module docstring)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    parameters = {name: _Parameter(name, hint, cls.__dict__.get(name)) for name, hint in hints.items()}

    def __init__(self: Any, parameter_node: Any) -> None:
        object.__setattr__(self, "parameterNode", parameter_node)
        object.__setattr__(self, "_guis", {})
        object.__setattr__(self, "_updating_gui", False)
        for parameter in parameters.values():
            if not parameter.present(parameter_node):
                parameter.write(parameter_node, parameter.default)

    def make_property(parameter: _Parameter) -> property:
        return property(lambda self: parameter.read(self.parameterNode),
                        lambda self, value: parameter.write(self.parameterNode, value))

    def connectGui(self: Any, gui: Any) -> int:
        widgets = gui.findChildren(QtWidgets.QWidget) if isinstance(gui, QtWidgets.QWidget) \
            else list(vars(gui).values())
        bindings = []
        for widget in widgets:
            name = widget.property(PARAMETER_PROPERTY)
            if name:
                if name not in parameters:
                    raise ValueError(f"the .ui binds {name!r}, which is not a parameter")
                bindings.append(_Binding(self, parameters[name], widget))
        tag = len(self._guis) + 1
        while tag in self._guis:
            tag += 1

        def update(*_args: Any) -> None:
            self._updating_gui = True
            try:
                for binding in bindings:
                    binding.to_widget()
            finally:
                self._updating_gui = False

        observer = self.parameterNode.AddObserver("ModifiedEvent", update)
        self._guis[tag] = (bindings, observer)
        update()
        return tag

    def disconnectGui(self: Any, tag: int | None) -> None:
        if tag in self._guis:
            bindings, observer = self._guis.pop(tag)
            for binding in bindings:
                binding.disconnect()
            self.parameterNode.RemoveObserver(observer)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if name in parameters or name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            raise AttributeError(f"{cls.__name__} has no parameter {name!r}")

    namespace = {"__init__": __init__, "connectGui": connectGui, "disconnectGui": disconnectGui,
                 "__setattr__": __setattr__, "allParameters": parameters,
                 "__doc__": cls.__doc__, "__module__": cls.__module__}
    for name, parameter in parameters.items():
        namespace[name] = make_property(parameter)
    return type(cls.__name__, (), namespace)


def _parameter_node_wrapper_module() -> types.ModuleType:
    module = types.ModuleType("slicer.parameterNodeWrapper")
    module.parameterNodeWrapper = parameterNodeWrapper
    module.Choice = Choice
    return module


# --------------------------------------------------------------------------- install


def _qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt")
    for source in (QtCore, QtGui, QtWidgets, QtUiTools, QtTest):
        for name in dir(source):
            if name.startswith("Q") and not hasattr(qt, name):
                setattr(qt, name, getattr(source, name))
    qt.Qt = QtCore.Qt
    qt.QUiLoader = QUiLoader
    return qt


class Shell:
    """The installed stand-in; :meth:`uninstall` puts everything back."""

    def __init__(self, scene: Any, settings_dir: Path) -> None:
        self.qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
        QtCore.QCoreApplication.setOrganizationName("MedSegRTests")
        QtCore.QCoreApplication.setApplicationName("SlicerShell")
        QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
        QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, str(settings_dir))
        self.scene = scene
        self.app = ShellApplication(self.qapp)
        self._saved_modules = {name: sys.modules.get(name) for name in
                               ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper",
                                "slicer.i18n", "MedSegR")}
        self._saved_attributes = {name: getattr(slicer, name, _MISSING) for name in
                                  ("mrmlScene", "app", "qMRMLWidget", "qMRMLNodeComboBox",
                                   "ScriptedLoadableModule", "parameterNodeWrapper", "i18n", "modules")}
        qt = _qt_module()
        ctk = types.ModuleType("ctk")
        ctk.ctkCollapsibleButton = ctkCollapsibleButton
        ctk.ctkPathLineEdit = ctkPathLineEdit
        i18n = types.ModuleType("slicer.i18n")
        i18n.tr = lambda text: text
        i18n.translate = lambda _context, text: text
        scripted = _scripted_loadable_module()
        wrapper = _parameter_node_wrapper_module()
        sys.modules.update({"qt": qt, "ctk": ctk, "slicer.ScriptedLoadableModule": scripted,
                            "slicer.parameterNodeWrapper": wrapper, "slicer.i18n": i18n})
        sys.modules.pop("MedSegR", None)
        slicer.mrmlScene = scene
        slicer.app = self.app
        slicer.qMRMLWidget = qMRMLWidget
        slicer.qMRMLNodeComboBox = qMRMLNodeComboBox
        slicer.ScriptedLoadableModule = scripted
        slicer.parameterNodeWrapper = wrapper
        slicer.i18n = i18n
        slicer.modules = types.SimpleNamespace()
        self.qt = qt

    def process_events(self, seconds: float = 0.0) -> None:
        """Run the Qt event loop for ``seconds`` (timers fire, signals are delivered)."""
        import time

        end = time.monotonic() + seconds
        while True:
            self.qapp.processEvents(QtCore.QEventLoop.AllEvents, 20)
            if time.monotonic() >= end:
                break
            time.sleep(0.01)

    def wait_for(self, condition: Any, timeout: float = 60.0) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.process_events()
            if condition():
                return True
            time.sleep(0.01)
        return bool(condition())

    def uninstall(self) -> None:
        for name, module in self._saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name, value in self._saved_attributes.items():
            if value is _MISSING:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)


class _Missing(enum.Enum):
    MISSING = 0


_MISSING = _Missing.MISSING


def install(scene: Any, settings_dir: Path) -> Shell:
    return Shell(scene, settings_dir)
