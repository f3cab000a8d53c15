"""Launch segment_node: `ros2 launch seg_ros segment.launch.py input_topic:=/camera/image_raw`.

Launch arguments override the params file (default: the installed config/segment.yaml) for the
model and the device; everything else is set in the params file.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "seg_ros"
EXECUTABLE = "segment_node"
PARAMS_FILE = os.path.join("config", "segment.yaml")


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory(PACKAGE), PARAMS_FILE)
    args = [
        DeclareLaunchArgument("model", default_value="ddrnet23_slim", description="network architecture"),
        DeclareLaunchArgument("weights", default_value="default",
                              description="weights file, 'default' (shipped) or 'none' (random, tests)"),
        DeclareLaunchArgument("backend", default_value="auto",
                              description="inference backend: auto, torch, onnxruntime, tensorrt"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("input_topic", default_value="/camera/image_raw",
                              description="camera topic remapped onto the node's 'image' input"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="parameters YAML (every parameter, with comments)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
    ]
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name="segment_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model": LaunchConfiguration("model"),
                "weights": LaunchConfiguration("weights"),
                "backend": LaunchConfiguration("backend"),
                "device": LaunchConfiguration("device"),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        # with input_transport: compressed the node subscribes to <input_topic>/compressed
        remappings=[("image", LaunchConfiguration("input_topic"))],
    )
    return LaunchDescription(args + [node])
