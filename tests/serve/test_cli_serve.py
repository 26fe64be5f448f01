"""``genmodels serve`` as a user runs it: a subprocess on a free port, answered through the ``openai``
client, stopped by SIGINT (uvicorn's graceful shutdown: exit status 0)."""
from __future__ import annotations

import re
import signal
import subprocess
import sys

import openai

import genmodels


def test_genmodels_serve_answers_and_stops_cleanly(tmp_path, chat_model):
    folder = genmodels.save(chat_model, tmp_path / "tiny")
    proc = subprocess.Popen([sys.executable, "-m", "genmodels.cli", "serve", str(folder), "--port", "0",
                             "--max-batch", "2"], stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for _ in range(50):  # "serving tiny at http://127.0.0.1:PORT (…)", after any one-time notices
            lines.append(proc.stderr.readline())
            url = re.search(r"^serving .* at (http://127\.0\.0\.1:\d+)", lines[-1])
            if url or not lines[-1]:
                break
        assert url, lines
        client = openai.OpenAI(base_url=url.group(1) + "/v1", api_key="none", max_retries=3, timeout=60)
        r = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0)
        ids = chat_model.tokenizer.encode("Hello").ids
        want = genmodels.generate(chat_model, __import__("torch").tensor([ids]), 4, temperature=0)[0, len(ids):]
        assert r.choices[0].text == chat_model.tokenizer.decode(want.tolist())
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
