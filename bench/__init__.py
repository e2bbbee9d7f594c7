"""Benchmarks that print ratios measured in one process: ``python -m bench --help``.

One module per question: ``latency`` (DRNet vs dense supernet vs MobileNetV2),
``masked`` (the cost of gather/scatter), ``train_throughput``, ``app_path`` (upload to
prediction, attribution times) and ``sweep`` (accuracy vs FLOPs vs wall-clock per
threshold). Results and the machines they ran on: docs/BENCHMARKS.md.
"""
