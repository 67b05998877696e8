"""``python -m dlm.eval``: the ``lm_eval`` command line with the model ``dlm`` registered.

lm-eval 0.4.13 (the newest release on PyPI when this was written) does not read the ``lm_eval.models`` entry point
that dlm declares, so its ``lm_eval`` command does not know ``--model dlm``; this runs the same command after
importing the model, the approach lm-eval's maintainers suggest for models outside its tree (issue #1621):

    python -m dlm.eval run --model dlm --model_args pretrained=PATH,scheduler=threshold --tasks gsm8k
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as exc:
        sys.exit(f"python -m dlm.eval needs lm-eval: pip install 'dlm[eval]' ({exc})")
    from . import harness  # noqa: F401  (registers --model dlm)

    cli_evaluate()


if __name__ == "__main__":
    main()
