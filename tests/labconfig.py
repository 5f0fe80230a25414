"""The lab's own cluster file, loaded: for tests of one adapter that need a real ClusterConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from failover.config import ClusterConfig, load_config
from failover.lab.cluster import cluster_document
from failover.lab.netns import Lab


def lab_config(tmp_path: Path, ipv6: bool = False, hooks: dict[str, Any] | None = None) -> ClusterConfig:
    """The file `failover lab` writes (with its key) in `tmp_path`; `hooks` replaces its hooks section."""
    (tmp_path / "lab.key").write_text("k" * 64)
    (tmp_path / "lab.key").chmod(0o600)
    doc = cluster_document(Lab(), tmp_path, ipv6=ipv6)
    if hooks is not None:
        doc["hooks"] = hooks
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)
