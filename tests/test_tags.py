import json
import subprocess
import sys

import pytest
import torch

from mosmos_components import DEFAULT_TAGS, TagExtractor, TagVocabulary, extract_tags, tags_to_multi_hot


def test_vocabulary_has_the_20_tags_in_order():
    assert len(DEFAULT_TAGS) == 20
    assert DEFAULT_TAGS[0] == "spleen" and DEFAULT_TAGS[9] == "portal vein and splenic vein"
    assert DEFAULT_TAGS[-1] == "pulmonary artery"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No splenomegaly.", ["spleen"]),  # negated finding still tags the organ
        ("splenic vein thrombosis", ["portal vein and splenic vein"]),  # longest phrase first: not spleen
        ("Left renal cyst", ["left kidney"]),
        ("L kidney lesion", ["left kidney"]),
        ("rt adrenal mass", ["right adrenal gland"]),
        ("both adrenals are normal", ["right adrenal gland", "left adrenal gland"]),
        ("the kidneys are small", ["right kidney", "left kidney"]),
        ("renal cyst", ["right kidney", "left kidney"]),  # unsided singular: both (default)
        ("gall bladder stones and oesophageal thickening", ["gallbladder", "esophagus"]),
        ("Thrombus in the IVC and postcava", ["inferior vena cava"]),
        ("hepatosplenomegaly", ["spleen", "liver"]),
        ("LV hypertrophy", ["left ventricle"]),
        ("lv hypertrophy", []),  # abbreviations only in upper case
        ("a dilated ascending aorta", ["ascending aorta"]),
        ("an abdominal aortic aneurysm", ["aorta"]),
        ("lateral ventricles are dilated", []),  # brain ventricles are not heart chambers
        ("Enlarged RA and right atrial appendage thrombus", ["right atrium"]),
        ("biventricular dysfunction", ["left ventricle", "right ventricle"]),
        ("the liverwort sample", []),  # whole words only
        ("Liver, LIVER and hepatic lesions", ["liver"]),  # aggregated, case-insensitive
        ("", []),
        ("   \n", []),
    ],
)
def test_extract_tags_rules(text, expected):
    assert extract_tags(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [  # false positives found on real MedPix captions and report phrases
        ("Large mass displacing the 4th ventricle.", []),  # a brain ventricle, by number
        ("The third ventricle and lateral ventricular system are dilated.", []),
        ("History of RA.", []),  # rheumatoid arthritis: RA only in a cardiac context
        ("PV thrombosis of the right superior pulmonary vein.", []),  # PV beside 'pulmonary': ambiguous, left out
        ("Axial portal venous phase images of the abdomen.", []),  # an imaging phase, not anatomy
        ("Renal cell carcinoma in the left kidney.", ["left kidney"]),  # the sided mention wins in its sentence
        # and what they must not break
        ("PV thrombosis in a cirrhotic liver.", ["liver", "portal vein and splenic vein"]),
        ("RA enlargement on the echocardiogram.", ["right atrium"]),
        ("Thrombus in the portal vein.", ["portal vein and splenic vein"]),
        ("Renal cysts. The left kidney is small.", ["right kidney", "left kidney"]),  # other sentence: both
        ("Dilated left ventricle.", ["left ventricle"]),
    ],
)
def test_real_caption_false_positives(text, expected):
    assert extract_tags(text) == expected


def test_vocabulary_order_and_no_duplicates():
    tags = extract_tags("Pulmonary artery enlargement, a liver lesion, splenomegaly and another splenic lesion.")
    assert tags == ["spleen", "liver", "pulmonary artery"]


def test_side_word_does_not_cross_phrases():
    assert extract_tags("The right lobe is normal. Kidney cyst.") == ["right kidney", "left kidney"]
    assert TagExtractor(unsided="none")("The right lobe is normal. Kidney cyst.") == []


def test_input_contract():
    assert extract_tags(b"GB wall") == ["gallbladder"]
    with pytest.raises(ValueError, match="UTF-8"):
        extract_tags(b"\xff\xfe liver")
    with pytest.raises(TypeError, match="str"):
        extract_tags(None)
    with pytest.raises(TypeError):
        extract_tags(42)


def test_user_vocabulary_extends_tags(tmp_path):
    f = tmp_path / "extra.json"
    f.write_text(json.dumps({"tags": ["duodenum"], "terms": {"duodenum": ["duodenum", "duodenal"]}}))
    ex = TagExtractor(TagVocabulary([f]))
    assert ex("duodenal ulcer and splenomegaly") == ["spleen", "duodenum"]
    assert ex.tags[-1] == "duodenum" and len(ex.tags) == 21
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"terms": {"nonexistent organ": ["x"]}}))
    with pytest.raises(ValueError, match="nonexistent organ"):
        TagVocabulary([bad])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        TagVocabulary([tmp_path / "missing.json"])


def test_multi_hot():
    y = tags_to_multi_hot(["liver", "spleen"])
    assert y.shape == (20,) and y.sum() == 2 and y[0] == 1 and y[5] == 1
    with pytest.raises(ValueError, match="duodenum"):
        tags_to_multi_hot(["duodenum"])
    assert torch.equal(tags_to_multi_hot([]), torch.zeros(20))


def test_cli_tags():
    out = subprocess.run(
        [sys.executable, "-m", "mosmos_components.cli", "tags", "Left renal cyst and hepatomegaly"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == ["left kidney", "liver"]


def test_extraction_work_is_linear_in_text_length(monkeypatch):
    """No timing: count the characters the side look-up scans. It used to re-split the whole text before every
    match (quadratic: ~170 s for 1 MB); now it looks back a bounded window."""
    import mosmos_components.tags as tags_module

    scanned = []
    real = tags_module._PHRASE_BREAK

    class Counting:
        def split(self, text):
            scanned.append(len(text))
            return real.split(text)

    monkeypatch.setattr(tags_module, "_PHRASE_BREAK", Counting())
    unit = "The kidney has a renal cyst; the liver is normal. "
    for repeats in (100, 1000):
        scanned.clear()
        TagExtractor()(unit * repeats)
        assert sum(scanned) <= 300 * len(scanned)  # each look-up scans a bounded window, whatever the text length
    assert len(scanned) == 2000  # two sided-organ mentions per sentence, 1000 sentences


@pytest.mark.parametrize(
    "text, tags",
    [
        ("Acquired in the arterial and portal venous phases.", []),  # plural imaging phases: not the portal vein
        ("Nephrographic phases were obtained; the portal vein is patent.", ["portal vein and splenic vein"]),
        ("Cyst in the left kidney; renal function is normal.", ["left kidney"]),  # clauses of one sentence
        ("Cyst in the left kidney: renal function is normal.", ["left kidney"]),
        ("Cyst in the left kidney. Renal function is normal.", ["right kidney", "left kidney"]),  # two sentences
    ],
)
def test_plurals_of_ignored_phrases_and_clauses_of_one_sentence(text, tags):
    assert extract_tags(text) == tags
