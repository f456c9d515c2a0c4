"""The ``medsegr`` command line: :mod:`medsegr.cli.commands` parses the command and runs
it; the other modules are its parts (model options, result files and printing, the
overlay picture, the bundled sample images, asking a remote engine).

Light on purpose: importing this package imports nothing, so ``python -m medsegr.cli``
and ``medsegr --help`` start without torch."""


def __getattr__(name: str) -> object:
    """``from medsegr.cli import main`` (the entry point's old path) still works."""
    if name == "main":
        from medsegr.cli.commands import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
