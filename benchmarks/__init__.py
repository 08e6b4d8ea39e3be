"""Benchmarks of the training loop, the exporters' runtimes and the service under load (``python -m benchmarks.X``).

They sit on top of the packages (``training`` <- ``exporters`` <- ``service`` <- ``benchmarks``): they may import
any of them, and none of them imports a benchmark. Their recorded figures are in docs/benchmarks.md.
"""
