"""`labeler.pending` against a real Label Studio: the tasks lacking a prediction of exactly one
model version, although Label Studio's version filter matches substrings."""
from __future__ import annotations

from labeler.pending import pending_tasks
from labeler.workspace import Workspace

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="finding" toName="image"><Choice value="a"/><Choice value="b"/></Choices></View>'
)
RESULT = [{"from_name": "finding", "to_name": "image", "type": "choices", "value": {"choices": ["a"]}}]


def test_pending_tasks_are_those_without_exactly_this_version(label_studio, ls):
    project = ls.projects.create(title="pending", label_config=CONFIG).id
    ls.projects.import_tasks(id=project, request=[{"data": {"image": f"/data/local-files/?d=p/{i}.png"}} for i in range(7)])
    ids = sorted(t.id for t in ls.tasks.list(project=project))
    version = "w1-gradcam@conv-v64"
    held = {  # task -> the versions of its predictions
        ids[0]: [version],
        ids[1]: [f"{version}-fp16"],  # a longer version containing this one: still pending
        ids[2]: [f"{version}-fp16", version],
        ids[3]: ["w1-gradcam@conv-v6"],  # a shorter one: pending
        ids[4]: [version, "other"],
        ids[5]: [],
        ids[6]: ["x" * 600 + version, version],  # the Data Manager shows 500 characters of "xx..x<v>,<v>"
    }
    for task, versions in held.items():
        for name in versions:
            ls.predictions.create(task=task, result=RESULT, score=0.5, model_version=name)
    ws = Workspace(label_studio.url, label_studio.token, project, "sqlite://")
    assert [t.id for t in pending_tasks(ws, project, version)] == [ids[1], ids[3], ids[5]]
    assert [t.id for t in pending_tasks(ws, project, "other")] == [i for i in ids if i != ids[4]]
    assert all(t.data["image"].startswith("/data/local-files/") for t in pending_tasks(ws, project, version))
