"""Replay a bag (e.g. from `coupalign make-bag`) to the live coupalign node with `ros2 bag play`.

    ros2 launch coupalign_ros bag_replay.launch.py bag:=bags/synth-val checkpoint:=/path/model.pt
    ros2 bag record /coupalign/result   # in another shell, to keep the results

The node follows the bag's clock (use_sim_time, `ros2 bag play --clock`), so recorded stamps are
neither stale nor in the future. Playback starts once the node is active. Commands apply
immediately here (command_immediate): /clock ticks too coarsely to order a command recorded 20 ms
before its frame. Every other argument of coupalign.launch.py passes through.
"""

from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    IncludeLaunchDescription,
    LogInfo,
    RegisterEventHandler,
)
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.event_handlers import OnStateTransition
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PASS_THROUGH = ("checkpoint", "backend", "device", "precision", "threshold", "namespace", "node_name",
                "params_file", "publish_overlay", "log_level")


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument("bag", description="bag folder to play"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate"),
        DeclareLaunchArgument("clock_hz", default_value="100", description="/clock publication rate"),
        DeclareLaunchArgument("checkpoint", default_value="", description="model file (required)"),
        DeclareLaunchArgument("backend", default_value="", description="auto, torch, onnxruntime, tensorrt"),
        DeclareLaunchArgument("device", default_value="", description="cpu or cuda"),
        DeclareLaunchArgument("precision", default_value="", description="fp32, fp16, bf16"),
        DeclareLaunchArgument("threshold", default_value="", description="score for found"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("node_name", default_value="coupalign", description="node name"),
        DeclareLaunchArgument("publish_overlay", default_value="", description="always publish ~/overlay"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
        DeclareLaunchArgument(
            "params_file", description="ros2 parameter file with the node's defaults",
            default_value=PathJoinSubstitution([FindPackageShare("coupalign_ros"), "config", "coupalign.yaml"])),
    ]
    node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("coupalign_ros"), "launch",
                                                            "coupalign.launch.py"])),
        launch_arguments={**{name: LaunchConfiguration(name) for name in PASS_THROUGH},
                          "use_sim_time": "true", "command_immediate": "true", "autostart": "true"}.items(),
    )
    play = ExecuteProcess(
        cmd=["ros2", "bag", "play", LaunchConfiguration("bag"), "--clock", LaunchConfiguration("clock_hz"),
             "--rate", LaunchConfiguration("rate")],
        output="screen",
    )
    start_play = RegisterEventHandler(OnStateTransition(goal_state="active", handle_once=True, entities=[
        LogInfo(msg="coupalign active; playing the bag"), play]))  # once: a later re-activation plays nothing
    return LaunchDescription(args + [node, start_play])
