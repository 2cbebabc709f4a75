"""The ROS packaging, checked without ROS: the manifest, colcon discovery of a plain clone, what the
CMake build installs, the pip install, and the interface files.

- package.xml parses and validates with catkin_pkg (what rosdep and colcon read): one ament_cmake
  package, coupalign_ros, that generates the interfaces and installs the Python packages;
- colcon (colcon-core + colcon-ros from PyPI) and rosdep's crawler find it in a plain clone in
  src/ with no symlink or extra path, and there is no other (nested) package;
- CMakeLists.txt generates every .msg/.srv in msg/ and srv/ and installs the Python packages, the
  console scripts, launch/ and config/ (the CMake build itself needs ROS: tests/ros builds a plain
  clone with colcon and runs `ros2 launch` from it);
- `pip install .` (setup.py, no ROS) installs coupalign_core and coupalign_ros with the console
  scripts and the interface text the bag tools read;
- the .msg/.srv files go through rosidl's own parser (Debian's python3-rosidl, run by the system
  python, as rosidl_generate_interfaces does: .msg -> .idl -> IDL parser); rosbags loads them in
  tests/test_ros_bags.py, and a result bag written under the interfaces' earlier package name
  (coupalign_interfaces) still reads.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
CONSOLE_SCRIPTS = ("coupalign", "coupalign_node", "coupalign_command", "coupalign_speech")


# ---- manifest -----------------------------------------------------------------------------------
def test_package_manifest_parses_and_validates():
    from catkin_pkg.package import parse_package

    package = parse_package(ROOT)
    package.validate()
    assert (package.name, package.package_format, package.get_build_type()) == ("coupalign_ros", 3, "ament_cmake")
    assert {d.name for d in package.buildtool_depends} == {"ament_cmake", "ament_cmake_python",
                                                          "rosidl_default_generators"}
    assert {d.name for d in package.build_depends} >= {"std_msgs", "sensor_msgs"}
    exec_deps = {d.name for d in package.exec_depends}
    for dep in ("rosidl_default_runtime", "rclpy", "lifecycle_msgs", "sensor_msgs", "std_msgs", "geometry_msgs",
                "diagnostic_msgs", "diagnostic_updater", "cv_bridge", "launch", "launch_ros", "python3-numpy",
                "python3-opencv", "python3-yaml"):
        assert dep in exec_deps, dep
    assert "coupalign_interfaces" not in exec_deps  # the interfaces are this package's own
    assert {d.name for d in package.test_depends} >= {"ament_cmake_pytest", "launch_pytest", "launch_testing"}
    assert [g.name for g in package.member_of_groups] == ["rosidl_interface_packages"]


def test_there_is_one_package_and_no_nested_one():
    manifests = [p.relative_to(ROOT) for p in ROOT.rglob("package.xml")
                 if not {"build", "install", "log", ".venv"} & set(p.relative_to(ROOT).parts)]
    assert manifests == [Path("package.xml")]


# ---- colcon and rosdep on a plain clone ---------------------------------------------------------
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


def test_a_plain_clone_is_a_workspace(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    expected = {"coupalign_ros": "ros.ament_cmake"}
    assert _discover("--base-paths", "src") == expected
    assert _discover() == expected  # a bare `colcon build` in the workspace

    from catkin_pkg.packages import find_packages  # what `rosdep install --from-paths src` crawls

    assert [p.name for p in find_packages("src").values()] == ["coupalign_ros"]


# ---- what the CMake build installs (static: building needs ROS, tests/ros does it) ---------------
def _cmake() -> str:
    text = (ROOT / "CMakeLists.txt").read_text()
    return re.sub(r"#.*", "", text)  # comments out


def test_cmake_generates_every_interface_and_installs_everything():
    cmake = _cmake()
    assert "project(coupalign_ros)" in cmake
    generated = re.search(r"rosidl_generate_interfaces\(\$\{PROJECT_NAME\}(.*?)\)", cmake, re.S)
    assert generated, "rosidl_generate_interfaces(${PROJECT_NAME} ...) is missing"
    listed = set(re.findall(r'"([^"]+\.(?:msg|srv))"', generated.group(1)))
    on_disk = {p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("msg/*.msg"), *ROOT.glob("srv/*.srv")]}
    assert listed == on_disk == {"msg/ReferringSegmentation.msg", "srv/Segment.srv"}
    assert "DEPENDENCIES std_msgs sensor_msgs" in generated.group(1)
    assert re.search(r"ament_python_install_package\(coupalign_core\s+SETUP_CFG setup\.cfg\s+"
                     r"SCRIPTS_DESTINATION lib/\$\{PROJECT_NAME\}", cmake)
    assert re.search(r"install\(DIRECTORY coupalign_ros/\s+DESTINATION \$\{PYTHON_INSTALL_DIR\}/\$\{PROJECT_NAME\}",
                     cmake)
    assert "install(DIRECTORY launch config DESTINATION share/${PROJECT_NAME})" in cmake
    assert re.search(r"ament_add_pytest_test\(\w+ tests/ros", cmake)
    assert cmake.index("rosidl_generate_interfaces") < cmake.index("install(DIRECTORY coupalign_ros/"), \
        "the node's __init__.py must be installed after rosidl's"
    assert cmake.rstrip().endswith("ament_package()")


def test_console_scripts_are_one_list_for_pip_and_colcon():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in config["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    scripts = dict(line.split(" = ") for line in lines)
    assert tuple(scripts) == CONSOLE_SCRIPTS
    import importlib

    for name, target in scripts.items():
        module, function = target.split(":")
        if module in ("coupalign_ros.node", "coupalign_ros.speech_node"):
            continue  # imports rclpy at module level: tests/ros runs it
        assert callable(getattr(importlib.import_module(module), function)), name
    setup_call = next(n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
                      if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    assert "entry_points" not in {k.arg for k in setup_call.keywords}  # setup.cfg's list is the only one


# ---- pip install (no ROS) -----------------------------------------------------------------------
def test_pip_installs_the_python_packages_scripts_and_interface_text(tmp_path):
    source = tmp_path / "source"  # a copy: pip builds in the tree it is given
    source.mkdir()
    for name in ("setup.py", "setup.cfg", "coupalign_core", "coupalign_ros", "msg", "srv"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (ROOT / name).is_dir() else {}))
    prefix = tmp_path / "prefix"
    # "--ignore-installed": without it pip uninstalls the environment's own install of the same
    # distribution (an editable one included) before installing into the prefix.
    before = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze"], capture_output=True,
                            text=True, timeout=120).stdout.lower()
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--ignore-installed", "--prefix", str(prefix), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    site = next(prefix.glob("lib/python3*/site-packages"))
    for script in CONSOLE_SCRIPTS:
        assert os.access(prefix / "bin" / script, os.X_OK), script
    share = prefix / "share" / "coupalign_ros"
    assert (share / "msg" / "ReferringSegmentation.msg").is_file() and (share / "srv" / "Segment.srv").is_file()
    # the installed (not the source) bag tools find the interface text of the install
    probe = ("import coupalign_core.bags.interfaces as b, coupalign_ros.params as p;"
             "print(b.__file__); print(len(b.interface_text('srv/Segment.srv'))); print(p.__file__)")
    env = {k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    bags_file, size, params_file = out.stdout.split()
    assert bags_file.startswith(str(site)) and params_file.startswith(str(site)) and int(size) > 100
    # the install into a prefix left this environment's own packages (the project's editable install) alone
    after = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze"], capture_output=True,
                           text=True, timeout=120).stdout.lower()
    assert after == before


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
    for needed in ("checkpoint", "backend", "device", "precision", "image_topic", "command_topic",
                   "image_reliability", "image_transport"):
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
msg = parse_message_string("coupalign_ros", "ReferringSegmentation",
                           (pkg / "msg/ReferringSegmentation.msg").read_text())
print("msg", " ".join(f"{f.type}:{f.name}" for f in msg.fields))
srv = parse_service_string("coupalign_ros", "Segment", (pkg / "srv/Segment.srv").read_text())
print("req", " ".join(f"{f.type}:{f.name}" for f in srv.request.fields))
print("resp", " ".join(f"{f.type}:{f.name}" for f in srv.response.fields))
out = pathlib.Path(tempfile.mkdtemp())
convert_msg_to_idl(pkg, "coupalign_ros", pathlib.Path("msg/ReferringSegmentation.msg"), out / "msg")
convert_srv_to_idl(pkg, "coupalign_ros", pathlib.Path("srv/Segment.srv"), out / "srv")
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
    done = subprocess.run([SYSTEM_PYTHON, "-c", ROSIDL_PROBE, str(ROOT)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines["msg"] == ("std_msgs/Header:header string:command uint32:command_id bool:found float32:score "
                            "sensor_msgs/RegionOfInterest:bbox sensor_msgs/Image:mask float32:latency_ms")
    assert lines["req"] == "string:text sensor_msgs/Image:image"
    assert lines["resp"] == "bool:success string:message coupalign_ros/ReferringSegmentation:result"
    assert lines["idl"] == "1 1"


def test_result_bags_from_before_the_interfaces_moved_still_read(tmp_path):
    """Bags written while the interfaces were the coupalign_interfaces package hold
    coupalign_interfaces/msg/ReferringSegmentation: the bag tools register that name too."""
    import numpy as np
    from rosbags.rosbag2 import Writer

    from coupalign_core import bags
    from coupalign_core.bags.layout import LEGACY_RESULT_TYPES
    from coupalign_core.bags.reader import BagReader
    from coupalign_core.runtime.conversions import mask_to_mono8, mono8_to_mask

    legacy = "coupalign_interfaces/msg/ReferringSegmentation"
    assert legacy in LEGACY_RESULT_TYPES and bags.RESULT_TYPE == "coupalign_ros/msg/ReferringSegmentation"
    ts = bags.make_typestore("jazzy")
    header = bags.make_header(ts, 7 * 10**9, "cam")
    ROI = ts.types["sensor_msgs/msg/RegionOfInterest"]
    mask = bags.image_message(ts, mask_to_mono8(np.eye(4, dtype=bool)), header)
    old = ts.types[legacy](header, "the cup", 3, True, 0.75, ROI(1, 2, 3, 4, False), mask, 12.5)
    path = tmp_path / "old-results"
    with Writer(path, version=8) as writer:
        connection = writer.add_connection("/coupalign/result", legacy, typestore=ts)
        writer.write(connection, 7 * 10**9, ts.serialize_cdr(old, legacy))
    with BagReader(path) as reader:
        (message,) = list(reader.messages(["/coupalign/result"]))
        back = reader.decode(message)
    assert message.msgtype == legacy
    assert (back.command, back.command_id, back.found, back.latency_ms) == ("the cup", 3, True, 12.5)
    assert (mono8_to_mask(back.mask) == np.eye(4, dtype=bool)).all()
