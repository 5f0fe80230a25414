"""Cluster configuration: one YAML file in, frozen and validated dataclasses out.

Owns the schema of the cluster file (every key, its type, range and default), the cross-field rules
(two nodes, one home, distinct addresses, VIP not a node address), the config digest both agents compare,
and reading the shared authentication key(s). Every problem becomes a `ConfigError` whose message is one
line, ``<file>:<line>: <field.path>: <problem>``, so an operator can jump straight to it.

Touches only the files it is asked to read: no sockets, no clock, no interface lookups. Ranges are checked
here, when a file is loaded; dataclasses built in code (tests, the lab) are trusted as given.

One module per job, every name importable from here as before:

- `schema`: the dataclasses, their defaults, `ConfigError` (no YAML);
- `keys`: the shared key files, and the careful read of a regular file;
- `yamllines`: YAML to dicts and lists that remember their lines; PyYAML's errors as `ConfigError`;
- `sections`: one mapping checked key by key (`Section`), with the loader's error wording;
- `loader`: each section read into the schema, the cross-field rules, the digest, `load_config`.

The CLI's fast commands import none of this: `failover.agentsocket` reads the one fact they need.
"""

from __future__ import annotations

from failover.config.keys import KEY_MIN_BYTES, keys_for, load_key
from failover.config.loader import config_from, load_config, read_config
from failover.config.schema import (
    HOOK_EVENTS,
    AnnounceConfig,
    AuthConfig,
    ClusterConfig,
    ConfigError,
    ConfirmConfig,
    HealthConfig,
    HeartbeatConfig,
    HooksConfig,
    IPAddress,
    MetricsConfig,
    NodeConfig,
    SwapConfig,
    TakeoverConfig,
    VipConfig,
)
from failover.config.sections import Section as _Section  # tests/test_reference.py records its checks

__all__ = [
    "HOOK_EVENTS",
    "KEY_MIN_BYTES",
    "AnnounceConfig",
    "AuthConfig",
    "ClusterConfig",
    "ConfigError",
    "ConfirmConfig",
    "HealthConfig",
    "HeartbeatConfig",
    "HooksConfig",
    "IPAddress",
    "MetricsConfig",
    "NodeConfig",
    "SwapConfig",
    "TakeoverConfig",
    "VipConfig",
    "_Section",
    "config_from",
    "keys_for",
    "load_config",
    "load_key",
    "read_config",
]
