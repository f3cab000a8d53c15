"""Launch segment_node: `ros2 launch seg_ros segment.launch.py input_topic:=/camera/image_raw`.

Every parameter comes from the params file (default: the installed config/segment.yaml). The
launch arguments model, weights, classes, backend and device override it only when given: left
empty they keep the params file's values, so a user's own params file is never silently overridden.

`cameras:="[front, left, right]"` makes one node segment several cameras, batched: it reads
`<namespace>/<name>/image` and `<name>/camera_info` and publishes `~/<name>/labels`...
(docs/node.md, "Several cameras"); input_topic then does not apply.

`managed:=true` starts the managed variant, segment_lifecycle_node (same name, parameters and
topics). With `autostart:=true` (the default) launch configures it and, once it is inactive,
activates it through launch_ros's lifecycle events; with `autostart:=false` it stays unconfigured
until a manager (`ros2 lifecycle set`, Nav2's lifecycle manager, ...) drives it.
"""
import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

PACKAGE = "seg_ros"
EXECUTABLE = "segment_node"
MANAGED_EXECUTABLE = "segment_lifecycle_node"
PARAMS_FILE = os.path.join("config", "segment.yaml")
# launch arguments that, when non-empty, override the parameter of the same name
OVERRIDES = ("model", "weights", "classes", "backend", "device")


def _flag(context, name: str) -> bool:
    return LaunchConfiguration(name).perform(context).lower() in ("true", "1")


def _node(context, *_):
    overrides = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDES}
    parameters = {name: value for name, value in overrides.items() if value}
    parameters["use_sim_time"] = _flag(context, "use_sim_time")
    cameras = LaunchConfiguration("cameras").perform(context).strip()
    if cameras:
        parameters["cameras"] = _camera_names(cameras)
    input_topic = LaunchConfiguration("input_topic").perform(context)
    managed = _flag(context, "managed")
    node = (LifecycleNode if managed else Node)(
        package=PACKAGE,
        executable=MANAGED_EXECUTABLE if managed else EXECUTABLE,
        name="segment_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), parameters],
        # with input_transport: compressed the node subscribes to <input_topic>/compressed;
        # camera_info beside the image, as image_transport's camera subscribers expect
        remappings=[("image", input_topic), ("camera_info", _camera_info_topic(input_topic))],
        # stop cleanly, not orphaned, when launch itself is ended with SIGTERM
        # (seg_ros.node.shutdown)
        additional_env={"SEG_ROS_EXIT_WITH_PARENT": "1"},
    )
    if not managed or not _flag(context, "autostart"):
        return [node]
    return [node, *_autostart(node)]


def _camera_names(text: str) -> list[str]:
    """``[front, left]`` (YAML) or ``front,left`` -> ["front", "left"]."""
    value = yaml.safe_load(text)
    names = value if isinstance(value, list) else str(value).split(",")
    return [str(name).strip() for name in names if str(name).strip()]


def _camera_info_topic(image_topic: str) -> str:
    """Return the camera_info topic beside an image topic.

    The camera_info topic beside an image topic (image_transport's rule: the last name
    replaced), e.g. /camera/image_raw -> /camera/camera_info.
    """
    parent = image_topic.rstrip("/").rpartition("/")[0]
    return f"{parent}/camera_info" if parent or image_topic.startswith("/") else "camera_info"


def _autostart(node: LifecycleNode) -> list:
    """Configure the node now and activate it once configure has succeeded.

    Configure now; activate once configure has succeeded (configuring -> inactive only: a
    manager's later deactivate, active -> inactive, is left alone).
    """
    def change(transition_id: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                           transition_id=transition_id))

    activate_when_configured = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[change(Transition.TRANSITION_ACTIVATE)]))
    return [activate_when_configured, change(Transition.TRANSITION_CONFIGURE)]


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory(PACKAGE), PARAMS_FILE)
    keep = " (empty: the params file's value)"
    args = [
        DeclareLaunchArgument(
            "model",
            default_value="",
            description="network architecture, e.g. ddrnet23_slim" + keep,
        ),
        DeclareLaunchArgument(
            "weights",
            default_value="",
            description="weights file, 'default' (shipped) or 'none' (random, tests)" + keep,
        ),
        DeclareLaunchArgument(
            "classes",
            default_value="",
            description="classes file or name (camvid, cityscapes); needed for weights "
            "without metadata, e.g. the DDRNet authors' checkpoints" + keep,
        ),
        DeclareLaunchArgument(
            "backend",
            default_value="",
            description="inference backend: auto, torch, onnxruntime, tensorrt" + keep,
        ),
        DeclareLaunchArgument(
            "device", default_value="", description="auto, cpu, cuda or cuda:N" + keep
        ),
        DeclareLaunchArgument(
            "input_topic",
            default_value="/camera/image_raw",
            description="camera topic remapped onto the node's 'image' input",
        ),
        DeclareLaunchArgument(
            "cameras",
            default_value="",
            description="camera names, e.g. \"[front, left, right]\": one node, "
            "batched, reading <namespace>/<name>/image" + keep,
        ),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument(
            "params_file",
            default_value=default_params,
            description="parameters YAML (every parameter, with comments)",
        ),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="use /clock (bag replay)"
        ),
        DeclareLaunchArgument(
            "managed",
            default_value="false",
            description="true: the managed (lifecycle) node, segment_lifecycle_node",
        ),
        DeclareLaunchArgument(
            "autostart",
            default_value="true",
            description="with managed:=true: configure and activate it at launch; "
            "false: leave it unconfigured for a lifecycle manager",
        ),
    ]
    return LaunchDescription(args + [OpaqueFunction(function=_node)])
