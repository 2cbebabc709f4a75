"""ROS 2 bags without ROS (through ``rosbags``): record refer-layout splits, replay a bag through
the node's pipeline and score it."""
