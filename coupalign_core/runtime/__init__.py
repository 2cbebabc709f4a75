"""The robot-facing runtime, ROS-free: image-message fields <-> arrays, the frame/command pipeline
the node and bag replay share, depth -> 3D target point, and model loading with one error type.

``coupalign_ros`` (the rclpy node) and ``coupalign_core.bags`` (rosbag2 without ROS) sit on top of it.
"""
