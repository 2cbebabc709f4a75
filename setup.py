"""pip install -e . (coupalign_core + coupalign_ros) and the ament_python setup colcon uses."""

from glob import glob

from setuptools import find_packages, setup

package_name = "coupalign_ros"

setup(
    name=package_name,
    version="0.1.0",
    description="CoupAlign referring image segmentation for robots: PyTorch core, ROS 2 node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["coupalign_core", "coupalign_core.*", "coupalign_ros", "coupalign_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.launch.py")),
        (f"share/{package_name}/config", glob("config/*.yaml")),
        # the interface definitions, for bag tools run from an install (coupalign_core.bags)
        (f"share/{package_name}/interfaces/msg", glob("msg/msg/*.msg")),
        (f"share/{package_name}/interfaces/srv", glob("msg/srv/*.srv")),
    ],
    # Dependencies are pinned in requirements.txt (scripts/setup.sh installs them); ROS users get
    # rclpy and friends from rosdep (package.xml).
    install_requires=[],
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "coupalign = coupalign_core.cli.main:main",
            # ros2 run coupalign_ros coupalign_node / coupalign_command (setup.cfg puts them in lib/coupalign_ros)
            "coupalign_node = coupalign_ros.node:main",
            "coupalign_command = coupalign_ros.command:main",
        ],
    },
)
