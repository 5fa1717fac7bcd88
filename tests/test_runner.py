"""`whazing-gateway run`'s mitmproxy options, and the flow viewer on a mitmweb without
authentication (mitmproxy 11.0.2, what Python 3.11 gets): loopback only, said plainly, no crash."""

from __future__ import annotations

from pathlib import Path

from mitmproxy import options
from mitmproxy.tools.web.master import WebMaster
from mitmproxy.version import VERSION

from whazing_gateway.config import load_settings
from whazing_gateway.edge.runner import mitmproxy_options, unauthenticated_viewer_warning, viewer_has_auth


def settings(tmp_path: Path, web: str):
    path = tmp_path / "gateway.yaml"
    path.write_text(f"upstream: http://127.0.0.1:3000\nweb: {web}\n")
    return load_settings(path, env={})


def test_viewer_with_auth_keeps_host_and_password(tmp_path):
    s = settings(tmp_path, "{host: 0.0.0.0, port: 8181, password: s3cret}")
    opts = mitmproxy_options(s, web=True, web_auth=True)
    assert (opts["web_host"], opts["web_port"], opts["web_password"]) == ("0.0.0.0", 8181, "s3cret")
    assert opts["mode"] == ["reverse:http://127.0.0.1:3000"] and "comment" in opts["web_columns"]


def test_viewer_without_auth_is_loopback_only_and_sets_no_password(tmp_path):
    s = settings(tmp_path, "{host: 0.0.0.0, port: 8181, password: s3cret}")
    opts = mitmproxy_options(s, web=True, web_auth=False)
    assert opts["web_host"] == "127.0.0.1" and opts["web_port"] == 8181 and "web_password" not in opts
    line = unauthenticated_viewer_warning(s, "11.0.2")
    assert "UNAUTHENTICATED" in line and "127.0.0.1 only" in line and "CVE-2025-23217" in line
    assert "web.host 0.0.0.0 ignored" in line and "web.password cannot be enforced" in line
    assert "Python 3.12+" in line


def test_without_web_no_viewer_options(tmp_path):
    opts = mitmproxy_options(settings(tmp_path, "{port: 8181}"), web=False, web_auth=False)
    assert not any(k.startswith("web_") for k in opts)


async def test_every_option_exists_in_this_mitmproxy(tmp_path):
    """The options `run --web` sets are all known to the installed mitmweb (the 11.0.2 crash was
    `KeyError: 'Unknown options: web_password'`)."""
    opts = options.Options()
    WebMaster(opts, with_termlog=False)
    auth = viewer_has_auth(opts)
    assert auth == (tuple(int(x) for x in VERSION.split(".")[:2]) >= (11, 1))
    s = settings(tmp_path, "{host: 127.0.0.1, port: 8181, password: s3cret}")
    values = mitmproxy_options(s, web=True, web_auth=auth)
    values.pop("whazing_config")  # the addon's own option, registered when the addon loads
    opts.update(**values)  # raises KeyError on an unknown option
    assert opts.web_port == 8181 and opts.web_host == "127.0.0.1"
