"""pip install -e . (coupalign_core + coupalign_ros, no ROS needed); colcon builds the ROS package with
CMakeLists.txt, which reads the same console scripts from setup.cfg's [options.entry_points]."""

from glob import glob

from setuptools import find_packages, setup

setup(
    name="coupalign_ros",
    version="0.1.0",
    description="CoupAlign referring image segmentation for robots: PyTorch core, ROS 2 node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["coupalign_core", "coupalign_core.*", "coupalign_ros", "coupalign_ros.*"]),
    data_files=[
        # the interface definitions, where rosidl installs them too (share/coupalign_ros/msg, srv):
        # coupalign_core.bags registers them with rosbags
        ("share/coupalign_ros/msg", glob("msg/*.msg")),
        ("share/coupalign_ros/srv", glob("srv/*.srv")),
    ],
    # Dependencies are pinned in requirements.txt (scripts/setup.sh installs them); ROS users get
    # rclpy and friends from rosdep (package.xml).
    install_requires=[],
    zip_safe=True,
)
