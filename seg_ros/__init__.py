"""seg_ros: real-time semantic segmentation for ROS 2 camera streams.

The core (models, weights, classes, pipeline) imports neither rclpy nor any ROS package; the
node in ``seg_ros.node`` and the tools in ``seg_ros.cli`` are thin layers over it.
"""
__version__ = "0.1.0"
