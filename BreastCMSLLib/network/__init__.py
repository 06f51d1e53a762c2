"""The network layer: the CMSL network (3D ResNet34 + 1x1x1 head), its model file, losses, COAM and CAM."""
