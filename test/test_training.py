"""Training tool: the loss goes down, resume continues exactly, exports load in the pipeline."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import CAMVID, camvid_available
from seg_ros.pipeline import SegmentationPipeline
from seg_ros.training.loss import SegLoss
from seg_ros.training.trainer import TrainConfig, Trainer, export_checkpoint


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """Four real CamVid frames (downscaled) with their labels, or synthetic ones without ../shared."""
    root = tmp_path_factory.mktemp("data")
    (root / "img").mkdir()
    (root / "lab").mkdir()
    if camvid_available():
        for p in sorted((CAMVID / "train").glob("*.png"))[:4]:
            img = cv2.imread(str(p))
            lab = cv2.imread(str(CAMVID / "trainannot" / p.name), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(root / "img" / p.name), cv2.resize(img, (128, 96), interpolation=cv2.INTER_AREA))
            cv2.imwrite(str(root / "lab" / p.name), cv2.resize(lab, (128, 96), interpolation=cv2.INTER_NEAREST))
    else:
        from seg_ros.sample import sample_road_image
        for i in range(4):
            img = sample_road_image(96, 128, seed=i)
            lab = np.full((96, 128), 0, np.uint8)
            lab[44:] = 3
            cv2.imwrite(str(root / "img" / f"{i}.png"), img[..., ::-1])
            cv2.imwrite(str(root / "lab" / f"{i}.png"), lab)
    return root


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="ddrnet23_slim", classes="camvid", train_images=str(data / "img"),
                train_labels=str(data / "lab"), val_images=str(data / "img"), val_labels=str(data / "lab"),
                out_dir=str(out), epochs=2, batch_size=2, crop=(64, 96), scale=(0.75, 1.25), limit_val=2,
                optimizer="adamw", lr=2e-3, weight_decay=0.0, warmup_iters=1, val_every=1,
                checkpoint_every=1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_a_few_steps_lower_the_loss(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(_config(tiny_dataset, tmp_path))
    order, draws = trainer.epoch_plan()
    images, labels = trainer.make_batch(order[0], draws[0])
    trainer.model.train()
    losses = []
    for _ in range(8):
        loss = trainer.criterion(trainer.model(images), labels)
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_resume_continues_from_saved_epoch_and_optimizer(tiny_dataset, tmp_path):
    full = Trainer(_config(tiny_dataset, tmp_path / "full", epochs=2))
    full.fit()
    first = Trainer(_config(tiny_dataset, tmp_path / "split", epochs=2))
    first.fit(stop_at_epoch=1)
    resumed = Trainer(_config(tiny_dataset, tmp_path / "split", epochs=2), resume=str(tmp_path / "split" / "last.pt"))
    assert resumed.epoch == 1 and resumed.iteration == first.iteration
    assert resumed.optimizer.state_dict()["state"][0]["step"] == first.optimizer.state_dict()["state"][0]["step"]
    resumed.fit()
    assert resumed.epoch == 2
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all("val_miou" in r for r in log)
    assert (tmp_path / "split" / "curves.png").is_file()


def test_export_loads_in_pipeline_and_reproduces_checkpoint(tiny_dataset, tmp_path, road_image):
    trainer = Trainer(_config(tiny_dataset, tmp_path, epochs=1))
    trainer.fit()
    out = tmp_path / "w.pt"
    meta = export_checkpoint(tmp_path / "best.pt", out, half=False)
    assert meta["arch"] == "ddrnet23_slim" and meta["num_classes"] == 11 and "val_miou" in meta
    assert meta["input_size"] == [96, 128]  # the size validation ran at, the pipeline's default size
    pipe = SegmentationPipeline(weights=str(out), device="cpu")
    assert pipe.trained and pipe.classes.name == "camvid"
    ckpt_model = trainer.model.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        ref = ckpt_model(x)
        got = pipe.model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, got, atol=2e-3)
    half = tmp_path / "w16.pt"
    assert export_checkpoint(tmp_path / "best.pt", half, input_size=(48, 64))["input_size"] == [48, 64]
    assert half.stat().st_size < 0.6 * out.stat().st_size
    assert SegmentationPipeline(weights=str(half), device="cpu")(road_image).labels.shape == road_image.shape[:2]


def test_ohem_and_ignore_id():
    torch.manual_seed(0)
    logits = torch.randn(2, 11, 8, 8, requires_grad=True)
    target = torch.randint(0, 11, (2, 64, 64))
    target[:, :32] = 11
    plain = SegLoss(11)(logits, target)
    ohem = SegLoss(11, ohem=True, ohem_min_kept=10)(logits, target)
    assert torch.isfinite(plain) and ohem >= plain * 0.99
    all_ignored = torch.full((2, 64, 64), 11)
    assert SegLoss(11)(logits, all_ignored).item() == 0.0
    aux = SegLoss(11, aux_weight=0.4)((logits, logits), target)
    assert torch.allclose(aux, 1.4 * plain)


def test_bad_config_is_rejected(tmp_path):
    from seg_ros.errors import ConfigError
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: ddrnet23_slim\nepochz: 3\n")
    with pytest.raises(ConfigError, match="unknown keys \\['epochz'\\]"):
        TrainConfig.from_yaml(bad)


def test_init_weights_starts_from_a_weights_file(tiny_dataset, tmp_path, weights_file):
    """Fine-tuning: matching tensors are copied; a classifier for another class count keeps its init."""
    from seg_ros.models import read_weights
    source = read_weights(weights_file).state_dict
    same = Trainer(_config(tiny_dataset, tmp_path / "same", init_weights=str(weights_file)))
    for key, value in same.model.state_dict().items():
        assert torch.equal(value, source[key].to(value.dtype)), key
    other = Trainer(_config(tiny_dataset, tmp_path / "other", classes="cityscapes",
                            init_weights=str(weights_file)))
    state = other.model.state_dict()
    assert torch.equal(state["conv1.0.weight"], source["conv1.0.weight"])
    assert state["final_layer.conv2.weight"].shape[0] == 19  # new head, not copied
    with pytest.raises(Exception, match="does not exist"):
        Trainer(_config(tiny_dataset, tmp_path / "missing", init_weights=str(tmp_path / "nope.pt")))
