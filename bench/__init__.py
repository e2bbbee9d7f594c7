"""Benchmarks that print ratios measured in one process: ``python -m bench --help``.

One module per question: ``latency`` (DRNet vs dense supernet vs MobileNetV2),
``masked`` (the cost of gather/scatter), ``train_throughput``, ``app_path`` (upload to
prediction, attribution times), ``sweep`` (accuracy vs FLOPs vs wall-clock per
threshold), ``breakdown`` and ``parts`` (where a forward's time goes) and ``pooling``
(the fast path's pool forms). Inference is timed through ``drnets.inference.for_inference``
unless ``--no-fast`` asks for the plain model. Results and the machines they ran on:
docs/BENCHMARKS.md.
"""
