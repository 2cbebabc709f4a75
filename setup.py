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
    package_data={"coupalign_core": ["configs/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.launch.py")),
        (f"share/{package_name}/config", glob("config/*.yaml")),
    ],
    # Dependencies are pinned in requirements.txt (scripts/setup.sh installs them); ROS users get
    # rclpy and friends from rosdep (package.xml).
    install_requires=[],
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "coupalign = coupalign_core.cli.main:main",
        ],
    },
)
