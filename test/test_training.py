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
    """Make four real CamVid frames (downscaled) with labels, or synthetic ones without CamVid."""
    root = tmp_path_factory.mktemp("data")
    (root / "img").mkdir()
    (root / "lab").mkdir()
    if camvid_available():
        for p in sorted((CAMVID / "train").glob("*.png"))[:4]:
            img = cv2.imread(str(p))
            lab = cv2.imread(str(CAMVID / "trainannot" / p.name), cv2.IMREAD_UNCHANGED)
            img = cv2.resize(img, (128, 96), interpolation=cv2.INTER_AREA)
            lab = cv2.resize(lab, (128, 96), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(root / "img" / p.name), img)
            cv2.imwrite(str(root / "lab" / p.name), lab)
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
                train_labels=str(data / "lab"), val_images=str(data / "img"),
                val_labels=str(data / "lab"), out_dir=str(out), epochs=2, batch_size=2,
                crop=(64, 96), scale=(0.75, 1.25), limit_val=2,
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
    resumed = Trainer(_config(tiny_dataset, tmp_path / "split", epochs=2),
                      resume=str(tmp_path / "split" / "last.pt"))
    assert resumed.epoch == 1 and resumed.iteration == first.iteration
    step = resumed.optimizer.state_dict()["state"][0]["step"]
    assert step == first.optimizer.state_dict()["state"][0]["step"]
    resumed.fit()
    assert resumed.epoch == 2
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    lines = (tmp_path / "split" / "log.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in log] == [1, 2] and all("val_miou" in r for r in log)
    assert (tmp_path / "split" / "curves.png").is_file()


def test_export_loads_in_pipeline_and_reproduces_checkpoint(tiny_dataset, tmp_path, road_image):
    trainer = Trainer(_config(tiny_dataset, tmp_path, epochs=1))
    trainer.fit()
    out = tmp_path / "w.pt"
    meta = export_checkpoint(tmp_path / "best.pt", out, half=False)
    assert meta["arch"] == "ddrnet23_slim" and meta["num_classes"] == 11 and "val_miou" in meta
    assert meta["input_size"] == [96, 128]  # the size validation ran at: the pipeline's default
    pipe = SegmentationPipeline(weights=str(out), device="cpu")
    assert pipe.trained and pipe.classes.name == "camvid"
    ckpt_model = trainer.model.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        ref = ckpt_model(x)
        got = pipe.model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, got, atol=2e-3)
    half = tmp_path / "w16.pt"
    meta16 = export_checkpoint(tmp_path / "best.pt", half, input_size=(48, 64))
    assert meta16["input_size"] == [48, 64]
    assert half.stat().st_size < 0.6 * out.stat().st_size
    labels = SegmentationPipeline(weights=str(half), device="cpu")(road_image).labels
    assert labels.shape == road_image.shape[:2]


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
    """Fine-tune: matching tensors are copied; another class count's classifier keeps its init."""
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
        Trainer(_config(tiny_dataset, tmp_path / "missing",
                        init_weights=str(tmp_path / "nope.pt")))


def _reference_ohem(logits, target, ignore, thresh, min_kept):
    """OHEM as first written: softmax, valid pixels, kthvalue always."""
    import torch.nn.functional as F
    up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    pixel = F.cross_entropy(up, target, ignore_index=ignore, reduction="none").flatten()
    valid = target.flatten() != ignore
    true = target.clamp(0, up.shape[1] - 1).unsqueeze(1)
    prob = torch.softmax(up, 1).gather(1, true).flatten()[valid]
    kept = min(min_kept, prob.numel() - 1)
    t = max(thresh, prob.kthvalue(kept + 1).values.item())
    return pixel[valid][prob < t].mean()


@pytest.mark.parametrize("min_kept", [10, 3000])
def test_ohem_matches_the_sorted_reference(min_kept):
    torch.manual_seed(1)
    logits = torch.randn(2, 11, 8, 8) * 3
    target = torch.randint(0, 11, (2, 64, 64))
    target[:, :20] = 11
    got = SegLoss(11, ohem=True, ohem_min_kept=min_kept)(logits, target)
    want = _reference_ohem(logits, target, 11, 0.7, min_kept)
    assert torch.allclose(got, want, rtol=1e-5), (got, want)
    # fewer valid pixels than min_kept: all of them count (the plain loss)
    every = SegLoss(11, ohem=True, ohem_min_kept=10**6)(logits, target)
    assert torch.allclose(every, SegLoss(11)(logits, target), rtol=1e-6)


def test_augmentation_pads_with_ignore_and_flips_image_and_label_together():
    from seg_ros.training.augment import AugmentConfig, BatchAugment
    image = torch.arange(40, dtype=torch.float32).repeat(3, 30, 1).to(torch.uint8)[None]  # 3x30x40
    label = (torch.arange(40) // 4).repeat(30, 1)[None].to(torch.uint8)  # column bands 0..9
    aug = BatchAugment(AugmentConfig(crop=(40, 60), scale=(1.0, 1.0), brightness=0, contrast=0,
                                     saturation=0), (0, 0, 0), (1, 1, 1), ignore_id=11)
    draws = torch.tensor([[0.5, 0.0, 0.0, 0.9, 0.5, 0.5, 0.5],
                          [0.5, 0.0, 0.0, 0.1, 0.5, 0.5, 0.5]],
                         dtype=torch.float64)
    x, y = aug(image.repeat(2, 1, 1, 1), label.repeat(2, 1, 1), draws)
    assert x.shape == (2, 3, 40, 60) and y.shape == (2, 40, 60) and y.dtype == torch.int64
    assert (y[0, 30:] == 11).all() and (y[0, :, 40:] == 11).all() and (x[0, :, 30:] == 0).all()
    torch.testing.assert_close(y[0, :30, :40], label[0].long())  # scale 1: the frame itself
    torch.testing.assert_close(x[0, 0, :30, :40] * 255.0, image[0, 0].float())  # std 1/255
    torch.testing.assert_close(y[1, :30, 20:], label[0].long().flip(-1))  # flipped: padding left
    assert (y[1, :, :20] == 11).all()


def test_several_folders_without_validation_export_the_final_epoch(tiny_dataset, tmp_path):
    from seg_ros.models import read_weights
    from seg_ros.training.trainer import final_checkpoint
    cfg = _config(tiny_dataset, tmp_path / "run", val_images="", val_labels="", select_best=False,
                  train_images=[str(tiny_dataset / "img")] * 2,
                  train_labels=[str(tiny_dataset / "lab")] * 2)
    trainer = Trainer(cfg)
    assert len(trainer.frames) == 8 and trainer.batches_per_epoch == 4
    trainer.fit()
    assert not (tmp_path / "run" / "best.pt").exists()
    assert final_checkpoint(tmp_path / "run", cfg) == tmp_path / "run" / "last.pt"
    meta = read_weights(tmp_path / "run" / "weights.pt").meta
    assert meta["epoch"] == 2 and meta["val_miou"] is None and meta["input_size"] == [96, 128]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and not any("val_miou" in r for r in log)


def test_run_dir_defaults_outside_the_work_tree_and_configs_inherit(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("train_images: data/img\nepochs: 7\nlr: 0.5\n")
    (tmp_path / "sub" / "child.yaml").write_text("base: ../base.yaml\nlr: 0.1\n"
                                                  "train_labels: [a, b]\n")
    cfg = TrainConfig.from_yaml(tmp_path / "sub" / "child.yaml")
    assert cfg.name == "child" and cfg.epochs == 7 and cfg.lr == 0.1
    assert cfg.train_images == str(tmp_path / "data" / "img")  # relative to the file that says it
    assert cfg.train_labels == [str(tmp_path / "sub" / "a"), str(tmp_path / "sub" / "b")]
    monkeypatch.setenv("SEG_ROS_TRAIN_DIR", str(tmp_path / "runs"))
    assert cfg.resolved_out_dir() == tmp_path / "runs" / "child"
    assert cfg.export_path() == tmp_path / "runs" / "child" / "weights.pt"
    monkeypatch.delenv("SEG_ROS_TRAIN_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cfg.resolved_out_dir() == tmp_path / "home" / ".cache" / "seg_ros" / "train" / "child"


def test_resume_mid_epoch_is_exact_and_falls_back_to_exported_weights(tiny_dataset, tmp_path):
    from seg_ros.models import read_weights
    full = Trainer(_config(tiny_dataset, tmp_path / "full", limit_train=4))
    full.fit()
    first = Trainer(_config(tiny_dataset, tmp_path / "split", limit_train=4))
    order, draws = first.epoch_plan()
    first.model.train()
    first.train_step(*first.make_batch(order[0], draws[0]))
    first.step_in_epoch = 1  # as when interrupted after the first batch of epoch 1
    first._checkpoint("interrupted.pt")
    resumed = Trainer(_config(tiny_dataset, tmp_path / "split", limit_train=4), resume="auto")
    assert (resumed.epoch, resumed.step_in_epoch, resumed.iteration) == (0, 1, 1)
    resumed.fit()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    assert not (tmp_path / "split" / "interrupted.pt").exists()
    # the checkpoints gone: continue from the exported weights at their epoch, optimiser afresh
    for name in ("last.pt", "best.pt"):
        (tmp_path / "split" / name).unlink()
    again = Trainer(_config(tiny_dataset, tmp_path / "split", limit_train=4, name="tiny"),
                    resume="auto")
    exported = read_weights(tmp_path / "split" / "weights.pt")
    assert exported.meta["train_config"]["name"] == ""  # an unnamed run: not continued
    assert again.epoch == 0 and again.optimizer.state_dict()["state"] == {}
    named = _config(tiny_dataset, tmp_path / "named", limit_train=4, name="tiny", epochs=3)
    Trainer(named).fit(stop_at_epoch=1)
    (tmp_path / "named" / "last.pt").unlink()
    cont = Trainer(named, resume="auto")
    assert (cont.epoch, cont.iteration) == (1, 2)
    weights = read_weights(tmp_path / "named" / "weights.pt").state_dict
    for key, value in cont.model.state_dict().items():
        assert torch.equal(value, weights[key].to(value.dtype)), key
    with pytest.raises(Exception, match="does not exist"):
        Trainer(named, resume=str(tmp_path / "missing.pt"))


def _camvid_layout(tiny_dataset: Path, root: Path) -> Path:
    """Copy the tiny frames into CamVid's split folders (train: all, val: the first two)."""
    import shutil
    for split, count in (("train", 4), ("val", 2)):
        for kind, sub in (("img", split), ("lab", split + "annot")):
            (root / sub).mkdir(parents=True)
            for p in sorted((tiny_dataset / kind).iterdir())[:count]:
                shutil.copy(p, root / sub / p.name)
    return root


def test_pack_keeps_labels_exact_and_images_close(tiny_dataset, tmp_path):
    from seg_ros.errors import ConfigError
    from seg_ros.training.dataset import read_pair
    from seg_ros.training.pack import pack_splits
    src = _camvid_layout(tiny_dataset, tmp_path / "src")
    summary = pack_splits(src, ["train", "val"], tmp_path / "pack", quality=95)
    assert summary["splits"] == {"train": 4, "val": 2} and summary["frames"] == 6
    manifest = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    assert manifest["bytes"] == summary["bytes"]
    for p in sorted((src / "train").iterdir()):
        image, label = read_pair(p, src / "trainannot" / p.name)
        packed, packed_label = read_pair(tmp_path / "pack" / "train" / f"{p.stem}.jpg",
                                         tmp_path / "pack" / "trainannot" / p.name)
        np.testing.assert_array_equal(packed_label, label)
        mse = np.mean((packed.astype(np.float64) - image) ** 2)
        assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 30  # PSNR in dB
    with pytest.raises(ConfigError, match="more than"):
        pack_splits(src, ["train"], tmp_path / "small", max_mb=0.001)


@pytest.mark.slow
def test_gpu_config_packs_and_trains_an_epoch_on_the_cpu_without_ros(tiny_dataset, tmp_path):
    """Train the GPU config at a tiny size on the CPU, without ROS.

    The GPU recipe's own config at a tiny size, through ``python -m seg_ros.cli.train`` with
    the ROS and inference-only packages made unimportable (the GPU machine has none).
    """
    import os
    import subprocess
    import sys
    from seg_ros.models import read_weights
    repo = Path(__file__).resolve().parent.parent
    src = _camvid_layout(tiny_dataset, tmp_path / "src")
    pack = tmp_path / "pack"
    tiny = tmp_path / "tiny_gpu.yaml"
    tiny.write_text(
        f"base: {repo / 'config/train/ddrnet23_slim_camvid_trainval_gpu.yaml'}\n"
        f"train_images: [{pack / 'train'}, {pack / 'val'}]\n"
        f"train_labels: [{pack / 'trainannot'}, {pack / 'valannot'}]\n"
        "epochs: 1\nbatch_size: 2\ncrop: [64, 96]\nwarmup_iters: 1\ntime_budget_s: 600\n")
    blocked = ["rclpy", "rosbags", "onnxruntime", "pydensecrf", "pydensecrf2", "sensor_msgs"]
    code = ("import sys\n"
            f"for m in {blocked!r}: sys.modules[m] = None\n"
            "from seg_ros.cli.train import main\n"
            f"assert main(['train-pack', '--from', {str(src)!r}, '--out', {str(pack)!r}]) == 0\n"
            f"sys.exit(main(['train', '--config', {str(tiny)!r},"
            f" '--out-dir', {str(tmp_path / 'run')!r},"
            f" '--export', {str(tmp_path / 'w.pt')!r}, '--threads', '1']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epochs fit" in done.stderr
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1] and np.isfinite(log[0]["loss"])
    pipe = SegmentationPipeline(weights=str(tmp_path / "w.pt"), device="cpu")
    assert pipe.trained and pipe.input_size == (96, 128)
    trained_with = read_weights(tmp_path / "w.pt").meta["train_config"]
    assert trained_with["channels_last"] and trained_with["amp_dtype"] == "bfloat16"
