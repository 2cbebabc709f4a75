"""Start the coupalign lifecycle node and (autostart:=true) configure and activate it.

    ros2 launch coupalign_ros coupalign.launch.py checkpoint:=/path/model.pt
    ros2 launch coupalign_ros coupalign.launch.py checkpoint:=/path/model.pt device:=cuda \
        image_topic:=/camera/color/image_raw namespace:=robot1 autostart:=false

Defaults come from params_file (config/coupalign.yaml); a node-parameter argument left empty
keeps the file's value, a given one overrides it after being converted to the parameter's type
(true/false, numbers; never eval()). With autostart:=false the node waits unconfigured for
`ros2 lifecycle set <node> configure` / `activate`. With autostart:=true the launch configures the
node once and activates it once that first configure succeeds; every later transition is the
user's (a manual cleanup + configure is not re-activated).

Image QoS: raw frames over best effort (the default, what camera drivers publish) arrive only if
the middleware delivers a whole frame in one burst; the launch prints the choice and what it means
(docs/ros.md, "Camera sizes and image QoS"): image_reliability:=reliable or
image_transport:=compressed for large frames.
"""

from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from coupalign_ros.params import SPECS, load_yaml_defaults
from launch import LaunchDescription

# node parameters exposed as launch arguments (empty = keep params_file's value)
NODE_ARGUMENTS = (
    "checkpoint", "backend", "device", "precision", "threshold", "max_rate_hz", "max_frame_age_s",
    "image_topic", "image_transport", "image_reliability", "command_topic", "command_immediate",
    "publish_overlay", "depth_topic", "camera_info_topic",
)
# output topic remappings (empty = the node's own ~/name)
OUTPUT_REMAPS = {"result_topic": "~/result", "mask_topic": "~/mask", "overlay_topic": "~/overlay",
                 "target_point_topic": "~/target_point"}
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _typed(name: str, text: str):
    """A launch argument string -> the node parameter's type; a clear error for a bad value."""
    expected = SPECS[name].type
    try:
        if expected is bool:
            if text.lower() in TRUE:
                return True
            if text.lower() in FALSE:
                return False
            raise ValueError("expected true or false")
        return expected(text)
    except ValueError as e:
        raise RuntimeError(f"launch argument {name}:={text!r} is not a valid {expected.__name__}: {e}") from e


def _as_bool(text: str) -> bool:
    if text.lower() in TRUE + FALSE:
        return text.lower() in TRUE
    raise RuntimeError(f"expected true or false, got {text!r}")


def _launch_node(context):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {name: _typed(name, get(name)) for name in NODE_ARGUMENTS if get(name) != ""}
    overrides["use_sim_time"] = _as_bool(get("use_sim_time"))
    problems = [SPECS[n].problem(v) for n, v in overrides.items() if n in SPECS]
    problems = [p for p in problems if p]
    if problems:
        raise RuntimeError("; ".join(problems))
    remappings = [(OUTPUT_REMAPS[arg], get(arg)) for arg in OUTPUT_REMAPS if get(arg)]
    node = LifecycleNode(
        package="coupalign_ros",
        executable="coupalign_node",
        name=get("node_name"),
        namespace=get("namespace"),
        parameters=[get("params_file"), overrides],
        remappings=remappings,
        ros_arguments=["--log-level", get("log_level")],
        output="screen",
        emulate_tty=True,
    )
    actions = [LogInfo(msg=_image_qos_note(get, overrides)), node]
    if _as_bool(get("autostart")):
        # Configure now, and activate when that configure (the first one: handle_once) succeeds.
        # Later transitions are the user's: a manual cleanup + configure is not activated again.
        actions.append(RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", handle_once=True,
            entities=[OpaqueFunction(function=_activate_if_configured, args=[node])],
        )))
        actions.append(EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                                   transition_id=Transition.TRANSITION_CONFIGURE)))
    return actions


def _activate_if_configured(context, node: LifecycleNode):
    """After autostart's configure: activate if it succeeded, else leave the node to the user."""
    if context.locals.event.goal_state != "inactive":
        return [LogInfo(msg="coupalign: configure failed (see the node's log); not activating. Fix the "
                            "parameters and run `ros2 lifecycle set <node> configure` and `activate`")]
    return [
        LogInfo(msg="coupalign configured; activating (autostart, once)"),
        EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                    transition_id=Transition.TRANSITION_ACTIVATE)),
    ]


def _image_qos_note(get, overrides) -> str:
    """One line on the image QoS the node will use and the camera sizes it suits (docs/ros.md)."""
    reliability = overrides.get("image_reliability") or _file_value(get("params_file"), "image_reliability")
    transport = overrides.get("image_transport") or _file_value(get("params_file"), "image_transport")
    text = f"coupalign image QoS: {transport or 'raw'} images, {reliability or 'best_effort'}"
    if (reliability or "best_effort") == "best_effort" and (transport or "raw") == "raw":
        text += (" (raw frames over about 1 MB, i.e. larger than 640x480 rgb8, can be lost over best effort; "
                 "for larger cameras image_reliability:=reliable or image_transport:=compressed; docs/ros.md)")
    return text


def _file_value(params_file: str, name: str) -> str:
    """A parameter's value in params_file ('' when the file does not set it)."""
    try:
        values = load_yaml_defaults(params_file)
    except (OSError, ValueError):
        return ""
    return str(values.get(name, ""))


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument("params_file", description="ros2 parameter file with the node's defaults",
                              default_value=PathJoinSubstitution([FindPackageShare("coupalign_ros"), "config",
                                                                  "coupalign.yaml"])),
        DeclareLaunchArgument("node_name", default_value="coupalign", description="node name"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the node from launch"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock (bag replay)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
    ]
    for name in NODE_ARGUMENTS:
        spec = SPECS[name]
        args.append(DeclareLaunchArgument(
            name, default_value="", description=f"{spec.description} (empty: params_file's value)",
            **({"choices": ["", *spec.choices]} if spec.choices else {})))
    for arg, topic in OUTPUT_REMAPS.items():
        args.append(DeclareLaunchArgument(arg, default_value="", description=f"remap {topic} to this topic"))
    return LaunchDescription(args + [OpaqueFunction(function=_launch_node)])
