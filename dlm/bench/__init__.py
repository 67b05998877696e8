"""Benchmark suite (``dlm bench``): every decoding configuration measured on tasks with exact answers (from
:mod:`dlm.data`) against the reference decode of the same run; reports and plots. See docs/benchmarks.md."""
