"""A client that goes away cancels its request: its rows are free at the next step (seen in /metrics)."""

from __future__ import annotations

import json

import httpx
import pytest

from .conftest import ENDLESS, wait_for


def test_closing_a_stream_frees_its_row(server):
    cancelled = server.metric('dlm_requests_total{endpoint="completions",outcome="cancelled"}') if "cancelled" in \
        httpx.get(server.url + "/metrics").text else 0.0
    body = {**ENDLESS, "stream": True, "stream_options": {"dlm_canvas": True}}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        # the iterator stays referenced: a dropped one closes the connection (httpcore), which is the cancel
        lines, steps = r.iter_lines(), 0
        for line in lines:
            if line.startswith("data: {") and json.loads(line[6:]).get("dlm", {}).get("step"):
                steps += 1
                if steps == 2:
                    break
        assert steps == 2
        assert server.metric("dlm_active_rows") >= 1 and server.metric("dlm_running_requests") >= 1
    wait_for(lambda: server.metric("dlm_active_rows") == 0 and server.metric("dlm_running_requests") == 0)
    wait_for(lambda: server.metric('dlm_requests_total{endpoint="completions",outcome="cancelled"}') == cancelled + 1)


def test_a_client_that_gives_up_waiting_cancels_its_request(server):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=ENDLESS, timeout=httpx.Timeout(60, read=2))
    wait_for(lambda: server.metric("dlm_active_rows") == 0 and server.metric("dlm_running_requests") == 0)
