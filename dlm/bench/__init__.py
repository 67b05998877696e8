"""Benchmark suite: tasks with exact answers, measurement of schedulers/caches/verifiers, reports and plots."""
