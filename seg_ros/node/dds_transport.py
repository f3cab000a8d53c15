"""Fast DDS transport defaults that ``segment_node`` applies to itself before ``rclpy.init``.

Fast DDS (``rmw_fastrtps``, ROS 2 Jazzy's default middleware) hands a message to another process
on the same machine through a shared-memory segment owned by the *publishing* participant: 512
KiB unless configured. The node publishes up to three images per frame back to back (labels,
colour mask, overlay: 1.2 MB at 360x480), in 64 KB fragments. Fragments that find the segment
full are dropped; a reliable writer resends them only after its next heartbeat (every 3 s by
default), or never when the next frame has replaced the sample (keep last 1). Subscribers saw
outputs seconds late or not at all while the node itself was fast (issue 18, defect 2).

So, unless the user configured Fast DDS themselves, the node points Fast DDS at the shipped
profile ``config/fastdds_large_images.xml`` (32 MiB segment, 100 ms heartbeat). Only the node's
own process is affected; the publisher's segment is what counts for the node's outputs, so
subscribers need no setting of their own (docs/node.md, "DDS transport").
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from ..resources import share_path

PROFILE = ("config", "fastdds_large_images.xml")
# Fast DDS 2.x (Jazzy) reads the first, Fast DDS 3.x (Kilted and later) the second
PROFILE_VARS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
USER_VARS = PROFILE_VARS + ("FASTDDS_BUILTIN_TRANSPORTS",)
CWD_PROFILE = "DEFAULT_FASTRTPS_PROFILES.xml"  # loaded by Fast DDS from the working directory


@dataclasses.dataclass(frozen=True)
class TransportDefaults:
    """What the node sets in its environment (nothing when it keeps the user's choice), and why."""

    env: dict[str, str]
    note: str
    warn: bool = False


def fastdds_in_use(env: Mapping[str, str]) -> bool:
    """rmw_fastrtps_cpp / _dynamic_cpp, or no RMW_IMPLEMENTATION (Fast DDS is Jazzy's default)."""
    rmw = env.get("RMW_IMPLEMENTATION", "").strip()
    return not rmw or rmw.startswith("rmw_fastrtps")


def user_configuration(env: Mapping[str, str], cwd: Path) -> str | None:
    """Return the user's own Fast DDS transport configuration.

    Described; None when there is none.
    """
    for name in USER_VARS:
        if env.get(name, "").strip():
            return f"{name}={env[name]}"
    if env.get("SKIP_DEFAULT_XML", "") != "1" and (cwd / CWD_PROFILE).is_file():
        return f"{cwd / CWD_PROFILE}"
    return None


def transport_defaults(env: Mapping[str, str], cwd: Path, profile: Path) -> TransportDefaults:
    """Return the shipped profile for Fast DDS when the user configured none; else nothing."""
    if not fastdds_in_use(env):
        return TransportDefaults({}, f"DDS: {env['RMW_IMPLEMENTATION']} in use; no Fast DDS "
                                     f"profile applied")
    own = user_configuration(env, cwd)
    if own:
        return TransportDefaults({}, f"DDS: keeping your Fast DDS configuration ({own})")
    if not profile.is_file():
        return TransportDefaults({}, f"DDS: Fast DDS defaults (512 KiB shared memory): the "
                                     f"profile {profile} is missing, so large outputs may arrive "
                                     f"seconds late", warn=True)
    return TransportDefaults({name: str(profile) for name in PROFILE_VARS},
                             f"DDS: Fast DDS profile {profile} (32 MiB shared memory, 100 ms "
                             f"heartbeat); set FASTRTPS_DEFAULT_PROFILES_FILE or "
                             f"FASTDDS_BUILTIN_TRANSPORTS to use your own")


def apply_transport_defaults(logger_name: str = "segment_node",
                             env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the defaults in this process's environment (call before ``rclpy.init``).

    Log one line, and return the variables set.
    """
    import rclpy.logging  # works before rclpy.init; imported here so the rest is ROS-free

    env = os.environ if env is None else env
    chosen = transport_defaults(env, Path.cwd(), share_path(*PROFILE))
    env.update(chosen.env)
    logger = rclpy.logging.get_logger(logger_name)
    (logger.warning if chosen.warn else logger.info)(chosen.note)
    return chosen.env
