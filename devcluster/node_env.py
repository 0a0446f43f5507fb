"""Environment a node gives every container it runs: how a test makes one node differ from the others.

A real node's containers see its driver, its libraries and its devices; two nodes of one pool can
differ (a GPU driver upgrade half done). devcluster's nodes are one machine, so a test sets such a
difference as environment variables per node (``Cluster.set_node_env``), kept in the state folder
(``node-env.json``: node name -> variables) and read by the process kubelet each time it starts a
container on that node. They come under the image's and the pod's own variables, as the machine's do.
"""

from __future__ import annotations

import json
from pathlib import Path

NODE_ENV = "node-env.json"  # in the state folder


def read(state_dir: Path, node: str | None) -> dict[str, str]:
    """The variables ``node`` gives its containers (none when unset or unreadable)."""
    if not node:
        return {}
    try:
        data = json.loads((state_dir / NODE_ENV).read_text())
    except (OSError, ValueError):
        return {}
    env = data.get(node) if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}


def write(state_dir: Path, node: str, env: dict[str, str] | None) -> None:
    """Set (``env``) or clear (None or empty) what ``node`` gives the containers it starts from now on."""
    path = state_dir / NODE_ENV
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    if env:
        data[node] = dict(env)
    else:
        data.pop(node, None)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    tmp.replace(path)
