"""ament_python package: installs with colcon on ROS 2 and with pip elsewhere."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "seg_ros"


def share(subdir: str, pattern: str) -> tuple[str, list[str]]:
    return (f"share/{PACKAGE}/{subdir}", sorted(glob(f"{subdir}/{pattern}")))


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        share("launch", "*.launch.py"),
        share("config", "*.yaml"),
        share("config", "*.xml"),
        share("config/train", "*.yaml"),
        share("config/classes", "*.yaml"),
        share("weights", "*.pt"),
        share("demo", "*"),
    ],
    python_requires=">=3.10",
    # Loose on purpose: a vehicle's own CUDA / JetPack torch build must satisfy these as it is.
    install_requires=["numpy", "torch>=2.1", "pyyaml", "pillow", "opencv-python-headless",
                      "simplejpeg>=1.6", "rosbags>=0.10", "tqdm", "matplotlib"],
    zip_safe=True,
    maintainer="seg_ros developers",
    maintainer_email="seg-ros@example.com",
    description="Real-time semantic segmentation ROS 2 node and tools",
    license="Apache-2.0",
    extras_require={"test": ["pytest"], "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
                    "crf": ["pydensecrf2"], "ray": ["ray>=2.9"]},
    entry_points={
        "console_scripts": [
            "seg-ros = seg_ros.cli.main:main",
            "segment_node = seg_ros.node.entry:main",
            "segment_lifecycle_node = seg_ros.node.entry:lifecycle_main",
        ],
    },
)
