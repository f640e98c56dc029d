"""The thin wrapper around SkyPilot's SDK: the only module that imports ``sky``, lazily.

Every call sends a request to SkyPilot's API server and waits for it with ``sky.get``. Tests
replace this object with a fake that raises SkyPilot's real exception classes.
"""

from __future__ import annotations

import os
from typing import Any


def _sky():
    os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    import sky

    return sky


class SkySDK:
    def launch(self, task_config: dict, cluster: str) -> Any:
        sky = _sky()
        import copy

        task = sky.Task.from_yaml_config(copy.deepcopy(task_config))
        return sky.get(sky.launch(task, cluster_name=cluster))

    def status(self, cluster: str, refresh: bool = True) -> list[Any]:
        sky = _sky()
        from sky.utils.common import StatusRefreshMode

        mode = StatusRefreshMode.AUTO if refresh else StatusRefreshMode.NONE
        return sky.get(sky.status(cluster_names=[cluster], refresh=mode))

    def stop(self, cluster: str) -> None:
        sky = _sky()
        sky.get(sky.stop(cluster))

    def start(self, cluster: str) -> Any:
        sky = _sky()
        return sky.get(sky.start(cluster))

    def down(self, cluster: str) -> None:
        sky = _sky()
        sky.get(sky.down(cluster))

    def endpoints(self, cluster: str, port: int) -> dict[int, str]:
        sky = _sky()
        return sky.get(sky.endpoints(cluster, port))

    def exceptions(self):
        return _sky().exceptions
