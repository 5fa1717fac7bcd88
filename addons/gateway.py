"""The file `mitmdump -s` / `mitmweb -s` load: the Whazing Gateway addon, nothing else.

    mitmdump -s addons/gateway.py --mode reverse:http://127.0.0.1:3000 --set whazing_config=gateway.yaml

The gateway itself is the installed `whazing_gateway` package (`pip install whazing-gateway`,
or `pip install -e .` in a clone); this file only hands mitmproxy its addon.
"""

from whazing_gateway.edge.addon import Gateway

addons = [Gateway()]
