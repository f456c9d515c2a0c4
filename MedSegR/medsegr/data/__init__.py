"""MedSeg-QA-style datasets: the record format, its validator and the builders.

A dataset is a folder with split files (``train.jsonl``, ``val.jsonl``,
``test.jsonl``) of JSON records, one per image slice, each holding the image, the
masks of the structures on it and one conversation whose answers bind ``[SEG]``
markers to those masks. See ``docs/dataset-format.md``.

Modules:

- :mod:`medsegr.data.records`: the record dataclasses, parsing, :func:`load_dataset`;
- :mod:`medsegr.data.validate`: the full check behind ``medsegr data check``;
- :mod:`medsegr.data.knowledge`: the anatomy knowledge base and name matching;
- :mod:`medsegr.data.conversations`: questions and answers from a slice's scene;
- :mod:`medsegr.data.procedural`, :mod:`medsegr.data.offline`,
  :mod:`medsegr.data.folder`: the builders;
- :mod:`medsegr.data.commands`: the ``medsegr data`` sub-commands.

Nothing here imports torch.
"""
