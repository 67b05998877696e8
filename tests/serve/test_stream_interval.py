"""``dlm serve --stream-interval N``: a streamed answer's progress goes out every N engine steps and at its end,
with the same final text; the ``dlm_canvas`` extension still reports every step; a bad N is refused at start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import openai_client, running
from .test_api import LONG, PROMPT, reference


@pytest.fixture(scope="module")
def interval_client(tmp_path_factory):
    """The bundled dlm-tiny (its answers grow left to right, step by step) with --stream-interval 4."""
    log = tmp_path_factory.mktemp("interval") / "server.log"
    for server in running(["--max-rows", "4", "--stream-interval", "4"], log):
        yield openai_client(server)


def pieces(client, body) -> list[str]:
    return [c.choices[0].text for c in client.completions.create(stream=True, **body) if c.choices]


def test_progress_every_nth_step_with_the_same_text(interval_client, model):
    body = dict(model="dlm-tiny", prompt=PROMPT, max_tokens=64, extra_body={"steps": 16, **LONG})
    texts = pieces(interval_client, body)
    # 16 steps: progress after steps 4, 8, 12 and 16 only (every step gives dlm-tiny's answer here in about 11
    # pieces; an update without new final text sends nothing)
    assert 2 <= len([t for t in texts if t]) <= 4
    assert "".join(texts) == reference(model, PROMPT, gen_length=64, steps=16, **LONG)[0]
    assert interval_client.completions.create(**body).choices[0].text == "".join(texts)


def test_stop_strings_cut_the_same_text(interval_client, model):
    full = reference(model, PROMPT, gen_length=32, scheduler="threshold")[0]
    cut = full[: full.index("return")]
    body = dict(model="dlm-tiny", prompt=PROMPT, max_tokens=32, stop=["return"], extra_body={"scheduler": "threshold"})
    assert interval_client.completions.create(**body).choices[0].text == cut
    assert "".join(pieces(interval_client, body)) == cut


def test_the_canvas_extension_still_gets_every_step(interval_client):
    stream = interval_client.completions.create(model="dlm-tiny", prompt=PROMPT, max_tokens=32, stream=True,
                                                stream_options={"dlm_canvas": True},
                                                extra_body={"steps": 8, **LONG})
    steps = [c.model_extra.get("dlm") for c in stream][1:]
    assert [s["step"] for s in steps if s] == list(range(1, 9))


def test_a_bad_interval_is_refused(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dlm.serve", "--stream-interval", "0", "--device", "cpu"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode != 0 and "--stream-interval must be >= 1, got 0" in out.stderr


def test_the_setting_is_checked_in_python_too():
    from dlm.serve.server import ServerSettings

    with pytest.raises(ValueError, match="stream_interval must be an integer >= 1, got 0"):
        ServerSettings(model_name="x", stream_interval=0)
