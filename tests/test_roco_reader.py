import shutil

import pytest

from mosmos_components.data.roco import load_roco
from mosmos_components.data.synthetic import write_roco
from mosmos_components.tags import DEFAULT_TAGS, extract_tags


def test_demo_roco_layout_and_determinism(tmp_path):
    a = write_roco(tmp_path / "a", n=12, seed=3)
    b = write_roco(tmp_path / "b", n=12, seed=3)
    for split in ("train", "validation", "test"):
        folder = a / split / "radiology"
        assert (folder / "captions.txt").is_file() and (folder / "keywords.txt").is_file()
        assert (folder / "captions.txt").read_text() == (b / split / "radiology" / "captions.txt").read_text()
    line = (a / "train" / "radiology" / "captions.txt").read_text().splitlines()[0]
    roco_id, caption = line.split("\t")
    assert roco_id == "ROCO_00001" and caption.startswith(" ")  # the real format's leading space
    assert (a / "train" / "radiology" / "images" / "ROCO_00001.jpg").read_bytes() == (
        b / "train" / "radiology" / "images" / "ROCO_00001.jpg"
    ).read_bytes()


def test_reader_items_and_tags(roco_dir):
    items = load_roco(roco_dir, "train")
    assert len(items) == 48
    for it in items[:10]:
        assert it["report"] == it["report"].strip() and len(it["tags"]) == 20
        assert [t for t, v in zip(DEFAULT_TAGS, it["tags"]) if v] == extract_tags(it["report"])
    assert sum(sum(it["tags"]) > 0 for it in items) == len(items)  # each caption names at least one organ
    assert len(load_roco(roco_dir.parent, "validation", max_items=3)) == 3  # the folder above `data` works too


def test_missing_and_unreadable_images_are_counted_not_fatal(tmp_path, caplog):
    root = write_roco(tmp_path, n=8, seed=0)
    images = root / "train" / "radiology" / "images"
    (images / "ROCO_00001.jpg").unlink()  # missing
    (images / "ROCO_00002.jpg").write_bytes(b"\x00garbage")  # unreadable
    # an old download: the file is named <PMCID>_<name>, found through dlinks.txt
    shutil.move(images / "ROCO_00003.jpg", images / "PMC1000003_roco_00003.jpg")
    with caplog.at_level("INFO"):
        items = load_roco(root, "train")
    ids = [it["id"] for it in items]
    assert "ROCO_00001" not in ids and "ROCO_00002" not in ids and "ROCO_00003" in ids
    assert len(items) == 6
    assert "1 missing image" in caplog.text and "1 unreadable image" in caplog.text


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_roco(tmp_path / "no_such_dir")
    root = write_roco(tmp_path / "r", n=4, seed=0)
    with pytest.raises(ValueError, match="unknown ROCO split"):
        load_roco(root, "dev")
    captions = root / "train" / "radiology" / "captions.txt"
    captions.write_text("")
    with pytest.raises(ValueError, match="captions.txt gave no usable"):
        load_roco(root, "train")
    captions.write_text("ROCO_00001\t   \nROCO_00002\t \n")
    with pytest.raises(ValueError, match="2 empty caption"):
        load_roco(root, "train")
    captions.unlink()
    with pytest.raises(FileNotFoundError, match="captions.txt"):
        load_roco(root, "train")
