"""The flow viewer's random token is shown on a terminal only: a gateway whose stderr is a file
(the JSON log stream, as under systemd or docker) and which has no terminal never writes it."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
import time

import aiohttp
import pytest

from tests.receivers import free_port

pytestmark = pytest.mark.slow


def mitmweb_has_auth() -> bool:
    """mitmproxy 11.1+ protects mitmweb (a token or a password); 11.0.2 (Python 3.11) cannot."""
    from mitmproxy import options
    from mitmproxy.tools.web.master import WebMaster

    opts = options.Options()
    WebMaster(opts, with_termlog=False)
    return "web_password" in opts


async def test_random_viewer_token_never_reaches_the_log(tmp_path):
    protected = mitmweb_has_auth()
    port, metrics_port, web_port = free_port(), free_port(), free_port()
    (tmp_path / "rules").mkdir()
    (tmp_path / "gateway.yaml").write_text(textwrap.dedent(f"""\
        listen: {{host: 127.0.0.1, port: {port}}}
        upstream: http://127.0.0.1:{free_port()}
        rules_dir: rules
        data_dir: data
        metrics: {{host: 127.0.0.1, port: {metrics_port}}}
        web: {{host: 127.0.0.1, port: {web_port}}}
        log: {{format: json, level: debug}}
        """))
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as out:
        # a new session: no controlling terminal, like a service
        proc = subprocess.Popen([sys.executable, "-m", "whazing_gateway.cli", "run", "--web", "--config", "gateway.yaml"],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 40
            async with aiohttp.ClientSession() as s:
                while True:
                    assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                    try:
                        async with s.get(f"http://127.0.0.1:{web_port}/flows") as r:
                            if protected:
                                assert r.status in (401, 403)  # a token is required all the same
                            else:  # no authentication to give: loopback only, and said so
                                assert r.status == 200
                            break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(20)
    text = log_path.read_text()
    if protected:
        assert "flow viewer" in text and "NOT shown" in text
    else:
        assert "has no password for mitmweb" in text and "UNAUTHENTICATED" in text
    assert "token=" not in text
    assert not re.search(r"\b[0-9a-f]{32}\b", text), text
