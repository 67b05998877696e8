"""One evaluation through lm-eval's Python API (``lm_eval.simple_evaluate``) with the ``dlm`` model; the results
saved the way the ``lm_eval`` command saves them, and dlm's own report beside them.

Output folder (``output``)::

    <output>/<model name>/results_<date>.json          lm-eval's results (the dlm section under config.dlm)
    <output>/<model name>/samples_<task>_<date>.jsonl  with log_samples
    <output>/<model name>/dlm_eval_<date>.json         accuracy per task + speed + generation config + model
    <output>/<model name>/generation_config_<date>.json   the GenerationConfig; `dlm eval --config` takes it
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from .tasks import TASK_DIR


def local_tasks() -> set[str]:
    """Names of dlm's own tasks and groups (the YAML files of :data:`~dlm.eval.tasks.TASK_DIR`)."""
    return {p.stem for p in TASK_DIR.glob("dlm_*.yaml")}


def task_manager(tasks: Sequence[str], include_path: Sequence[str | os.PathLike] = (),
                 data_dir: str | os.PathLike | None = None):
    """lm-eval's TaskManager with dlm's local tasks (and ``include_path``) added; ``data_dir`` replaces the
    shipped JSONL files. lm-eval's own thousands of task files are indexed only when a task needs them (indexing
    them takes longer than evaluating the local tasks on a CPU)."""
    from lm_eval.tasks import TaskManager

    metadata = {"dlm_data_dir": str(data_dir)} if data_dir is not None else None
    defaults = bool(include_path) or not set(tasks) <= local_tasks()
    return TaskManager(include_path=[str(TASK_DIR), *map(str, include_path)], include_defaults=defaults,
                       metadata=metadata)


def accuracy_table(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task (and group) its metrics, without lm-eval's aliases."""
    out: dict[str, dict[str, Any]] = {}
    for section in ("results", "groups"):
        for task, metrics in (results.get(section) or {}).items():
            out[task] = {k: v for k, v in metrics.items() if k != "alias" and not isinstance(v, str)}
    return out


def evaluate(model_args: dict[str, Any], tasks: Sequence[str], *, lm=None, output: str | os.PathLike | None = None,
             num_fewshot: int | None = None, limit: int | float | None = None,
             include_path: Sequence[str | os.PathLike] = (), data_dir: str | os.PathLike | None = None,
             apply_chat_template: bool = False, log_samples: bool = False, confirm_run_unsafe_code: bool = False,
             bootstrap_iters: int = 100_000, verbosity: str | None = None) -> dict[str, Any]:
    """Evaluate a dlm model on lm-eval ``tasks``.

    Args:
        model_args: the ``dlm`` model's arguments (:mod:`dlm.eval.args`); ``pretrained`` names the checkpoint.
        lm: a loaded :class:`~dlm.api.DiffusionLM` to use instead of loading ``pretrained``.
        output: folder for the results (nothing is written when ``None``).
        The rest are :func:`lm_eval.simple_evaluate`'s arguments of the same names.

    Returns:
        lm-eval's results mapping; ``results["config"]["dlm"]`` holds speed and config, ``results["dlm_files"]``
        the files written.
    """
    try:
        import lm_eval
        from lm_eval.loggers import EvaluationTracker
    except ImportError as exc:
        raise ConfigError(f"dlm eval needs lm-eval: pip install 'dlm[eval]' ({exc})") from exc
    from .harness import DLMEvalLM

    if not tasks:
        raise ConfigError("name at least one task (e.g. dlm_synthetic, dlm_choice, gsm8k)")
    model = DLMEvalLM(lm=lm, **model_args)
    tracker = EvaluationTracker(output_path=str(output)) if output is not None else None
    name_args = {**model_args, "pretrained": str(model.lm.path or "dlm")}
    results = lm_eval.simple_evaluate(
        model=model, model_args=name_args, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
        task_manager=task_manager(tasks, include_path, data_dir), evaluation_tracker=tracker, log_samples=log_samples,
        apply_chat_template=apply_chat_template, confirm_run_unsafe_code=confirm_run_unsafe_code,
        bootstrap_iters=bootstrap_iters, verbosity=verbosity)
    if results is None:  # not the main process
        return {}
    if tracker is not None:
        results["dlm_files"] = save(tracker, results, log_samples)
    return results


def save(tracker, results: dict[str, Any], log_samples: bool) -> list[str]:
    """Write lm-eval's files through its tracker, then dlm's report and config beside them."""
    samples = results.pop("samples", None) if log_samples else None
    tracker.save_results_aggregated(results=results, samples=samples)
    if log_samples and samples is not None:
        for task in results["configs"]:
            tracker.save_results_samples(task_name=task, samples=samples[task])
    folder = Path(tracker.output_path) / str(tracker.general_config_tracker.model_name_sanitized)
    folder.mkdir(parents=True, exist_ok=True)
    info = results["config"]["dlm"]
    report = {"accuracy": accuracy_table(results), "speed": info["speed"], **{k: v for k, v in info.items()
                                                                             if k != "speed"},
              "tasks": list(results.get("configs", {})), "limit": results["config"].get("limit"),
              "n_samples": results.get("n-samples")}
    paths = [folder / f"dlm_eval_{tracker.date_id}.json", folder / f"generation_config_{tracker.date_id}.json"]
    paths[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths[1].write_text(json.dumps(info["generation_config"], indent=2) + "\n")
    return [str(p) for p in paths]


__all__ = ["accuracy_table", "evaluate", "local_tasks", "save", "task_manager"]
