"""The ROS 2 side of CoupAlign: the rclpy node, its parameters and the command tool.

In a built workspace this Python package also holds the interfaces rosidl generated from msg/ and
srv/ (``coupalign_ros.msg.ReferringSegmentation``, ``coupalign_ros.srv.Segment``), installed beside
these modules. ``extend_path`` joins the two when a source checkout comes first on ``sys.path``
(pytest run from the repository), so the checkout's modules still find the installed messages.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
