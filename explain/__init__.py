"""From a classifier (and a segmenter) to pre-labels: the Grad-CAM engine (``gradcam``,
``methods``, ``layers``), image reading (``images``), heatmap -> regions -> polygons / boxes
(``regions``), the anatomy prior's region of interest (``anatomy``), the pre-label sources and
pipeline (``sources``, ``prelabel``), pictures (``overlay``), Label Studio's formats, configs and
image fetching (``labelstudio/``) and the pre-label service both faces use (``service``: tasks in,
answers out).

Imports nothing else of this project.
"""
