"""The ROS packaging, checked without ROS: manifests, colcon discovery and build, interface files.

- both package.xml files parse and validate with catkin_pkg (what rosdep and colcon read);
- colcon (colcon-core + colcon-ros from PyPI) finds coupalign_ros at the repository root and
  coupalign_interfaces in msg/ only when msg/ is reachable on its own (docs/ros.md: a symlink in
  src/, or naming the path), and builds the ament_python package into an install space where
  `ros2 launch` / `ros2 run` look (launch files, config, ament index marker, lib/<pkg> scripts);
- the .msg/.srv files go through rosidl's own parser (Debian's python3-rosidl, run by the system
  python, as rosidl_generate_interfaces does: .msg -> .idl -> IDL parser); rosbags loads them in
  tests/test_ros_bags.py.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"


# ---- manifests ----------------------------------------------------------------------------------
def test_package_manifests_parse_and_validate():
    from catkin_pkg.package import parse_package

    ros = parse_package(ROOT)
    ros.validate()
    assert (ros.name, ros.package_format, ros.get_build_type()) == ("coupalign_ros", 3, "ament_python")
    exec_deps = {d.name for d in ros.exec_depends}
    for dep in ("rclpy", "lifecycle_msgs", "sensor_msgs", "std_msgs", "geometry_msgs", "diagnostic_msgs",
                "diagnostic_updater", "coupalign_interfaces", "launch", "launch_ros", "python3-numpy",
                "python3-opencv", "python3-yaml"):
        assert dep in exec_deps, dep
    assert "cv_bridge" not in exec_deps  # conversions are our own (coupalign_ros/conversions.py)

    interfaces = parse_package(ROOT / "msg")
    interfaces.validate()
    assert (interfaces.name, interfaces.package_format, interfaces.get_build_type()) == (
        "coupalign_interfaces", 3, "ament_cmake")
    assert {d.name for d in interfaces.buildtool_depends} >= {"ament_cmake", "rosidl_default_generators"}
    assert "rosidl_default_runtime" in {d.name for d in interfaces.exec_depends}
    assert [g.name for g in interfaces.member_of_groups] == ["rosidl_interface_packages"]
    cmake = (ROOT / "msg" / "CMakeLists.txt").read_text()
    for name in ("project(coupalign_interfaces)", '"msg/ReferringSegmentation.msg"', '"srv/Segment.srv"',
                 "DEPENDENCIES std_msgs sensor_msgs"):
        assert name in cmake
    assert ros.version == interfaces.version


# ---- colcon -------------------------------------------------------------------------------------
def _discover(*argv: str) -> dict[str, str]:
    from colcon_core.package_discovery import add_package_discovery_arguments, discover_packages
    from colcon_core.package_identification import get_package_identification_extensions

    parser = argparse.ArgumentParser()
    add_package_discovery_arguments(parser)
    found = discover_packages(parser.parse_args(list(argv)), get_package_identification_extensions())
    return {d.name: d.type for d in found}


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A plain ROS workspace with this repository cloned (here: linked) as src/coupalign."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "coupalign").symlink_to(ROOT, target_is_directory=True)
    return tmp_path


def test_colcon_discovery_of_the_nested_interface_package(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    # colcon stops at a folder that is a package: msg/ inside the repository is not seen ...
    assert _discover("--base-paths", "src") == {"coupalign_ros": "ros.ament_python"}
    # ... unless named, or linked beside it (the set-up docs/ros.md gives; rosdep needs it too)
    both = {"coupalign_ros": "ros.ament_python", "coupalign_interfaces": "ros.ament_cmake"}
    assert _discover("--base-paths", "src", "src/coupalign/msg") == both
    (workspace / "src" / "coupalign_interfaces").symlink_to("coupalign/msg", target_is_directory=True)
    assert _discover("--base-paths", "src") == both
    assert _discover() == both  # a bare `colcon build` in the workspace

    from catkin_pkg.packages import find_packages  # what `rosdep install --from-paths src` crawls

    assert sorted(p.name for p in find_packages("src").values()) == ["coupalign_interfaces", "coupalign_ros"]


def test_colcon_builds_the_python_package_where_ros2_looks(workspace):
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent)) or shutil.which("colcon")
    assert colcon, "colcon-core is in requirements.txt"
    install = workspace / "install"
    cmd = [colcon, "--log-base", str(workspace / "log"), "build", "--base-paths", "src/coupalign",
           "--build-base", str(workspace / "build"), "--install-base", str(install)]
    done = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Finished <<< coupalign_ros" in done.stdout + done.stderr

    prefix = install / "coupalign_ros"
    # ament index marker: how get_package_share_directory('coupalign_ros') finds share/coupalign_ros
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "coupalign_ros").is_file()
    share = prefix / "share" / "coupalign_ros"
    for rel in ("package.xml", "launch/coupalign.launch.py", "launch/bag_replay.launch.py",
                "config/coupalign.yaml", "interfaces/msg/ReferringSegmentation.msg", "interfaces/srv/Segment.srv"):
        assert (share / rel).is_file(), rel
    # ros2 run looks for executables in <prefix>/lib/<package>
    for script in ("coupalign_node", "coupalign_command", "coupalign"):
        path = prefix / "lib" / "coupalign_ros" / script
        assert path.is_file() and os.access(path, os.X_OK), script
    node_script = (prefix / "lib" / "coupalign_ros" / "coupalign_node").read_text()
    assert "coupalign_ros.node" in node_script or "coupalign_node" in node_script

    # the installed (not the source) package imports and finds its interface files
    site = next(prefix.glob("lib/python3*/site-packages"))
    probe = ("import coupalign_core.bags.interfaces as b, coupalign_ros.params as p;"
             "print(b.__file__); print(len(b.interface_text('msg/ReferringSegmentation.msg')));"
             "print(p.load_yaml_defaults(%r) == p.defaults())" % str(share / "config" / "coupalign.yaml"))
    env = {k: v for k, v in os.environ.items() if k != "AMENT_PREFIX_PATH"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", probe], cwd=workspace, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    file_line, size_line, yaml_ok = out.stdout.split()
    assert file_line.startswith(str(site)) and int(size_line) > 100 and yaml_ok == "True"
    assert all(p.name != "coupalign_ros.egg-info" for p in ROOT.glob("*.egg-info")), \
        "the build must not write into the source tree"


# ---- launch files (static: launch itself needs ROS; tests/ros/ runs them) -----------------------
def _launch_module(name: str) -> ast.Module:
    return ast.parse((ROOT / "launch" / name).read_text(), filename=name)


def test_launch_files_declare_the_arguments_and_never_eval():
    from coupalign_ros.params import SPECS

    for name in ("coupalign.launch.py", "bag_replay.launch.py"):
        tree = _launch_module(name)
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not calls & {"eval", "exec", "__import__"}, name
        text = (ROOT / "launch" / name).read_text()
        for forbidden in ("pip ", "apt-get", "apt ", "rosdep"):
            assert forbidden not in text, (name, forbidden)
    tree = _launch_module("coupalign.launch.py")
    declared = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "DeclareLaunchArgument" and isinstance(n.args[0], ast.Constant)}
    node_args = next(ast.literal_eval(n.value) for n in tree.body
                     if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "NODE_ARGUMENTS")
    assert set(node_args) <= set(SPECS)
    for needed in ("checkpoint", "backend", "device", "precision", "image_topic", "command_topic"):
        assert needed in node_args
    assert {"params_file", "namespace", "node_name", "autostart", "use_sim_time"} <= declared


# ---- rosidl --------------------------------------------------------------------------------------
ROSIDL_PROBE = r"""
import pathlib, sys, tempfile
from rosidl_adapter.parser import parse_message_string, parse_service_string
from rosidl_adapter.msg import convert_msg_to_idl
from rosidl_adapter.srv import convert_srv_to_idl
from rosidl_parser.definition import IdlLocator, Message, Service
from rosidl_parser.parser import parse_idl_file

pkg = pathlib.Path(sys.argv[1])
msg = parse_message_string("coupalign_interfaces", "ReferringSegmentation",
                           (pkg / "msg/ReferringSegmentation.msg").read_text())
print("msg", " ".join(f"{f.type}:{f.name}" for f in msg.fields))
srv = parse_service_string("coupalign_interfaces", "Segment", (pkg / "srv/Segment.srv").read_text())
print("req", " ".join(f"{f.type}:{f.name}" for f in srv.request.fields))
print("resp", " ".join(f"{f.type}:{f.name}" for f in srv.response.fields))
out = pathlib.Path(tempfile.mkdtemp())
convert_msg_to_idl(pkg, "coupalign_interfaces", pathlib.Path("msg/ReferringSegmentation.msg"), out / "msg")
convert_srv_to_idl(pkg, "coupalign_interfaces", pathlib.Path("srv/Segment.srv"), out / "srv")
m = parse_idl_file(IdlLocator(out, pathlib.Path("msg/ReferringSegmentation.idl")))
s = parse_idl_file(IdlLocator(out, pathlib.Path("srv/Segment.idl")))
print("idl", len(m.content.get_elements_of_type(Message)), len(s.content.get_elements_of_type(Service)))
"""


def _system_rosidl() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import rosidl_adapter.parser, rosidl_parser.parser"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


@pytest.mark.skipif(not _system_rosidl(),
                    reason="Debian's python3-rosidl is not installed (scripts/setup.sh installs it as root)")
def test_interfaces_parse_with_rosidl():
    done = subprocess.run([SYSTEM_PYTHON, "-c", ROSIDL_PROBE, str(ROOT / "msg")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines["msg"] == ("std_msgs/Header:header string:command uint32:command_id bool:found float32:score "
                            "sensor_msgs/RegionOfInterest:bbox sensor_msgs/Image:mask float32:latency_ms")
    assert lines["req"] == "string:text sensor_msgs/Image:image"
    assert lines["resp"] == "bool:success string:message coupalign_interfaces/ReferringSegmentation:result"
    assert lines["idl"] == "1 1"
