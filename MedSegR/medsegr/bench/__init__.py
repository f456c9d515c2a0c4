"""``medsegr bench``: the benchmarks, one package, one command.

- the comparison (default): MedSegR's pipeline side by side with a LISA-style
  reference path on the same loaded model (same weights, same kernels); see
  :mod:`medsegr.bench.reference` for what the reference path does differently,
  :mod:`medsegr.bench.context` and :mod:`medsegr.bench.workloads` for the questions,
  :mod:`medsegr.bench.runner` and :mod:`medsegr.bench.report` for the run and the
  tables and plots;
- the engine suite (``--engine``): cold start, slice question, follow-up, volume and
  the HTTP path, each in a fresh worker process
  (:mod:`medsegr.bench.engine_runner`, :mod:`medsegr.bench.engine_worker`,
  :mod:`medsegr.bench.engine_report`), timed with the engine's own records
  (``MedSegRPipeline.load_timings``, ``Answer.timings``).

Both use :mod:`medsegr.bench.machine`, :mod:`medsegr.bench.cpu_load`,
:mod:`medsegr.bench.memory` and :mod:`medsegr.bench.stats`;
:mod:`medsegr.bench.commands` is the command line. Nothing here is imported by the
engine itself.
"""
