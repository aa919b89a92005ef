"""Grad-CAM heatmaps and their conversion into Label Studio pre-annotations.

Pure numpy / OpenCV / TensorFlow; imports nothing else of this project.
"""
