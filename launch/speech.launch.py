"""Spoken commands end to end: the coupalign segmentation node and the coupalign_speech node, both
configured and activated (autostart).

    ros2 launch coupalign_ros speech.launch.py checkpoint:=/path/model.safetensors
    ros2 launch coupalign_ros speech.launch.py checkpoint:=/path/model.safetensors microphone:=default
    ros2 launch coupalign_ros speech.launch.py checkpoint:=... audio_topic:=/robot/audio/audio_stamped

The segmentation node is coupalign.launch.py with its arguments (params_file, image_topic, device,
...); the speech node listens on audio_topic (audio_common_msgs/AudioDataStamped) or, with
microphone set, on a local microphone, and publishes each recognised command on the segmentation
node's command topic. Its grammar's words are vetoed by the same checkpoint's grounding vocabulary.
"""

from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    IncludeLaunchDescription,
    OpaqueFunction,
    RegisterEventHandler,
)
from launch.events import matches_action
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription

SPEECH_ARGUMENTS = {  # launch argument -> (speech node parameter, default)
    "audio_topic": ("audio_topic", "/audio/audio_stamped"),
    "audio_message": ("audio_message", "stamped"),
    "audio_info_topic": ("audio_info_topic", "/audio/audio_info"),
    "microphone": ("microphone", ""),
    "sample_rate": ("sample_rate", "16000"),
    "speech_mode": ("mode", "grammar"),
    "min_confidence": ("min_confidence", "0.0"),
}


def _speech_node(context):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    parameters = {param: get(arg) for arg, (param, _) in SPEECH_ARGUMENTS.items()}
    parameters["sample_rate"] = int(parameters["sample_rate"])
    parameters["min_confidence"] = float(parameters["min_confidence"])
    parameters["command_topic"] = get("command_topic") or "/coupalign/command"
    parameters["checkpoint"] = get("checkpoint")
    node = LifecycleNode(package="coupalign_ros", executable="coupalign_speech", name="coupalign_speech",
                         namespace=get("namespace"), parameters=[parameters], output="screen", emulate_tty=True)
    activate = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, goal_state="inactive", handle_once=True,
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                              transition_id=Transition.TRANSITION_ACTIVATE))]))
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=Transition.TRANSITION_CONFIGURE))
    return [node, activate, configure]


def generate_launch_description() -> LaunchDescription:
    segmentation = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("coupalign_ros"), "launch",
                                                            "coupalign.launch.py"])),
        launch_arguments={"checkpoint": LaunchConfiguration("checkpoint"),
                          "command_topic": LaunchConfiguration("command_topic"),
                          "namespace": LaunchConfiguration("namespace")}.items())
    args = [
        DeclareLaunchArgument("checkpoint", description="the segmentation model (its vocabulary vetoes words)"),
        DeclareLaunchArgument("command_topic", default_value="", description="'' = the segmentation node's"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of both nodes"),
    ] + [DeclareLaunchArgument(arg, default_value=default, description=f"speech node parameter {param}")
         for arg, (param, default) in SPEECH_ARGUMENTS.items()]
    return LaunchDescription([*args, segmentation, OpaqueFunction(function=_speech_node)])
