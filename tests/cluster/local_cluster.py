"""A multi-node Ray cluster on 127.0.0.1, run as its own process by the cluster tests.

    python local_cluster.py '{"gpu": {"num_cpus": 1, "num_gpus": 1}, "cpu": {"num_cpus": 1}}'

Starts a head with no CPUs (like the launcher YAMLs' head: no trials there) and one worker node per entry,
then prints one JSON line: {"address": ..., "head": NODE_ID, "workers": {NAME: NODE_ID}}. It then reads
commands from stdin: `kill NAME` removes that worker node at once (its raylet and workers die, as when a
machine is lost) and answers `killed NAME`; `stop` or end of input shuts the whole cluster down.
A separate process because Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import (0 keeps every node
on 127.0.0.1 in a loopback-only sandbox) and because a test must be able to kill it outright.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray.cluster_utils import Cluster


def main() -> None:
    """Start the cluster, report it, then obey stdin until told to stop."""
    workers_spec: dict[str, dict[str, float]] = json.loads(sys.argv[1])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1"})
    try:
        workers = {name: cluster.add_node(node_ip_address="127.0.0.1", **spec) for name, spec in workers_spec.items()}
        cluster.wait_for_nodes()
        report = {
            "address": cluster.address,
            "head": cluster.head_node.node_id,
            "workers": {name: node.node_id for name, node in workers.items()},
        }
        print(json.dumps(report), flush=True)
        for line in sys.stdin:
            command, _, name = line.strip().partition(" ")
            if command == "kill":
                cluster.remove_node(workers.pop(name), allow_graceful=False)
                print(f"killed {name}", flush=True)
            elif command == "stop":
                break
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
