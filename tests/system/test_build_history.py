"""`image history --json` and `image inspect` of a built image carry Docker's shape beside the
record's own keys: history rows newest first with ID (the image's on top, `<missing>` below),
CreatedAt, CreatedBy, Size, Comment; inspect's Id, RepoTags, Config, RootFS, History, Size."""
from __future__ import annotations

import json

import imagebuild as ib
from buildhelpers import build
from buildhelpers import ctx_dir as _ctx


def test_history_and_inspect_shape(img):
    ctx = _ctx(img, {"Dockerfile": "FROM busybox:test\nENV A=1\nRUN echo hi > /hi\nCMD [\"/bin/cat\", \"/hi\"]\n"},
               "hist")
    r = build(img, ctx, tag="hist:1")
    assert r.returncode == 0, r
    image_id = r.stdout.strip().splitlines()[-1]
    rows = json.loads(ib.cli(img, "image", "history", "--json", "hist:1").stdout)
    assert rows[0]["ID"] == image_id and all(x["ID"] == "<missing>" for x in rows[1:])
    assert [x["CreatedBy"] for x in rows[:3]] == ['CMD ["/bin/cat", "/hi"]', "RUN /bin/sh -c echo hi > /hi", "ENV A=1"]
    assert rows[0]["Comment"] == "pysandbox build" and rows[0]["empty_layer"] is True
    assert rows[1]["size"] > 0 and rows[1]["Size"] and rows[1]["CreatedAt"]
    rec = json.loads(ib.cli(img, "image", "inspect", "hist:1").stdout)[0]
    assert rec["Id"] == image_id and rec["RepoTags"] == ["hist:1"]
    assert rec["Config"]["Cmd"] == ["/bin/cat", "/hi"] and "A=1" in rec["Config"]["Env"]
    assert rec["RootFS"] == {"Type": "layers", "Layers": json.loads(rec["config_json"])["rootfs"]["diff_ids"]}
    assert len(rec["History"]) == len(rows) and rec["History"][-1]["created_by"] == 'CMD ["/bin/cat", "/hi"]'
    assert rec["Size"] == rec["size"] > 0 and rec["Os"] == "linux"
    text = ib.cli(img, "image", "history", "hist:1").stdout.splitlines()
    assert "CREATED BY" in text[0] and "RUN /bin/sh -c echo hi > /hi" in text[2]
