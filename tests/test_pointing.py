"""vklib.pointing: the pointing game with TorchRay's protocol (masks, tolerance in the original frame, class
averages) and the detection sets it is played on (VOC07, COCO instances, the shipped COCO photos)."""
import pytest
import torch
import torch.nn.functional as F

from vklib import data, pointing

def test_pointing_hits_with_tolerance_in_the_original_frame():
    sal = torch.zeros(3, 20, 20)
    sal[0, 2, 3] = 1.0   # (x 3, y 2): inside the box
    sal[1, 9, 9] = 1.0   # (x 9, y 9): 3 px right of and 3 px below the box corner (6, 6), 4.24 px away
    sal[2, 0, 19] = 1.0  # (x 19, y 0): far from the object of the third image
    box = torch.zeros(20, 20, dtype=torch.bool)
    box[1:7, 1:7] = True
    far = torch.zeros(20, 20, dtype=torch.bool)
    far[9, 0:2] = True
    masks = [box, box, box | far]
    assert pointing.pointing_hits(sal, masks, tolerance=0).tolist() == [True, False, False]
    assert pointing.pointing_hits(sal, masks, tolerance=4.0).tolist() == [True, False, False]
    assert pointing.pointing_hits(sal, masks, tolerance=4.5).tolist() == [True, True, False]
    corner = torch.zeros(20, 20, dtype=torch.bool)
    corner[0, 19] = True
    assert pointing.pointing_hits(sal, [box, box, corner], tolerance=0).tolist() == [True, False, True]
    # several methods at once: (N, M, h, w) -> (N, M)
    both = pointing.pointing_hits(torch.stack([sal, sal.flip(0)], 1), masks, tolerance=4.5)
    assert both[:, 0].tolist() == [True, True, False] and both.shape == (3, 2)
    with pytest.raises(ValueError, match="one mask per trial"):
        pointing.pointing_hits(sal, masks[:2])
    with pytest.raises(ValueError, match="bool tensor"):
        pointing.pointing_hits(sal, [box, box, torch.zeros(4)])


def test_pointing_hits_upsamples_the_map_to_the_original_image():
    """A 4x4 map explaining a 40x80 (H0 x W0) photo: the peak cell (row 1, col 3) lands near (y 15, x 70) once
    upsampled, and the 15-px tolerance is measured there, not on the map's grid."""
    sal = torch.zeros(1, 4, 4)
    sal[0, 1, 3] = 1.0
    mask = torch.zeros(40, 80, dtype=torch.bool)
    mask[:, :50] = True                        # the object ends 20 px left of the peak (x 70 -> x 49)
    assert pointing.pointing_hits(sal, [mask], tolerance=15).tolist() == [False]
    assert pointing.pointing_hits(sal, [mask], tolerance=25).tolist() == [True]
    up = F.interpolate(sal[None], size=(40, 80), mode="bilinear", align_corners=False)[0, 0]
    py, px = divmod(int(up.flatten().argmax()), 80)
    assert 10 <= py <= 19 and 60 <= px <= 79


def test_segmentation_and_class_masks():
    poly = pointing.segmentation_mask([[2, 2, 8, 2, 8, 6, 2, 6]], 10, 12)   # a polygon of area 6 x 4 (COCO's rule)
    assert poly.shape == (10, 12) and poly.sum() == 24 and poly[2:6, 2:8].all()
    rle = pointing.segmentation_mask({"counts": [3, 2, 13, 2], "size": [5, 4]}, 5, 4)   # column-major runs
    expected = torch.zeros(5, 4, dtype=torch.bool)
    expected[3:5, 0] = True
    expected[3:5, 3] = True
    assert torch.equal(rle, expected)
    with pytest.raises(ValueError, match=r"segmentation: an RLE of size \[5, 4\] expected"):
        pointing.segmentation_mask({"counts": [3, 2, 13, 2], "size": [4, 5]}, 5, 4)
    meta = {"orig_size": [(6, 8)], "box_labels": [torch.tensor([0, 1, 0])],
            "boxes": [torch.tensor([[0.0, 0.0, 1.0, 1.0], [3.0, 3.0, 4.0, 4.0], [6.0, 4.0, 7.0, 5.0]])]}
    m = pointing.class_mask(meta, 0, 0)   # the union of the class's two boxes, inclusive
    assert m.shape == (6, 8) and m.sum() == 8 and m[0:2, 0:2].all() and m[4:6, 6:8].all()


def test_pointing_pairs_class_average_and_centre():
    ds = data.ImageSet("toy", "test", torch.zeros(2, 3, 8, 8), None, ["a", "b"],
                       {"box_labels": [torch.tensor([0, 1, 0]), torch.tensor([1])], "orig_size": [(8, 8)] * 2,
                        "difficult": [torch.tensor([True, False, True]), torch.tensor([True])]})
    # image 0: class a's boxes are all difficult (skipped), class b's is not; image 1: its only box is difficult
    assert pointing.pointing_pairs(ds) == [(0, 1)]
    ds.meta.pop("difficult")
    assert pointing.pointing_pairs(ds) == [(0, 0), (0, 1), (1, 1)]
    assert pointing.pointing_pairs(ds, limit=1) == [(0, 0), (0, 1)]
    ds.meta["box_labels"] = [torch.tensor([], dtype=torch.long)] * 2
    with pytest.raises(ValueError, match="no \\(image, class\\) pairs"):
        pointing.pointing_pairs(ds)
    with pytest.raises(ValueError, match="orig_size"):
        pointing.pointing_pairs(data.ImageSet("t", "s", torch.zeros(1, 3, 8, 8)))
    # class a: 1 of 1 trials hit; class b: 0 of 2 -> the class average is 0.5, the pooled rate 1/3
    assert pointing.class_averaged(torch.tensor([True, False, False]), torch.tensor([0, 1, 1])) == 0.5
    centre = pointing.centre_saliency(torch.zeros(2, 3, 9, 7))
    assert centre.shape == (2, 9, 7) and divmod(int(centre[0].flatten().argmax()), 7) == (4, 3)


def test_coco_mini_instances_reads_the_shipped_photos_with_masks():
    val = pointing.coco_mini_instances("val", size=32)
    assert len(val) == 79 and val.images.shape == (79, 3, 32, 32) and len(val.classes) == 80
    h, w = val.meta["orig_size"][0]
    pairs = pointing.pointing_pairs(val)
    i, c = pairs[0]
    mask = pointing.class_mask(val.meta, i, c)
    assert mask.shape == val.meta["orig_size"][i] and 0 < int(mask.sum()) < mask.numel()
    with pytest.raises(ValueError, match="split must be one of train, val"):
        pointing.coco_mini_instances("test", size=32)


# ----------------------------------------------------------------------------------------------- models, training


def test_voc07_reader_on_the_official_layout(saliency_mini):
    root, m = saliency_mini
    trainval = data.load("voc07", "trainval", full=True, data_dir=root)
    test = data.load("voc07", "test", full=True, data_dir=root, size=100)
    assert trainval.meta["files"] == list(m.VOC_TRAINVAL) and test.meta["files"] == list(m.VOC_TEST)
    assert not set(trainval.meta["files"]) & set(test.meta["files"]), "trainval and test share images"
    assert trainval.classes == list(m.VOC_CLASSES) == pointing.VOC_CLASSES
    # 000001 (353 x 500): a dog and a person; the person's head and hand <part>s are not objects
    dog, person = pointing.VOC_CLASSES.index("dog"), pointing.VOC_CLASSES.index("person")
    assert test.images[0].shape == (3, 100, 100) and test.meta["box_labels"][0].tolist() == [dog, person]
    x0, y0, x1, y1 = m.VOC_TEST["000001"][2][0][1]   # 1-based inclusive pixels -> 0-based, in the original frame
    assert torch.allclose(test.meta["boxes"][0][0], torch.tensor([x0 - 1, y0 - 1, x1 - 1, y1 - 1], dtype=torch.float))
    assert test.meta["orig_size"][0] == (500, 353)
    assert trainval.images[0].shape == (3, 375, 500)
    assert torch.equal(trainval.meta["boxes"][0][0], torch.tensor([262.0, 210.0, 323.0, 338.0]))  # unscaled
    for ds, table in ((trainval, m.VOC_TRAINVAL), (test, m.VOC_TEST)):
        for i, (w, h, objects) in enumerate(table.values()):
            assert ds.meta["box_labels"][i].tolist() == [pointing.VOC_CLASSES.index(o[0]) for o in objects]
            assert ds.meta["difficult"][i].tolist() == [bool(o[2]) for o in objects]
            present = ds.meta["box_labels"][i].unique().tolist()
            assert ds.meta["targets"][i].nonzero().flatten().tolist() == present
    with pytest.raises(data.DataNotFoundError, match="voc07.*VOCdevkit"):
        data.load("voc07", "test", full=True, data_dir=root / "nowhere")


def test_coco_instances_reader_on_the_official_layout(saliency_mini):
    root, m = saliency_mini
    val = data.load("coco_instances", "val", full=True, data_dir=root)
    assert val.classes == [name for _, name, _ in m.COCO_CATEGORIES] and len(val.classes) == 80
    annotated = [i for i, (_, _, objects) in m.COCO_IMAGES["val"].items() if objects]
    assert val.meta["image_id"] == sorted(annotated) and len(val) < len(m.COCO_IMAGES["val"])  # 139 has none
    index = {cat: k for k, (cat, _, _) in enumerate(m.COCO_CATEGORIES)}   # ids 1..90 with gaps -> 0..79
    assert index[90] == 79 and val.classes[index[88]] == "teddy bear"
    for k, image_id in enumerate(val.meta["image_id"]):
        w, h, objects = m.COCO_IMAGES["val"][image_id]
        assert val.images[k].shape == (3, h, w)   # greyscale JPEGs (136) come out as RGB
        assert val.meta["box_labels"][k].tolist() == [index[cat] for cat, _, _ in objects]  # crowds included
        boxes = torch.tensor([[x, y, x + bw - 1, y + bh - 1] for _, (x, y, bw, bh), _ in objects])
        assert torch.allclose(val.meta["boxes"][k], boxes)
    train = data.load("coco_instances", "train", full=True, data_dir=root, size=32)
    assert len(train) == 8 and train.images[0].shape == (3, 32, 32) and train.meta["targets"].shape == (8, 80)
    w, h, objects = m.COCO_IMAGES["train"][train.meta["image_id"][0]]
    x, y, bw, bh = objects[0][1]   # boxes and masks stay in the original frame
    assert torch.allclose(train.meta["boxes"][0][0], torch.tensor([x, y, x + bw - 1, y + bh - 1]))
    assert train.meta["orig_size"][0] == (h, w)
    for k in range(len(val)):
        for c in val.meta["box_labels"][k].unique().tolist():
            mask = pointing.class_mask(val.meta, k, c)   # polygons (octagons) and crowd RLEs
            assert mask.any() and mask.shape == val.meta["orig_size"][k]
    with pytest.raises(data.DataNotFoundError, match="coco_instances.*instances_"):
        data.load("coco_instances", "val", full=True, data_dir=root / "nowhere")
