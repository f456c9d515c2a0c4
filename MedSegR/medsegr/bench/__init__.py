"""``medsegr bench``: MedSegR's pipeline side by side with a LISA-style reference path.

Both paths run on the same loaded model object (same weights, same kernels); see
:mod:`medsegr.bench.reference` for what the reference path does differently,
:mod:`medsegr.bench.workloads` for the questions, :mod:`medsegr.bench.report` for
the tables and plots and :mod:`medsegr.bench.commands` for the command line.
Nothing here is imported by the engine itself.
"""
