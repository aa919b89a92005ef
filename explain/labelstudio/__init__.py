"""Label Studio's side of the pre-labels: what it sends and accepts (Label Studio 1.23).

- ``results``: prediction result dicts (brush, polygon, rectangle, choices) from regions, and
  annotation results back to masks;
- ``rle``: the brush RLE codec;
- ``configs``: labelling configs generated from a model's classes, and parsed into the plan of
  which controls to answer with which labels;
- ``fetch``: a task's image bytes, from disk, from Label Studio with its token (only its file
  routes) or from allowed hosts.

Imports nothing of the project but ``explain.regions`` (region geometry).
"""
