"""Labelling configs: generated from a model's classes, and parsed into which tags to answer and
which label each model class gets."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from label_studio_sdk.label_interface import LabelInterface

from explain.labelstudio.results import Controls

REGION_TAGS = {"BrushLabels": "brush", "PolygonLabels": "polygon", "RectangleLabels": "rectangle"}
# Classes that mean "nothing to outline": by default they get no regions (LABEL_MAP can override).
NEGATIVE_CLASSES = {"normal", "clear", "healthy", "negative", "no finding", "no_finding"}


DEFAULT_REGION_LABEL = "Opacity"  # what an annotator outlines; the diagnoses stay the Choices
SMART_TOOLS = (("KeyPointLabels", "click"), ("RectangleLabels", "box"))  # (tag, control name) of interactive prompts
REGION_KINDS = {"brush": ("BrushLabels", "mask"), "polygon": ("PolygonLabels", "outline")}  # kind -> (tag, control name)


def labeling_config(class_names, region_labels=(DEFAULT_REGION_LABEL,), region_kinds=("brush",), interactive: bool = False) -> str:
    """A labelling config for a classifier: the classes as Choices, the regions under
    ``region_labels`` (default one lesion label, "Opacity", which every class not in
    ``NEGATIVE_CLASSES`` maps to) as one control per kind of ``region_kinds`` ("brush" and / or
    "polygon"; default brush only, so that a wrong region costs one deletion, not two). ``interactive``
    adds the smart tools of interactive pre-annotation, a ``KeyPointLabels`` ("click") and a
    ``RectangleLabels`` ("box") with the region labels, shown only in auto-annotation mode; it
    needs the brush kind (the answers are brush masks)."""
    region_labels = list(region_labels or ())
    if not region_labels:
        raise ValueError("no region labels: give at least one")
    kinds = list(dict.fromkeys(region_kinds or ()))
    if not kinds or any(k not in REGION_KINDS for k in kinds):
        raise ValueError(f"region kinds must be some of {', '.join(REGION_KINDS)}, got {', '.join(map(str, kinds)) or 'none'}")
    if interactive and "brush" not in kinds:
        raise ValueError("interactive answers are brush masks: the region kinds must include brush")
    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in class_names)
    labels = "".join(f"<Label value={quoteattr(label)}/>" for label in region_labels)
    controls = "".join(
        f'  <{tag} name="{name}" toName="image">{labels}</{tag}>\n' for tag, name in (REGION_KINDS[k] for k in kinds)
    )
    if interactive:
        controls += "".join(
            f'  <{tag} name="{name}" toName="image" smart="true" smartOnly="true">{labels}</{tag}>\n'
            for tag, name in SMART_TOOLS
        )
    return (
        '<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
        f'  <Choices name="diagnosis" toName="image" choice="single" showInline="true">{choices}</Choices>\n'
        f"{controls}</View>"
    )


@dataclass(frozen=True)
class LabelingPlan:
    """The Image tag (its name and task data key) and one ``Controls`` per supported control tag."""

    image: str
    data_key: str
    controls: tuple[Controls, ...]


def _match(name: str, values: list[str], label_map: dict[str, str]) -> str | None:
    wanted = label_map.get(name)
    if wanted is not None:
        return wanted if wanted in values else None
    lowered = {v.lower(): v for v in values}
    return lowered.get(name.lower())


def _image(config: str):
    try:
        interface = LabelInterface(config)
    except Exception:  # the SDK raises bare parser errors
        raise ValueError("label_config is not a valid labelling config") from None
    images = [o for o in interface.objects if o.tag == "Image"]
    if not images:
        raise ValueError("label_config has no <Image> object")
    return interface, images[0]


def image_data_key(config: str) -> str:
    """The task data key holding the image (``$image`` -> ``image``)."""
    return _image(config)[1].value.lstrip("$")


def task_image_uri(data: dict, config: str | None) -> str:
    """The image URI in a task's data: under the config's Image key, else its first string value."""
    key = None
    if config:
        try:
            key = image_data_key(config)
        except ValueError:
            key = None
    uri = data.get(key) if key else next((v for v in data.values() if isinstance(v, str)), None)
    return uri if isinstance(uri, str) else ""


def _is_smart(attributes) -> bool:
    """A tag's attributes mark a smart tool (``smart="true"``, any case): the annotator's prompt
    for interactive answers, never a pre-label and never a drawn region."""
    return any(k.lower() == "smart" and str(v).lower() == "true" for k, v in (attributes or {}).items())


def _smart(control) -> bool:
    return _is_smart(getattr(control, "attr", None))


def _tags(config: str | None) -> list:
    """Every element of a config; [] for no config or one that does not parse (the readers
    below then know nothing of it)."""
    if not config:
        return []
    try:
        return list(ET.fromstring(config).iter())
    except ET.ParseError:
        return []


def smart_controls(config: str | None) -> frozenset[str]:
    """Names of the config's smart controls (``smart="true"``: the "click" keypoints and "box"
    rectangles of ``labeling_config(interactive=True)``). Label Studio saves what an annotator
    placed with them in the annotation, beside what they drew; those are prompts for interactive
    answers, not lesions, and every reader of regions leaves them out (``results.drawn_results``).
    Empty for no config or one that does not parse: then nothing is known to be smart and every
    region counts."""
    return frozenset(tag.get("name") for tag in _tags(config) if tag.get("name") and _is_smart(tag.attrib))


def region_labels(config: str | None) -> set[str]:
    """Label values of the config's BrushLabels / PolygonLabels / RectangleLabels controls that
    are not smart (the labels a drawn region can have); empty for no config or one that does not parse."""
    return {
        label.get("value")
        for tag in _tags(config)
        if tag.tag in REGION_TAGS and not _is_smart(tag.attrib)
        for label in tag.iter("Label")
        if label.get("value")
    }


def plan_for(config: str, class_names, label_map: dict[str, str] | None = None) -> LabelingPlan:
    """Parse a Label Studio labelling config (XML) into a ``LabelingPlan`` for these model classes.

    A class maps to the label of the same name (any case) or to ``label_map[class]``; a region
    control with a single label (e.g. "Opacity") takes every class not in ``NEGATIVE_CLASSES``.
    Smart tools (``smart="true"``, the annotator's clicks and boxes) get no pre-labels.
    Raises ValueError naming the problem when the config is not XML, has no Image, or has no
    BrushLabels / PolygonLabels / RectangleLabels / Choices control on it.
    """
    label_map = label_map or {}
    interface, image = _image(config)
    controls = []
    for control in interface.controls:
        if image.name not in control.to_name or _smart(control):
            continue
        values = list(control.labels or [])
        if control.tag == "Choices":
            mapping = {c: v for c in class_names if (v := _match(c, values, label_map))}
            if mapping:
                controls.append(Controls(to_name=image.name, brush=None, polygon=None, choices=control.name, labels=mapping))
        elif control.tag in REGION_TAGS:
            mapping = {}
            for c in class_names:
                label = _match(c, values, label_map)
                if label is None and len(values) == 1 and c.lower() not in NEGATIVE_CLASSES and c not in label_map:
                    label = values[0]
                if label:
                    mapping[c] = label
            if mapping:
                kind = REGION_TAGS[control.tag]
                names = {"brush": None, "polygon": None, "rectangle": None, kind: control.name}
                controls.append(Controls(to_name=image.name, choices=None, labels=mapping, **names))
    if not controls:
        raise ValueError(
            "label_config has no BrushLabels, PolygonLabels, RectangleLabels or Choices control on the image "
            f"whose labels match the model's classes {list(class_names)}"
        )
    return LabelingPlan(image=image.name, data_key=image.value.lstrip("$"), controls=tuple(controls))


@dataclass(frozen=True)
class ClickTargets:
    """Where an interactive answer goes: the first BrushLabels control on the plan's image (its
    name and labels), the first PolygonLabels control there (None without one; the answer's
    polygon is left out where its labels lack the answer's label), and ``mapping``:
    model class -> brush label, as the plan maps them (empty when no class maps)."""

    to_name: str
    brush: str
    brush_labels: tuple[str, ...]
    polygon: str | None
    polygon_labels: tuple[str, ...]
    mapping: dict[str, str]

    def wanted(self, clicked: str | None) -> tuple[str, ...] | None:
        """The model classes whose map a click labelled ``clicked`` follows: those mapped to that
        brush label, else every mapped class; None (the model's choice) when none is mapped."""
        chosen = tuple(c for c, label in self.mapping.items() if label == clicked)
        return chosen or tuple(self.mapping) or None

    def label(self, clicked: str | None, evidence_class: str | None) -> str:
        """The answer's brush label: ``clicked`` when it names one, else the label of the class
        whose map was followed, else the first label that is not a negative class's name."""
        if clicked in self.brush_labels:
            return clicked
        if evidence_class in self.mapping:
            return self.mapping[evidence_class]
        lesions = [v for v in self.brush_labels if v.lower() not in NEGATIVE_CLASSES]
        return (lesions or list(self.brush_labels))[0]


def click_targets(config: str, plan: LabelingPlan) -> ClickTargets:
    """The ``ClickTargets`` of a config (``plan`` = ``plan_for(config, ...)``); ValueError when the
    config has no BrushLabels control with labels on the image (interactive answers are masks)."""
    interface, image = _image(config)
    on_image = [c for c in interface.controls if image.name in c.to_name and not _smart(c)]
    brush = next((c for c in on_image if c.tag == "BrushLabels" and c.labels), None)
    if brush is None:
        raise ValueError("label_config has no BrushLabels control with labels on the image: interactive answers are brush masks")
    polygon = next((c for c in on_image if c.tag == "PolygonLabels" and c.labels), None)
    mapping = next((dict(c.labels) for c in plan.controls if c.brush == brush.name and c.labels), {})
    return ClickTargets(
        image.name, brush.name, tuple(brush.labels), polygon.name if polygon else None,
        tuple(polygon.labels) if polygon else (), mapping,
    )
